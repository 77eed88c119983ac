"""ofa_fast.nn's dynamic ops against OFA's own (the `ofa` package): same state_dict,
same outputs, every gradient and the running statistics, random active settings, train
and eval mode, batch 1 included; state_dicts load both ways; bad input."""
import random

import pytest
import torch

import ofa_fast
from ofa_fast import nn as fnn

from _helpers import assert_same_run, module_run

O = pytest.importorskip(
    "ofa.imagenet_classification.elastic_nn.modules.dynamic_op",
    reason="the `ofa` package (pip install ofa torchvision pillow) is the parity oracle")

TOL = dict(rtol=1e-10, atol=1e-10)  # float64


def twins(name, *args, **kwargs):
    torch.manual_seed(0)
    theirs = getattr(O, name)(*args, **kwargs).double()
    with torch.no_grad():  # non-trivial affine parameters and statistics
        for n, p in theirs.named_parameters():
            if n.endswith("weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif n.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    ours = getattr(fnn, name)(*args, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    return theirs, ours


def compare(theirs, ours, x, call=lambda m, x: m(x), modes=(True, False), backends=("cpu", "reference")):
    for train in modes:
        for backend in backends:
            ref = module_run(theirs.train(train), x, call)
            with ofa_fast.use_backend(backend):
                got = module_run(ours.train(train), x, call)
            assert_same_run(got, ref, **TOL)


SIZES = [(1, 5, 5), (2, 8, 7), (3, 1, 1)]


@pytest.mark.parametrize("kernel_size,stride,dilation", [(1, 1, 1), (1, 2, 1), (3, 1, 1), (3, 2, 1),
                                                         (5, 1, 2)])
@pytest.mark.parametrize("cl", [False, True])
def test_dynamic_conv2d(kernel_size, stride, dilation, cl):
    theirs, ours = twins("DynamicConv2d", 24, 40, kernel_size, stride, dilation)
    rng = random.Random(kernel_size * 10 + stride)
    for N, H, W in SIZES:
        if kernel_size > 1 and dilation * (kernel_size - 1) + 1 - 2 * (kernel_size // 2) > min(H, W):
            continue
        cin, cout = rng.randint(1, 24), rng.randint(1, 40)
        x = torch.randn(N, cin, H, W, dtype=torch.float64)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        compare(theirs, ours, x, lambda m, x: m(x, cout), modes=(True,))
        theirs.active_out_channel = ours.active_out_channel = cout
        compare(theirs, ours, x, modes=(True,))


@pytest.mark.parametrize("cl", [False, True])
def test_dynamic_batch_norm2d(cl):
    theirs, ours = twins("DynamicBatchNorm2d", 32)
    for channels in (32, 20, 7):
        for N, H, W in SIZES:
            if N * H * W == 1:
                continue  # batch statistics of one value
            x = torch.randn(N, channels, H, W, dtype=torch.float64) * 2 + 1
            if cl:
                x = x.to(memory_format=torch.channels_last)
            compare(theirs, ours, x, backends=("cpu",))
    assert ours.bn.num_batches_tracked == theirs.bn.num_batches_tracked


def test_dynamic_batch_norm2d_running_statistics_in_place():
    _, ours = twins("DynamicBatchNorm2d", 16)
    mean = ours.bn.running_mean
    ours.train()(torch.randn(4, 10, 3, 3, dtype=torch.float64) + 3)
    assert ours.bn.running_mean is mean  # the same buffer, updated in its active slice
    assert (mean[:10] != 0).all() and (mean[10:] == 0).all()


def test_set_running_statistics_uses_full_bn(monkeypatch):
    theirs, ours = twins("DynamicBatchNorm2d", 8)
    monkeypatch.setattr(O.DynamicBatchNorm2d, "SET_RUNNING_STATISTICS", True)
    monkeypatch.setattr(fnn.DynamicBatchNorm2d, "SET_RUNNING_STATISTICS", True)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    compare(theirs, ours, x, backends=("cpu",))


@pytest.mark.parametrize("channel_per_group", [2, 4])
def test_dynamic_group_norm(channel_per_group):
    theirs, ours = twins("DynamicGroupNorm", 8, 32, channel_per_group=channel_per_group)
    for channels in (32, 16, 8):
        x = torch.randn(2, channels, 5, 4, dtype=torch.float64)
        compare(theirs, ours, x, backends=("cpu",))
    assert ours.bn is ours


@pytest.mark.parametrize("groups", [None, 2])
def test_dynamic_se(groups):
    theirs, ours = twins("DynamicSE", 48)
    for channels in (48, 40, 16):
        for N, H, W in SIZES:
            x = torch.randn(N, channels, H, W, dtype=torch.float64)
            compare(theirs, ours, x, lambda m, x: m(x, groups), modes=(True,))


@pytest.mark.parametrize("bias", [True, False])
def test_dynamic_linear(bias):
    theirs, ours = twins("DynamicLinear", 64, 50, bias)
    for N, fin, fout in ((1, 64, 50), (3, 17, 9), (5, 64, 1)):
        x = torch.randn(N, fin, dtype=torch.float64)
        compare(theirs, ours, x, lambda m, x: m(x, fout), modes=(True,))
        theirs.active_out_features = ours.active_out_features = fout
        compare(theirs, ours, x, modes=(True,))


@pytest.mark.parametrize("ks,groups", [(3, 2), (5, 2), (3, 4), (5, 4)])
def test_dynamic_group_conv2d(ks, groups):
    theirs, ours = twins("DynamicGroupConv2d", 16, 32, [3, 5], [2, 4], 1, 1)
    x = torch.randn(2, 16, 7, 6, dtype=torch.float64)
    compare(theirs, ours, x, lambda m, x: m(x, ks, groups), modes=(True,), backends=("cpu",))
    torch.testing.assert_close(ours.get_active_filter(ks, groups), theirs.get_active_filter(ks, groups))


def test_state_dicts_load_both_ways():
    for name, args in (("DynamicConv2d", (8, 12)), ("DynamicBatchNorm2d", (12,)), ("DynamicSE", (16,)),
                       ("DynamicLinear", (8, 4)), ("DynamicGroupNorm", (4, 16, 1e-5, True, 4)),
                       ("DynamicGroupConv2d", (8, 8, [3], [2, 4]))):
        theirs, ours = twins(name, *args)
        back = getattr(O, name)(*args).double()
        back.load_state_dict(ours.state_dict())
        for (n, a), (_, b) in zip(back.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), f"{name}.{n}"


def test_bad_input():
    conv = fnn.DynamicConv2d(8, 12)
    with pytest.raises(ValueError, match=r"input has 9 channels, more than the max 8"):
        conv(torch.randn(1, 9, 4, 4))
    with pytest.raises(ValueError, match=r"out_channel = 13 is not allowed; it must be an int between 1 and 12"):
        conv(torch.randn(1, 8, 4, 4), 13)
    with pytest.raises(ValueError, match=r"max_in_channels = 0"):
        fnn.DynamicConv2d(0, 4)
    lin = fnn.DynamicLinear(8, 4)
    with pytest.raises(ValueError, match=r"out_features = 5 is not allowed"):
        lin(torch.randn(2, 8), 5)
    with pytest.raises(ValueError, match=r"input has 9 features; it must have between 1 and 8"):
        lin(torch.randn(2, 9))
    with pytest.raises(ValueError, match=r"input has 20 channels, more than the max 16"):
        fnn.DynamicSE(16)(torch.randn(1, 20, 2, 2))
    with pytest.raises(ValueError, match=r"input has 20 channels, more than the max 16"):
        fnn.DynamicBatchNorm2d(16)(torch.randn(2, 20, 2, 2))
    with pytest.raises(ValueError, match=r"not a multiple of channel_per_group = 4"):
        fnn.DynamicGroupNorm(4, 16, channel_per_group=4)(torch.randn(2, 6, 2, 2))
    gconv = fnn.DynamicGroupConv2d(8, 8, [3, 5], [2, 4])
    with pytest.raises(ValueError, match=r"groups 3 is not in groups_list \[2, 4\]"):
        gconv(torch.randn(1, 8, 5, 5), 3, 3)
    with pytest.raises(ValueError, match=r"groups 3 of groups_list"):
        fnn.DynamicGroupConv2d(8, 8, [3], [2, 3])
    # a state_dict with a mis-shaped or missing tensor names the key
    with pytest.raises(RuntimeError, match=r"size mismatch for linear.weight"):
        lin.load_state_dict(fnn.DynamicLinear(8, 6).state_dict())
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "linear.bias"'):
        lin.load_state_dict({"linear.weight": torch.zeros(4, 8)})

"""Batch norm + activation in one op (ofa_fast.ops.batch_norm_act) against F.batch_norm
then the activation module OFA uses: output, every gradient and the running statistics,
train and eval, both memory formats, active channels below the max, momentum and the
cumulative average; gradcheck, opcheck, bad input."""
import pytest
import torch
import torch.nn.functional as F

import ofa_fast
from ofa_fast.ops import batch_norm_act

from _helpers import assert_close, fmt_of

pytestmark = pytest.mark.skipif(not ofa_fast._ext.has_cpu_kernels(),
                                reason="the compiled extension is not loaded")

ACTS = {"none": lambda t: t, "relu": torch.nn.ReLU(), "relu6": torch.nn.ReLU6(),
        "h_swish": lambda t: t * F.relu6(t + 3.0) / 6.0}  # OFA's Hswish formula


def make_bn(C_max, momentum=0.1, affine=True, dtype=torch.float64):
    bn = torch.nn.BatchNorm2d(C_max, momentum=momentum, affine=affine).to(dtype)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


def reference(x, bn, act):
    """OFA's DynamicBatchNorm2d.bn_forward then the activation."""
    C = x.shape[1]
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked += 1
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    y = F.batch_norm(x, bn.running_mean[:C], bn.running_var[:C],
                     None if bn.weight is None else bn.weight[:C],
                     None if bn.bias is None else bn.bias[:C],
                     bn.training or not bn.track_running_stats, factor, bn.eps)
    return ACTS[act](y)


def run(fn, x, bn, g):
    bn.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(g)
    return y, x.grad, {n: p.grad for n, p in bn.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape,C_max", [((3, 10, 9, 8), 16), ((5, 16, 8, 8), 16), ((1, 7, 9, 8), 7),
                                         # planes under 64 pixels (NCHW: walked as rows)
                                         ((6, 12, 3, 3), 20), ((4, 9, 7, 7), 9), ((9, 5, 1, 2), 8),
                                         ((1, 6, 5, 5), 6),
                                         # NCHW backward: planes of 256+ pixels, both passes
                                         # per channel; channels of over 2**16 values (and
                                         # smaller planes): two passes over the whole tensor
                                         ((3, 6, 17, 16), 8), ((2, 3, 190, 180), 4)])
def test_matches_batch_norm_then_activation(act, dtype, cl, train, shape, C_max):
    x = torch.randn(shape, dtype=dtype) * 2 + 0.5
    if cl:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(shape, dtype=dtype)
    ours, theirs = make_bn(C_max, dtype=dtype), make_bn(C_max, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    ours.train(train)
    theirs.train(train)
    y, gx, gp = run(lambda t: batch_norm_act(t, ours, act), x, ours, g)
    y_ref, gx_ref, gp_ref = run(lambda t: reference(t, theirs, act), x, theirs, g)
    assert fmt_of(y) == fmt_of(x) or min(shape[2:]) == 1
    assert_close(y, y_ref, dtype, "output")
    assert_close(gx, gx_ref, dtype, "grad input")
    assert gp.keys() == gp_ref.keys()
    for n in gp:
        assert_close(gp[n], gp_ref[n], dtype, f"grad {n}")
    for (n, a), (_, b) in zip(ours.named_buffers(), theirs.named_buffers()):
        assert_close(a.double(), b.double(), dtype, n)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_statistics_centred_when_the_mean_is_far_from_zero(cl):
    # float32, mean 100, variance 1: E[x^2] - E[x]^2 would lose the variance to rounding
    # (1e4 + 1 in float32); the batch statistics are centred sums (channels_last: in
    # chunks merged as Chan et al., here several chunks per thread's part)
    x = torch.randn(8, 24, 40, 40) + 100
    if cl:
        x = x.to(memory_format=torch.channels_last)
    bn = torch.nn.BatchNorm2d(24, affine=False, track_running_stats=False)
    y = batch_norm_act(x, bn, "none")
    y_ref = F.batch_norm(x.double(), None, None, training=True, eps=bn.eps)
    assert_close(y, y_ref, torch.float32, "output")


@pytest.mark.parametrize("size", [8, 16], ids=["two-pass", "per-channel"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_updated_in_place(momentum, size):
    ours, theirs = make_bn(12, momentum), make_bn(12, momentum)
    theirs.load_state_dict(ours.state_dict())
    mean = ours.running_mean
    for step in range(3):
        x = torch.randn(4, 8, size, size, dtype=torch.float64) + step
        batch_norm_act(x, ours, "relu")
        reference(x, theirs, "relu")
    assert ours.running_mean is mean
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-12, atol=1e-12)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3


def test_no_affine_and_no_running_stats():
    bn = torch.nn.BatchNorm2d(6, affine=False, track_running_stats=False).double()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(batch_norm_act(x, bn.eval(), "h_swish"),
                               ACTS["h_swish"](F.batch_norm(x, None, None, training=True)))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cl", [False, True])
def test_gradcheck_and_opcheck(train, cl):
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5
    for act in ("relu6", "h_swish"):
        def f(x, w, b):
            return torch.ops.ofa_fast.batch_norm_act(x, w, b, rm, rv, train, 1e-5, act)[0]
        assert torch.autograd.gradcheck(f, (x, w, b))
    torch.library.opcheck(torch.ops.ofa_fast.batch_norm_act.default,
                          (x.float().detach().requires_grad_(), w.float().detach().requires_grad_(),
                           b.float().detach().requires_grad_(), rm.float(), rv.float(), train, 1e-5,
                           "h_swish"))


@pytest.mark.parametrize("shape", [(3, 5, 17, 16), (3, 5, 9, 8), (2, 3, 190, 180)],
                         ids=["per-channel", "two-pass-small-planes", "two-pass-big-channels"])
@pytest.mark.parametrize("train", [True, False])
def test_backward_output_mask(shape, train):
    # each gradient comes out the same whichever others are asked for
    x, g = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    w, b = torch.rand(5, dtype=torch.float64)[:shape[1]] + 0.5, torch.randn(shape[1], dtype=torch.float64)
    mean, invstd = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False).add(1e-5).rsqrt()
    args = (g, x, w, b, mean, invstd, train, "h_swish")
    full = torch.ops.ofa_fast.batch_norm_act_backward(*args, [True, True, True])
    for mask in ([True, False, False], [False, True, True], [False, False, True]):
        part = torch.ops.ofa_fast.batch_norm_act_backward(*args, mask)
        for want, a, e in zip(mask, part, full):
            if want:
                torch.testing.assert_close(a, e, rtol=0, atol=0)
            else:
                assert a.numel() == 0


def test_not_applicable_returns_none():
    bn = make_bn(4, dtype=torch.float32)
    assert batch_norm_act(torch.randn(2, 4, 3, 3, dtype=torch.bfloat16), bn, "relu") is None
    assert batch_norm_act(torch.randn(1, 4, 1, 1), bn.train(), "relu") is None  # one value
    with ofa_fast.use_backend("reference"):
        assert batch_norm_act(torch.randn(2, 4, 3, 3), bn, "relu") is None


def test_bad_input():
    bn = make_bn(4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"activation = 'gelu' is not allowed"):
        batch_norm_act(torch.randn(2, 4, 3, 3), bn, "gelu")
    with pytest.raises(ValueError, match=r"input has 5 channels, more than the max 4"):
        batch_norm_act(torch.randn(2, 5, 3, 3), bn, "relu")
    with pytest.raises(RuntimeError, match=r"weight has shape \[3\]; expected \[4\]"):
        torch.ops.ofa_fast.batch_norm_act(torch.randn(2, 4, 3, 3), torch.ones(3), None, None, None,
                                          True, 1e-5, "relu")
    with pytest.raises(RuntimeError, match=r"eval mode needs running_mean and running_var"):
        torch.ops.ofa_fast.batch_norm_act(torch.randn(2, 4, 3, 3), None, None, None, None,
                                          False, 1e-5, "relu")

"""ofa_fast.nn.DynamicSeparableConv2d against OFA's own module (the `ofa` package):
same state_dict, same outputs and every gradient; state_dicts load both ways."""
import pytest
import torch

import ofa_fast
from ofa_fast.nn import DynamicSeparableConv2d

ofa_dynamic_op = pytest.importorskip(
    "ofa.imagenet_classification.elastic_nn.modules.dynamic_op",
    reason="the `ofa` package (pip install ofa torchvision pillow) is the parity oracle")
OfaConv = ofa_dynamic_op.DynamicSeparableConv2d


def twins(max_in, ks_list, stride=1, dilation=1, dtype=torch.float64):
    ofa_m = OfaConv(max_in, ks_list, stride, dilation).to(dtype)
    with torch.no_grad():  # non-trivial transform matrices, as after training
        for name, p in ofa_m.named_parameters():
            if name.endswith("_matrix"):
                p.add_(0.1 * torch.randn_like(p))
    ours = DynamicSeparableConv2d(max_in, ks_list, stride, dilation).to(dtype)
    ours.load_state_dict(ofa_m.state_dict())
    return ofa_m, ours


def grads_of(module, x, k, g):
    x = x.detach().clone().requires_grad_()
    module.zero_grad()
    y = module(x, k)
    y.backward(g)
    return y, x.grad, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


BACKENDS = ["cpu", "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("in_channels,size,batch", [(24, 9, 2), (13, 16, 1), (32, 7, 3)])
@pytest.mark.parametrize("cl", [False, True])
def test_matches_ofa(backend, k, stride, dilation, in_channels, size, batch, cl):
    ofa_m, ours = twins(32, [3, 5, 7], stride, dilation)
    x = torch.randn(batch, in_channels, size, size, dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    y_ofa = ofa_m(x, k)
    g = torch.randn_like(y_ofa)
    y_ofa, gx_ofa, gp_ofa = grads_of(ofa_m, x, k, g)
    with ofa_fast.use_backend(backend):
        y, gx, gp = grads_of(ours, x, k, g)
    torch.testing.assert_close(y, y_ofa, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, gx_ofa, rtol=1e-10, atol=1e-10)
    assert gp.keys() == gp_ofa.keys()
    for n in gp:
        torch.testing.assert_close(gp[n], gp_ofa[n], rtol=1e-9, atol=1e-9, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("ks_list", [[3, 5, 7], [3, 7], [5], [7, 3, 5], [3, 5]])
def test_matches_ofa_other_kernel_lists(ks_list):
    ofa_m, ours = twins(16, ks_list, dtype=torch.float32)
    x = torch.randn(2, 10, 11, 11)
    for k in sorted(set(ks_list)):
        y_ofa, gx_ofa, gp_ofa = grads_of(ofa_m, x, k, torch.ones(2, 10, 11, 11))
        y, gx, gp = grads_of(ours, x, k, torch.ones(2, 10, 11, 11))
        torch.testing.assert_close(y, y_ofa, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gx, gx_ofa, rtol=1e-4, atol=1e-4)
        for n in gp_ofa:
            torch.testing.assert_close(gp[n], gp_ofa[n], rtol=1e-4, atol=1e-3)


def test_active_kernel_size_attribute_and_default():
    ofa_m, ours = twins(8, [3, 5, 7])
    x = torch.randn(1, 8, 10, 10, dtype=torch.float64)
    for k in (3, 5, 7):
        ofa_m.active_kernel_size = ours.active_kernel_size = k
        torch.testing.assert_close(ours(x), ofa_m(x))


def test_kernel_transform_mode_none(monkeypatch):
    monkeypatch.setattr(OfaConv, "KERNEL_TRANSFORM_MODE", None)
    monkeypatch.setattr(DynamicSeparableConv2d, "KERNEL_TRANSFORM_MODE", None)
    ofa_m, ours = twins(8, [3, 5, 7])
    assert not [n for n, _ in ours.named_parameters() if n.endswith("_matrix")]
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    for k in (3, 5, 7):
        torch.testing.assert_close(ours(x, k), ofa_m(x, k))


def test_state_dict_keys_and_round_trip():
    ofa_m, ours = twins(16, [3, 5, 7])
    assert list(ours.state_dict()) == list(ofa_m.state_dict())
    assert set(ours.state_dict()) == {"conv.weight", "7to5_matrix", "5to3_matrix"}
    back = OfaConv(16, [3, 5, 7]).double()
    back.load_state_dict(ours.state_dict())
    for (n, a), (_, b) in zip(back.state_dict().items(), ofa_m.state_dict().items()):
        assert torch.equal(a, b), n
    assert ours.KERNEL_TRANSFORM_MODE == OfaConv.KERNEL_TRANSFORM_MODE
    for attr in ("max_in_channels", "kernel_size_list", "stride", "dilation", "_ks_set", "active_kernel_size"):
        assert getattr(ours, attr) == getattr(ofa_m, attr), attr


@pytest.mark.parametrize("k", [3, 5, 7])
def test_get_active_filter_matches_ofa(k):
    ofa_m, ours = twins(12, [3, 5, 7])
    torch.testing.assert_close(ours.get_active_filter(9, k), ofa_m.get_active_filter(9, k))


def test_bad_input():
    conv = DynamicSeparableConv2d(8, [3, 5, 7])
    with pytest.raises(ValueError, match=r"input has 9 channels, more than max_in_channels = 8"):
        conv(torch.randn(1, 9, 8, 8))
    with pytest.raises(ValueError, match=r"kernel_size 4 is not in kernel_size_list \[3, 5, 7\]"):
        conv(torch.randn(1, 8, 8, 8), 4)
    with pytest.raises(ValueError, match=r"kernel_size 9 is not in"):
        conv(torch.randn(1, 8, 8, 8), 9)
    with pytest.raises(ValueError, match=r"4-D"):
        conv(torch.randn(8, 8, 8))
    with pytest.raises(ValueError, match=r"kernel_size_list = \[3, 4\]"):
        DynamicSeparableConv2d(8, [3, 4])
    with pytest.raises(ValueError, match=r"max_in_channels = 0"):
        DynamicSeparableConv2d(0, [3])
    with pytest.raises(ValueError, match=r"in_channel = 9"):
        conv.get_active_filter(9, 3)
    with pytest.raises(RuntimeError, match=r"size mismatch for conv.weight"):
        conv.load_state_dict(DynamicSeparableConv2d(16, [3, 5, 7]).state_dict())

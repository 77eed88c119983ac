"""SE scaling x * s[n, c] (ofa_fast.ops.channel_scale): compiled op against the broadcast
multiply, forward and both gradients, both memory formats, fp64 gradcheck, opcheck,
bad input."""
import pytest
import torch

import ofa_fast
from ofa_fast.ops import channel_scale

from _helpers import assert_close, fmt_of

needs_ext = pytest.mark.skipif(not ofa_fast._ext.has_cpu_kernels(),
                               reason="the compiled extension is not loaded")


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 3, 7), (3, 40, 16, 16), (2, 17, 1, 1),
                                   (0, 4, 2, 2)])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("mask", [(True, True), (True, False), (False, True)])
def test_matches_broadcast_multiply(dtype, shape, cl, mask):
    x = torch.randn(shape, dtype=dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    s = torch.randn(shape[0], shape[1], dtype=dtype)
    g = torch.randn(shape, dtype=dtype)
    xa, sa = x.clone().requires_grad_(mask[0]), s.clone().requires_grad_(mask[1])
    y = channel_scale(xa, sa)
    assert fmt_of(y) == fmt_of(x) or min(shape) <= 1
    y.backward(g)
    xb, sb = x.double().requires_grad_(), s.double().requires_grad_()
    yb = xb * sb[:, :, None, None]
    yb.backward(g.double())
    assert_close(y, yb, dtype, "output")
    if mask[0]:
        assert_close(xa.grad, xb.grad, dtype, "grad input")
    if mask[1]:
        assert_close(sa.grad, sb.grad, dtype, "grad scale")


@needs_ext
@pytest.mark.parametrize("cl", [False, True])
def test_gradcheck_and_opcheck(cl):
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    s = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(channel_scale, (x, s))
    torch.library.opcheck(torch.ops.ofa_fast.channel_scale.default, (x.float().detach().requires_grad_(),
                                                                     s.float().detach().requires_grad_()))


def test_reference_backend_and_4d_scale():
    x, s = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 1, 1)
    with ofa_fast.use_backend("reference"):
        torch.testing.assert_close(channel_scale(x, s), x * s)
    torch.testing.assert_close(channel_scale(x, s), x * s)


def test_bad_input():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"scale must be \[N, C\] = \[2, 3\]"):
        channel_scale(x, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"input must be 4-D"):
        channel_scale(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"must match the input"):
        channel_scale(x, torch.randn(2, 3, dtype=torch.float64))

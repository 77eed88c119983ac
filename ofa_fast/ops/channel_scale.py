"""Squeeze-and-excitation scaling: channel_scale(x [N, C, H, W], s [N, C]) = x * s[n, c].

The compiled op's backward is fused: one pass over (grad, x) gives grad_x and grad_s
(PyTorch's broadcast multiply needs a second full-size product and a reduction). The
output keeps the input's memory format. The reference (and the Triton backend, which
has nothing to gain here over PyTorch's own elementwise kernels) is the broadcast
multiply.
"""
from __future__ import annotations

import torch

from .. import _ext, backend
from ._common import output_memory_format

__all__ = ["channel_scale"]


def channel_scale_reference(x, s):
    return x * s.view(s.shape[0], s.shape[1], 1, 1)


def _fake(x, s):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def _fake_backward(grad_output, x, s, output_mask):
    gx = _fake(x, s) if output_mask[0] else x.new_empty((0,))
    gs = s.new_empty(s.shape) if output_mask[1] else s.new_empty((0,))
    return gx, gs


if _ext.has_cpu_kernels():
    torch.library.register_fake("ofa_fast::channel_scale")(_fake)
    torch.library.register_fake("ofa_fast::channel_scale_backward")(_fake_backward)
    # autograd is registered in C++ (csrc/autograd/autograd.cpp)


def channel_scale(x, s, op="ofa_fast.channel_scale"):
    """x * s[:, :, None, None] for x [N, C, H, W] and s [N, C] (or [N, C, 1, 1])."""
    if not isinstance(x, torch.Tensor) or not isinstance(s, torch.Tensor):
        raise TypeError(f"{op}: input and scale must be tensors")
    if x.dim() != 4:
        raise ValueError(f"{op}: input must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    N, C = x.shape[0], x.shape[1]
    if s.dim() == 4 and s.shape[2:] == (1, 1):
        s = s.reshape(s.shape[0], s.shape[1])
    if tuple(s.shape) != (N, C):
        raise ValueError(f"{op}: scale must be [N, C] = [{N}, {C}] (or [N, C, 1, 1]), got shape "
                         f"{tuple(s.shape)}")
    if s.dtype != x.dtype and s.device == x.device and torch.is_autocast_enabled(x.device.type):
        # under autocast the two come from ops of different precision policies: the
        # product takes the wider type, as aten's mul does
        dtype = torch.promote_types(x.dtype, s.dtype)
        x, s = x.to(dtype), s.to(dtype)
    if s.dtype != x.dtype or s.device != x.device:
        raise TypeError(f"{op}: scale ({s.dtype} on {s.device}) must match the input "
                        f"({x.dtype} on {x.device})")
    name = backend.resolve(x.device.type, x.dtype)
    if name in ("cpu", "cuda"):
        return torch.ops.ofa_fast.channel_scale(x, s)
    return channel_scale_reference(x, s)

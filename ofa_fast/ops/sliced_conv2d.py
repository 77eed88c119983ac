"""A k x k convolution with the active block weight[:out, :in] of the max weight, as one
dispatcher op whose width is a SymInt (the ResNet supernets' 3 x 3 convs under
ofa_fast.compile_supernet):

    ofa_fast::sliced_conv2d(Tensor input, Tensor weight, SymInt out_channels, SymInt stride,
                            SymInt padding, SymInt dilation) -> Tensor

in = input.size(1). Eager code slices the weight and calls F.conv2d on the view (no copy;
ofa_fast.nn.DynamicConv2d does). Traced with a symbolic width, that view's layout (it is
contiguous exactly at the max width) is asked by the convolution's fake kernels and by
the slice's backward, which makes Dynamo guard on the width; inside one op nobody asks.
The backward op returns the gradient of the full max weight (zero outside the block).
Both run PyTorch's own convolution kernels on the view, as the eager path does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from ._common import conv_out_size

__all__ = ["sliced_conv2d"]


def sliced_conv2d(x, weight, out_channels, stride=1, padding=0, dilation=1):
    """F.conv2d(x, weight[:out_channels, :C], None, stride, padding, dilation), C = x.size(1)."""
    return torch.ops.ofa_fast.sliced_conv2d(x, weight, out_channels, stride, padding, dilation)


@torch.library.custom_op("ofa_fast::sliced_conv2d", mutates_args=())
def _sliced_conv2d(x: torch.Tensor, weight: torch.Tensor, out_channels: int, stride: int,
                   padding: int, dilation: int) -> torch.Tensor:
    return F.conv2d(x, weight[:out_channels, :x.shape[1]], None, stride, padding, dilation)


@_sliced_conv2d.register_fake
def _(x, weight, out_channels, stride, padding, dilation):
    N, _, H, W = x.shape
    k = weight.shape[2]
    shape = (N, out_channels, conv_out_size(H, k, stride, dilation, padding),
             conv_out_size(W, weight.shape[3], stride, dilation, padding))
    # PyTorch's CPU / CUDA convolutions keep the input's (suggested) memory format
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=suggest_memory_format(x))


@torch.library.custom_op("ofa_fast::sliced_conv2d_backward", mutates_args=())
def _sliced_conv2d_backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            stride: int, padding: int, dilation: int,
                            output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad x, grad of the full max weight); a masked-off one is empty."""
    out, C = grad_output.shape[1], x.shape[1]
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad_output, x, weight[:out, :C], None, [stride] * 2, [padding] * 2, [dilation] * 2,
        False, [0, 0], 1, [output_mask[0], output_mask[1], False])
    empty = x.new_empty((0,))
    full = empty
    if output_mask[1]:
        full = torch.zeros_like(weight)
        full[:out, :C] = gw
    return (gx if output_mask[0] else empty), full


@_sliced_conv2d_backward.register_fake
def _(grad_output, x, weight, stride, padding, dilation, output_mask):
    empty = x.new_empty((0,))
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                     memory_format=suggest_memory_format(x)) if output_mask[0] else empty
    return gx, (torch.empty_like(weight) if output_mask[1] else empty)


def _setup_context(ctx, inputs, output):
    x, weight, _, stride, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = (stride, padding, dilation)


def _backward(ctx, grad_output):
    x, weight = ctx.saved_tensors
    mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
    gx, gw = torch.ops.ofa_fast.sliced_conv2d_backward(grad_output, x, weight, *ctx.conf, mask)
    return (gx if mask[0] else None), (gw if mask[1] else None), None, None, None, None


_sliced_conv2d.register_autograd(_backward, setup_context=_setup_context)

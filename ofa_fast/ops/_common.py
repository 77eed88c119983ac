"""Helpers shared by the op wrappers: shape rules the fake kernels mirror, and the
autograd registration of the convolution ops."""
from __future__ import annotations

import torch


def conv_out_size(n, k, s, d, p):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def output_memory_format(x: torch.Tensor):
    """The kernels' rule (csrc/common/memory_format.h, kept_memory_format): the
    output keeps the input's memory format; contiguous wins when both apply."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(x)


def pointwise_memory_format(x: torch.Tensor):
    """The conv output keeps the input's memory format; a strided view counts as
    channels_last when its channel stride is the smallest (csrc/sliced/sliced.cpp,
    format_of)."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.channels_last if x.stride(1) <= min(x.stride(2), x.stride(3)) \
        else torch.contiguous_format


def register_conv_autograd(name, backward_input, backward_weight):
    """Autograd of a conv op `name(x, weight, k, s, d, p)` whose two gradients are the
    ops backward_input / backward_weight(grad_output, x, weight, k, s, d, p). (The
    compiled ops' autograd is in C++: csrc/autograd/autograd.cpp.)"""

    def setup_context(ctx, inputs, output):
        x, weight, k, s, d, p = inputs
        ctx.save_for_backward(x, weight)
        ctx.conf = (k, s, d, p)

    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = backward_input(grad_output, x, weight, *ctx.conf)
        if ctx.needs_input_grad[1]:
            gw = backward_weight(grad_output, x, weight, *ctx.conf)
        return gx, gw, None, None, None, None

    torch.library.register_autograd(name, backward, setup_context=setup_context)

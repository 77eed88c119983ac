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


def autocast_inputs(x, weight, bias=None, out=None, in_dim=1):
    """Under torch.autocast on x's device, the floating tensors of a conv / linear op
    cast to the autocast dtype, as autocast does for aten's convolutions and GEMMs (the
    "lower precision" ops): the active block weight[:out, :in] only (in = x's size along
    in_dim), so the cast copies no more than the active weights. Outside autocast, or
    when nothing needs a cast, the arguments come back unchanged."""
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return x, weight, bias, out
    dtype = torch.get_autocast_dtype(device)
    if not x.is_floating_point() or (x.dtype == dtype and weight.dtype == dtype
                                      and (bias is None or bias.dtype == dtype)):
        return x, weight, bias, out
    rows = weight.shape[0] if out is None else out
    weight = weight[:rows, :x.shape[in_dim]] if weight.shape[1] != 1 else weight[:rows]
    bias = None if bias is None else bias[:rows].to(dtype)
    return x.to(dtype), weight.to(dtype), bias, rows


# ---- symbolic ints (torch.compile) ----------------------------------------------------
#
# Under torch.compile with dynamic elastic settings (ofa_fast.compile_supernet), a channel
# count or kernel size reaches the wrappers as a symbolic int. A Python branch or check on
# its value would make Dynamo guard on (specialise to) that value and recompile for the
# next subnet, so the wrappers check such values' types only: their values were checked
# when the subnet's settings were read (eagerly), and the kernels check them again when
# the graph runs.

def is_symbolic(value):
    """True for an int that may be symbolic: a torch.SymInt, or any int while Dynamo
    traces (it shows a symbolic int to Python code as a plain int)."""
    if isinstance(value, torch.SymInt):
        return True
    return isinstance(value, int) and not isinstance(value, bool) \
        and torch.compiler.is_compiling()


def is_int(value):
    """A Python int (not a bool) or a symbolic one."""
    return (isinstance(value, int) and not isinstance(value, bool)) or is_symbolic(value)


def known_equal(a, b):
    """a == b, known without a guard (always False for two unrelated symbolic sizes)."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return statically_known_true(a == b)

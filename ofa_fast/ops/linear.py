"""Channel-sliced linear and pointwise (1x1) convolution: OFA's DynamicLinear and
DynamicConv2d(kernel_size=1) without the weight copy.

    sliced_linear(x [..., in], weight [out_max, in_max], bias [out_max]?, out_features)
        = x @ weight[:out, :in]^T + bias[:out]
    pointwise_conv2d(x [N, in, H, W], weight [out_max, in_max, 1, 1], bias?, out_channels,
                     stride=1)

The active block weight[:out, :in] is read in place through its strides (a GEMM's
leading dimension). Gradients flow to the input and to the full max weight and bias
(zero outside the active block). The conv output keeps the input's memory format; a
channels_last input makes the whole conv one GEMM over its pixel rows.

Here: argument checks, the reference (what OFA computes), fake kernels and autograd of
the compiled ops (torch.ops.ofa_fast.*, CPU and CUDA), the Triton ops, and the backend
dispatch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _ext, backend
from ._common import autocast_inputs, is_int, is_symbolic, known_equal, pointwise_memory_format

__all__ = ["pointwise_conv2d", "pointwise_conv2d_act", "sliced_linear", "check_sliced_args"]


def check_sliced_args(x, weight, bias, out, op, conv):
    """Raises a clear error naming the bad value and what is allowed."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: input and weight must be tensors, got "
                        f"{type(x).__name__} and {type(weight).__name__}")
    if conv:
        if x.dim() != 4:
            raise ValueError(f"{op}: input must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
        if weight.dim() != 4 or weight.shape[2:] != (1, 1):
            raise ValueError(f"{op}: weight must be [out_max, in_max, 1, 1], got shape "
                             f"{tuple(weight.shape)}")
        in_, what = x.shape[1], "channels"
    else:
        if x.dim() < 1:
            raise ValueError(f"{op}: input must have at least 1 dim [..., in], got a scalar")
        if weight.dim() != 2:
            raise ValueError(f"{op}: weight must be 2-D [out_max, in_max], got shape "
                             f"{tuple(weight.shape)}")
        in_, what = x.shape[-1], "features"
    if x.device != weight.device:
        raise ValueError(f"{op}: input is on {x.device} but weight is on {weight.device}; "
                         "both must be on the same device")
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: input dtype {x.dtype} differs from weight dtype {weight.dtype}")
    out_max, in_max = weight.shape[0], weight.shape[1]
    if not is_symbolic(in_) and not 1 <= in_ <= in_max:
        raise ValueError(f"{op}: input has {in_} {what}; it must have between 1 and {in_max} "
                         "(the weight's max)")
    # a symbolic out (torch.compile) is not compared: see ops/_common.py
    if not is_int(out) or (not is_symbolic(out) and not 1 <= out <= out_max):
        raise ValueError(f"{op}: out_{what} = {out!r} is not allowed; it must be an int between "
                         f"1 and {out_max} (the weight's max)")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (out_max,):
            raise ValueError(f"{op}: bias must be a tensor of shape ({out_max},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise TypeError(f"{op}: bias ({bias.dtype} on {bias.device}) must match the weight "
                            f"({weight.dtype} on {weight.device})")


# ---- reference: OFA's slice-copy-and-call -------------------------------------------

def sliced_linear_reference(x, weight, bias, out_features):
    w = weight[:out_features, :x.shape[-1]].contiguous()
    return F.linear(x, w, None if bias is None else bias[:out_features])


def pointwise_conv2d_reference(x, weight, bias, out_channels):
    w = weight[:out_channels, :x.shape[1]].contiguous()
    return F.conv2d(x, w, None if bias is None else bias[:out_channels])


# ---- compiled ops -------------------------------------------------------------------

def _fake_linear(x, weight, bias, out_features):
    return x.new_empty((x.shape[0], out_features))


def _fake_pointwise(x, weight, bias, out_channels):
    N, _, H, W = x.shape
    return torch.empty((N, out_channels, H, W), dtype=x.dtype, device=x.device,
                       memory_format=pointwise_memory_format(x))


def _fake_backward(grad_output, x, weight, output_mask):
    conv = x.dim() == 4
    gx = (torch.empty(x.shape, dtype=x.dtype, device=x.device,
                      memory_format=pointwise_memory_format(x)) if conv else x.new_empty(x.shape)) \
        if output_mask[0] else x.new_empty((0,))
    gw = weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty((0,))
    gb = weight.new_empty((weight.shape[0],)) if output_mask[2] else weight.new_empty((0,))
    return gx, gw, gb


def register_sliced_autograd(name, backward):
    """Autograd of an op name(x, weight, bias, out) whose gradients come from
    backward(grad_output, x, weight, output_mask) -> (grad_x, grad_weight, grad_bias)."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, _ = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]),
                bool(ctx.has_bias and ctx.needs_input_grad[2])]
        gx, gw, gb = backward(grad_output, x, weight, mask)
        return (gx if mask[0] else None), (gw if mask[1] else None), \
            (gb if mask[2] else None), None

    torch.library.register_autograd(name, _backward, setup_context=setup_context)


if _ext.has_cpu_kernels():
    torch.library.register_fake("ofa_fast::sliced_linear")(_fake_linear)
    torch.library.register_fake("ofa_fast::pointwise_conv2d")(_fake_pointwise)
    torch.library.register_fake("ofa_fast::sliced_linear_backward")(_fake_backward)
    torch.library.register_fake("ofa_fast::pointwise_conv2d_backward")(_fake_backward)
    torch.library.register_fake("ofa_fast::pointwise_conv2d_act")(
        lambda x, weight, bias, out, act: _fake_pointwise(x, weight, bias, out))
    # autograd of the compiled ops is registered in C++ (csrc/autograd/autograd.cpp)


# ---- Triton ops ---------------------------------------------------------------

def _register_triton():
    """Defines ofa_fast::sliced_linear_triton and ofa_fast::pointwise_conv2d_triton (+ their
    backward ops) with torch.library.triton_op, so Inductor sees the kernels. Imports
    triton: only done when the backend is usable."""
    # bare names: triton_op reads this source to find the kernels it launches
    from ..triton_kernels.linear import (pointwise_conv2d_backward_bias,
                                         pointwise_conv2d_backward_input,
                                         pointwise_conv2d_backward_weight,
                                         pointwise_conv2d_forward, sliced_linear_backward_bias,
                                         sliced_linear_backward_input,
                                         sliced_linear_backward_weight, sliced_linear_forward)

    @torch.library.triton_op("ofa_fast::sliced_linear_triton", mutates_args=())
    def sliced_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             out_features: int) -> torch.Tensor:
        return sliced_linear_forward(x, weight, bias, out_features)

    @torch.library.triton_op("ofa_fast::sliced_linear_triton_backward", mutates_args=())
    def sliced_linear_triton_backward(grad_output: torch.Tensor, x: torch.Tensor,
                                      weight: torch.Tensor, output_mask: list[bool]
                                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        empty = weight.new_empty((0,))
        gx = sliced_linear_backward_input(grad_output, weight, x.shape[1]) \
            if output_mask[0] else x.new_empty((0,))
        gw = sliced_linear_backward_weight(grad_output, x, weight) if output_mask[1] else empty
        gb = sliced_linear_backward_bias(grad_output, weight.shape[0]) \
            if output_mask[2] else weight.new_empty((0,))
        return gx, gw, gb

    @torch.library.triton_op("ofa_fast::pointwise_conv2d_triton", mutates_args=())
    def pointwise_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                out_channels: int) -> torch.Tensor:
        return pointwise_conv2d_forward(x, weight, bias, out_channels)

    @torch.library.triton_op("ofa_fast::pointwise_conv2d_triton_backward", mutates_args=())
    def pointwise_conv2d_triton_backward(grad_output: torch.Tensor, x: torch.Tensor,
                                         weight: torch.Tensor, output_mask: list[bool]
                                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        empty = weight.new_empty((0,))
        gx = pointwise_conv2d_backward_input(grad_output, x, weight) \
            if output_mask[0] else x.new_empty((0,))
        gw = pointwise_conv2d_backward_weight(grad_output, x, weight) if output_mask[1] else empty
        gb = pointwise_conv2d_backward_bias(grad_output, weight.shape[0]) \
            if output_mask[2] else weight.new_empty((0,))
        return gx, gw, gb

    register_sliced_autograd("ofa_fast::sliced_linear_triton", sliced_linear_triton_backward)
    register_sliced_autograd("ofa_fast::pointwise_conv2d_triton", pointwise_conv2d_triton_backward)
    _LINEAR["triton"] = lambda *a: torch.ops.ofa_fast.sliced_linear_triton(*a)
    _POINTWISE["triton"] = lambda *a: torch.ops.ofa_fast.pointwise_conv2d_triton(*a)


_LINEAR = {
    "reference": sliced_linear_reference,
    "cpu": lambda *a: torch.ops.ofa_fast.sliced_linear(*a),
    "cuda": lambda *a: torch.ops.ofa_fast.sliced_linear(*a),
}
_POINTWISE = {
    "reference": pointwise_conv2d_reference,
    "cpu": lambda *a: torch.ops.ofa_fast.pointwise_conv2d(*a),
    "cuda": lambda *a: torch.ops.ofa_fast.pointwise_conv2d(*a),
}


# ---- the public calls ---------------------------------------------------------------

def sliced_linear(x, weight, bias=None, out_features=None, op="ofa_fast.sliced_linear"):
    """`x @ weight[:out_features, :in].T + bias[:out_features]`, in = x.shape[-1];
    out_features defaults to weight.shape[0]."""
    if out_features is None and isinstance(weight, torch.Tensor):
        out_features = weight.shape[0]
    if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        x, weight, bias, out_features = autocast_inputs(x, weight, bias, out_features, in_dim=-1)
    check_sliced_args(x, weight, bias, out_features, op, conv=False)
    name = backend.resolve(x.device.type, x.dtype)
    if name == "reference":
        return sliced_linear_reference(x, weight, bias, out_features)
    if name in ("cpu", "cuda") and known_equal(out_features, weight.shape[0]) \
            and known_equal(x.shape[-1], weight.shape[1]):
        # the active block is the whole weight: nothing to slice, PyTorch's own GEMM path
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = _LINEAR[name](x.reshape(-1, x.shape[-1]), weight, bias, out_features)
    return y.view(*lead, out_features)


def pointwise_conv2d(x, weight, bias=None, out_channels=None, stride=1,
                     op="ofa_fast.pointwise_conv2d"):
    """1x1 conv of `x` with weight[:out_channels, :C] (+ bias[:out_channels]); stride s
    reads every s-th pixel (OFA's padding for k = 1 is 0)."""
    if out_channels is None and isinstance(weight, torch.Tensor):
        out_channels = weight.shape[0]
    if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() == 4 \
            and weight.dim() == 4:
        x, weight, bias, out_channels = autocast_inputs(x, weight, bias, out_channels)
    check_sliced_args(x, weight, bias, out_channels, op, conv=True)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{op}: stride = {stride!r} is not allowed; it must be an int >= 1")
    name = backend.resolve(x.device.type, x.dtype)
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    if name == "reference":
        return pointwise_conv2d_reference(x, weight, bias, out_channels)
    return _POINTWISE[name](x, weight, bias, out_channels)


_ACTIVATIONS = ("none", "relu", "relu6", "h_swish")


def pointwise_conv2d_act(x, weight, bias, out_channels, stride=1, activation="none",
                         op="ofa_fast.pointwise_conv2d_act"):
    """Inference only: activation(pointwise_conv2d(...)) in one op, the activation applied
    to each GEMM's output block while it is in cache (activation: none, relu, relu6,
    h_swish). Returns None when the backend has no such op (reference, Triton): the
    caller then runs the two steps."""
    if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() == 4 \
            and weight.dim() == 4:
        x, weight, bias, out_channels = autocast_inputs(x, weight, bias, out_channels)
    check_sliced_args(x, weight, bias, out_channels, op, conv=True)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation = {activation!r} is not allowed; choose from "
                         f"{', '.join(_ACTIVATIONS)}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{op}: stride = {stride!r} is not allowed; it must be an int >= 1")
    if backend.resolve(x.device.type, x.dtype) not in ("cpu", "cuda"):
        return None
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    return torch.ops.ofa_fast.pointwise_conv2d_act(x, weight, bias, out_channels, activation)

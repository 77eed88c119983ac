"""The depthwise convolution on a centre crop of the max weight.

    dwconv2d(x [N, C, H, W], weight [C_max, 1, K, K], kernel_size k, stride, dilation,
             padding) -> [N, C, OH, OW]

The filter of channel c is the centre k x k window of weight[c] (c < C <= C_max), read
in place by the kernels: no sliced or cropped copy of the weight is made. Gradients
flow to the input and to the full max weight (zero outside the active window). The
output keeps the input's memory format (NCHW or channels_last).

Here: argument checks, the reference (the specification: exactly what OFA computes),
fake kernels and autograd of the compiled ops (torch.ops.ofa_fast.dwconv2d*, CPU and
CUDA), the Triton ops, and the backend dispatch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _ext, backend
from ._common import autocast_inputs, conv_out_size, output_memory_format, register_conv_autograd

__all__ = ["dwconv2d", "dwconv2d_backward", "dwconv2d_reference", "check_dwconv_args"]


def check_dwconv_args(x, weight, kernel_size, stride, dilation, padding, op="ofa_fast.dwconv2d"):
    """Raises a clear error naming the bad value and what is allowed."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: input and weight must be tensors, got "
                        f"{type(x).__name__} and {type(weight).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: input must be 4-D [N, C, H, W], got a {x.dim()}-D tensor "
                         f"of shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{op}: weight must be [C_max, 1, K, K] (a depthwise max kernel), "
                         f"got shape {tuple(weight.shape)}")
    if x.device != weight.device:
        raise ValueError(f"{op}: input is on {x.device} but weight is on {weight.device}; "
                         "both must be on the same device")
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: input dtype {x.dtype} differs from weight dtype "
                        f"{weight.dtype}; both must have the same dtype")
    c_max, K = weight.shape[0], weight.shape[2]
    if K % 2 == 0:
        raise ValueError(f"{op}: the max kernel size K = {K} is even; it must be odd")
    k_limit = min(K, 31)
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0 \
            or kernel_size > k_limit:
        raise ValueError(f"{op}: kernel_size = {kernel_size!r} is not allowed; it must be an "
                         f"odd int in [1, {k_limit}] (at most the weight's K = {K})")
    C = x.shape[1]
    if not 1 <= C <= c_max:
        raise ValueError(f"{op}: input has {C} channels; it must have between 1 and {c_max} "
                         "(the weight's max channels)")
    for name, v, lo in (("stride", stride, 1), ("dilation", dilation, 1), ("padding", padding, 0)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{op}: {name} = {v!r} is not allowed; it must be an int >= {lo}")
    H, W = x.shape[2], x.shape[3]
    need = dilation * (kernel_size - 1) + 1 - 2 * padding
    if H < need or W < need:
        raise ValueError(f"{op}: input of {H}x{W} is too small for kernel_size {kernel_size} "
                         f"with dilation {dilation} and padding {padding}: it must be at least "
                         f"{need} in each spatial dim")


def dwconv2d_reference(x, weight, kernel_size, stride, dilation, padding):
    """The specification, in plain PyTorch: what OFA's DynamicSeparableConv2d computes."""
    C, K = x.shape[1], weight.shape[2]
    start = K // 2 - kernel_size // 2
    filters = weight[:C, :, start:start + kernel_size, start:start + kernel_size].contiguous()
    return F.conv2d(x, filters, None, stride, padding, dilation, C)


# ---- compiled ops (CPU and CUDA kernels of ofa_fast._C) ---------------------------

def _fake_forward(x, weight, kernel_size, stride, dilation, padding):
    N, C, H, W = x.shape
    OH = conv_out_size(H, kernel_size, stride, dilation, padding)
    OW = conv_out_size(W, kernel_size, stride, dilation, padding)
    return torch.empty((N, C, OH, OW), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def _fake_backward_input(grad_output, x, weight, kernel_size, stride, dilation, padding):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


def _fake_backward_weight(grad_output, x, weight, kernel_size, stride, dilation, padding):
    return weight.new_empty(weight.shape)


def _fake_backward(grad_output, x, weight, kernel_size, stride, dilation, padding, output_mask):
    gx = _fake_backward_input(grad_output, x, weight, kernel_size, stride, dilation, padding) \
        if output_mask[0] else x.new_empty((0,))
    gw = weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty((0,))
    return gx, gw


if _ext.has_cpu_kernels():
    torch.library.register_fake("ofa_fast::dwconv2d")(_fake_forward)
    torch.library.register_fake("ofa_fast::dwconv2d_backward_input")(_fake_backward_input)
    torch.library.register_fake("ofa_fast::dwconv2d_backward_weight")(_fake_backward_weight)
    torch.library.register_fake("ofa_fast::dwconv2d_backward")(_fake_backward)
    # autograd of the compiled op is registered in C++ (csrc/autograd/autograd.cpp), with
    # the fused backward (grad_output staged once for both gradients on the CPU)


def _compiled(x, weight, kernel_size, stride, dilation, padding):
    return torch.ops.ofa_fast.dwconv2d(x, weight, kernel_size, stride, dilation, padding)


# ---- Triton ops ---------------------------------------------------------------

def _register_triton():
    """Defines ofa_fast::dwconv2d_triton (+ backward ops) with torch.library.triton_op, so
    Inductor sees the kernels. Imports triton: only done when the backend is usable."""
    # bare names: triton_op reads this source to find the kernels it launches
    from ..triton_kernels.dwconv import (dwconv2d_backward_input, dwconv2d_backward_weight,
                                         dwconv2d_forward)

    @torch.library.triton_op("ofa_fast::dwconv2d_triton", mutates_args=())
    def dwconv2d_triton(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int,
                        dilation: int, padding: int) -> torch.Tensor:
        return dwconv2d_forward(x, weight, kernel_size, stride, dilation, padding)

    @torch.library.triton_op("ofa_fast::dwconv2d_triton_backward_input", mutates_args=())
    def dwconv2d_triton_backward_input(grad_output: torch.Tensor, x: torch.Tensor,
                                       weight: torch.Tensor, kernel_size: int, stride: int,
                                       dilation: int, padding: int) -> torch.Tensor:
        return dwconv2d_backward_input(grad_output, x, weight, kernel_size, stride, dilation,
                                       padding)

    @torch.library.triton_op("ofa_fast::dwconv2d_triton_backward_weight", mutates_args=())
    def dwconv2d_triton_backward_weight(grad_output: torch.Tensor, x: torch.Tensor,
                                        weight: torch.Tensor, kernel_size: int, stride: int,
                                        dilation: int, padding: int) -> torch.Tensor:
        return dwconv2d_backward_weight(grad_output, x, weight, kernel_size, stride, dilation,
                                        padding)

    register_conv_autograd("ofa_fast::dwconv2d_triton", dwconv2d_triton_backward_input,
                           dwconv2d_triton_backward_weight)


def _triton(x, weight, kernel_size, stride, dilation, padding):
    return torch.ops.ofa_fast.dwconv2d_triton(x, weight, kernel_size, stride, dilation, padding)


_IMPLS = {
    "reference": dwconv2d_reference,
    "cpu": _compiled,
    "cuda": _compiled,
    "triton": _triton,
}


def dwconv2d(x, weight, kernel_size, stride=1, dilation=1, padding=None):
    """Depthwise conv of `x` with the centre `kernel_size` crop of `weight[:C]`.

    padding defaults to kernel_size // 2 (OFA's `get_same_padding`, whatever the
    dilation). Runs on the backend chosen by :mod:`ofa_fast.backend`.
    """
    if padding is None:
        padding = kernel_size // 2 if isinstance(kernel_size, int) else kernel_size
    if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() == 4 \
            and weight.dim() == 4:
        x, weight, _, _ = autocast_inputs(x, weight, None, x.shape[1])
    check_dwconv_args(x, weight, kernel_size, stride, dilation, padding)
    return dwconv2d_checked(x, weight, kernel_size, stride, dilation, padding)


def dwconv2d_checked(x, weight, kernel_size, stride, dilation, padding):
    """dwconv2d on the chosen backend for arguments already cast and checked (callers
    that checked them against the max weight: ops/elastic_dwconv.py)."""
    name = backend.resolve(x.device.type, x.dtype)
    return _IMPLS[name](x, weight, kernel_size, stride, dilation, padding)


# ---- both gradients, without autograd -------------------------------------------------
# (ops/elastic_dwconv.py's compiled-graph op computes its backward with these)

def _backward_reference(grad_output, x, weight, kernel_size, stride, dilation, padding, mask):
    C, K = x.shape[1], weight.shape[2]
    start = K // 2 - kernel_size // 2
    window = (slice(None, C), slice(None), slice(start, start + kernel_size),
              slice(start, start + kernel_size))
    gx, gf, _ = torch.ops.aten.convolution_backward(
        grad_output, x, weight[window].contiguous(), None, [stride] * 2, [padding] * 2,
        [dilation] * 2, False, [0, 0], C, [mask[0], mask[1], False])
    gw = None
    if mask[1]:
        gw = torch.zeros_like(weight)
        gw[window] = gf
    return gx, gw


def _backward_compiled(grad_output, x, weight, kernel_size, stride, dilation, padding, mask):
    gx, gw = torch.ops.ofa_fast.dwconv2d_backward(grad_output, x, weight, kernel_size, stride,
                                                  dilation, padding, list(mask))
    return (gx if mask[0] else None), (gw if mask[1] else None)


def _backward_triton(grad_output, x, weight, kernel_size, stride, dilation, padding, mask):
    args = (grad_output, x, weight, kernel_size, stride, dilation, padding)
    return (torch.ops.ofa_fast.dwconv2d_triton_backward_input(*args) if mask[0] else None,
            torch.ops.ofa_fast.dwconv2d_triton_backward_weight(*args) if mask[1] else None)


_BACKWARD = {
    "reference": _backward_reference,
    "cpu": _backward_compiled,
    "cuda": _backward_compiled,
    "triton": _backward_triton,
}


def dwconv2d_backward(grad_output, x, weight, kernel_size, stride, dilation, padding,
                      mask=(True, True)):
    """(grad of x, grad of the full max weight) of dwconv2d, on the backend dwconv2d
    picks; mask says which are wanted (None for the others)."""
    name = backend.resolve(x.device.type, x.dtype)
    return _BACKWARD[name](grad_output, x, weight, kernel_size, stride, dilation, padding,
                           tuple(bool(m) for m in mask))

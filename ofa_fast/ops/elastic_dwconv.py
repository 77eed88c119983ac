"""OFA's elastic depthwise convolution as one call: the active channels, the active
kernel size through OFA's kernel-transform chain (or a plain centre crop), then the
depthwise conv with OFA's stride, dilation and padding (kernel_size // 2).

Under torch.compile with a symbolic kernel size (ofa_fast.compile_supernet), which
transform steps run is not known when the graph is traced, so the whole chain and the
conv run as one dispatcher op whose kernel size is a SymInt:

    ofa_fast::elastic_dwconv2d(Tensor input, Tensor weight, Tensor[] matrices,
                               SymInt[] kernel_size_list, SymInt kernel_size,
                               SymInt stride, SymInt dilation) -> Tensor

`matrices` are the transform matrices down the whole sorted kernel-size list, largest
first ([7to5, 5to3] for [3, 5, 7]), or none (crop only). Its fake kernel gives the
output shape without the kernel size (for odd k and padding k // 2 at dilation 1, the
output is (H - 1) // stride + 1 whatever k is), so one graph serves every kernel size.
Its backward (ofa_fast::elastic_dwconv2d_backward) returns a gradient for every matrix:
zeros for the steps the active kernel size does not take, where eager autograd leaves
them None. Both run the same kernels as the eager path (ops.dwconv2d, ops.kernel_transform
and their backward ops, on the backend those pick).
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch

from ._common import autocast_inputs, conv_out_size, is_symbolic, output_memory_format
from .dwconv import check_dwconv_args, dwconv2d, dwconv2d_backward, dwconv2d_checked
from .kernel_transform import kernel_transform, kernel_transform_backward

__all__ = ["elastic_dwconv2d", "transform_chain"]


def transform_chain(kernel_size_list, kernel_size):
    """Kernel sizes the transform walks through, max first: [K, ..., kernel_size]."""
    return [s for s in sorted(set(kernel_size_list), reverse=True) if s >= kernel_size]


def _chain_matrices(op, transform_matrices, chain):
    if not isinstance(transform_matrices, Mapping):
        raise TypeError(f"{op}: transform_matrices must map '<a>to<b>' to a matrix, got "
                        f"{type(transform_matrices).__name__}")
    mats = []
    for a, b in zip(chain, chain[1:]):
        key = f"{a}to{b}"
        if key not in transform_matrices:
            raise KeyError(f"{op}: transform matrix {key!r} is missing; have "
                           f"{sorted(transform_matrices)}")
        mats.append(transform_matrices[key])
    return mats


def elastic_dwconv2d(x, weight, kernel_size, kernel_size_list=None, transform_matrices=None,
                     stride=1, dilation=1, op="ofa_fast.elastic_dwconv2d"):
    """x [N, C, H, W] (C <= C_max) with the active filter of `weight` [C_max, 1, K, K].

    kernel_size_list: the elastic kernel sizes (max = K); default [K].
    transform_matrices: mapping "<a>to<b>" -> [b*b, b*b] matrix, OFA's kernel transform
      (KERNEL_TRANSFORM_MODE = 1); None crops without transforming (mode None).
    A symbolic kernel_size (torch.compile) runs the one-op path of the module docstring.
    """
    ks_list = [weight.shape[-1]] if kernel_size_list is None else list(kernel_size_list)
    if is_symbolic(kernel_size):
        return _elastic_symbolic(x, weight, kernel_size, ks_list, transform_matrices, stride,
                                 dilation, op)
    if kernel_size not in ks_list:
        raise ValueError(f"{op}: kernel_size {kernel_size!r} is not in kernel_size_list "
                         f"{sorted(set(ks_list))}")
    if weight.dim() == 4 and max(ks_list) != weight.shape[-1]:
        raise ValueError(f"{op}: the largest kernel size {max(ks_list)} of {sorted(set(ks_list))} "
                         f"does not match the weight's kernel size {weight.shape[-1]}")
    padding = kernel_size // 2
    if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() == 4 \
            and weight.dim() == 4:
        # under torch.autocast: the active channels and the matrices in its dtype
        x, weight, _, _ = autocast_inputs(x, weight, None, x.shape[1])
        if isinstance(transform_matrices, Mapping) and any(
                isinstance(m, torch.Tensor) and m.dtype != weight.dtype
                for m in transform_matrices.values()):
            transform_matrices = {k: m.to(weight.dtype) if isinstance(m, torch.Tensor) else m
                                  for k, m in transform_matrices.items()}
    check_dwconv_args(x, weight, kernel_size, stride, dilation, padding, op=op)
    filters = weight
    if transform_matrices is not None and kernel_size < weight.shape[-1]:
        chain = transform_chain(ks_list, kernel_size)
        mats = _chain_matrices(op, transform_matrices, chain)
        filters = kernel_transform(weight, mats, chain, x.shape[1])
    # checked above against the max weight: the active filter needs no second check
    return dwconv2d_checked(x, filters, kernel_size, stride, dilation, padding)


# ---- one op with a symbolic kernel size (torch.compile) ---------------------------------

def _elastic_symbolic(x, weight, kernel_size, ks_list, transform_matrices, stride, dilation, op):
    # what does not depend on the kernel size is checked here, the rest when the op runs
    if weight.dim() != 4 or max(ks_list) != weight.shape[-1]:
        raise ValueError(f"{op}: the largest kernel size {max(ks_list)} of {sorted(set(ks_list))} "
                         f"does not match the weight's shape {tuple(weight.shape)}")
    full_chain = sorted(set(ks_list), reverse=True)
    mats = [] if transform_matrices is None else _chain_matrices(op, transform_matrices,
                                                                full_chain)
    return torch.ops.ofa_fast.elastic_dwconv2d(x, weight, mats, full_chain, kernel_size, stride,
                                               dilation)


def _active_filter(x, weight, matrices, ks_list, kernel_size):
    """(filter, chain, matrices used) of the active kernel size, concrete values."""
    chain = transform_chain(ks_list, kernel_size)
    if kernel_size not in ks_list:
        raise ValueError(f"ofa_fast::elastic_dwconv2d: kernel_size {kernel_size} is not in "
                         f"kernel_size_list {sorted(set(ks_list))}")
    if matrices and len(matrices) != len(set(ks_list)) - 1:
        raise ValueError(f"ofa_fast::elastic_dwconv2d: {len(matrices)} transform matrices for "
                         f"kernel_size_list {sorted(set(ks_list))}; expected "
                         f"{len(set(ks_list)) - 1} or none")
    used = list(matrices[:len(chain) - 1]) if matrices else []
    if not used:
        return weight, chain, used
    return kernel_transform(weight, used, chain, x.shape[1]), chain, used


def _no_autocast(x):
    # the op computes in x's dtype: under autocast (x in half precision) the filter is
    # cast to it, as autocast casts a conv's weight, and its gradient cast back
    return torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") \
        else contextlib.nullcontext()


@torch.library.custom_op("ofa_fast::elastic_dwconv2d", mutates_args=())
def _elastic_op(x: torch.Tensor, weight: torch.Tensor, matrices: list[torch.Tensor],
                kernel_size_list: list[int], kernel_size: int, stride: int,
                dilation: int) -> torch.Tensor:
    with _no_autocast(x):
        filters, _, _ = _active_filter(x, weight, matrices, kernel_size_list, kernel_size)
        return dwconv2d(x, filters.to(x.dtype), kernel_size, stride, dilation, kernel_size // 2)


@_elastic_op.register_fake
def _(x, weight, matrices, kernel_size_list, kernel_size, stride, dilation):
    N, C, H, W = x.shape
    if dilation == 1:  # odd k, padding k // 2: the size does not depend on k
        OH, OW = (H - 1) // stride + 1, (W - 1) // stride + 1
    else:
        OH = conv_out_size(H, kernel_size, stride, dilation, kernel_size // 2)
        OW = conv_out_size(W, kernel_size, stride, dilation, kernel_size // 2)
    return torch.empty((N, C, OH, OW), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


@torch.library.custom_op("ofa_fast::elastic_dwconv2d_backward", mutates_args=())
def _elastic_backward_op(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         matrices: list[torch.Tensor], kernel_size_list: list[int],
                         kernel_size: int, stride: int, dilation: int,
                         output_mask: list[bool]) -> list[torch.Tensor]:
    """[grad x, grad weight, grad of each matrix]; a masked-off gradient is empty, a
    matrix the active kernel size does not use gets zeros."""
    need_x, need_w, need_m = output_mask
    with _no_autocast(x):
        filters, chain, used = _active_filter(x, weight, matrices, kernel_size_list, kernel_size)
        gx, gf = dwconv2d_backward(grad_output, x, filters.to(x.dtype), kernel_size, stride,
                                   dilation, kernel_size // 2,
                                   (need_x, need_w or (need_m and bool(used))))
        gf = None if gf is None else gf.to(weight.dtype)
        gw, gm = gf, []
        if used and gf is not None:
            gw, *gm = kernel_transform_backward(gf, weight, used, chain, x.shape[1])
    empty = x.new_empty((0,))
    grads = [gx if need_x else empty, gw if need_w else empty]
    if need_m:
        grads += gm + [torch.zeros_like(m) for m in matrices[len(gm):]]
    else:
        grads += [empty] * len(matrices)
    return grads


@_elastic_backward_op.register_fake
def _(grad_output, x, weight, matrices, kernel_size_list, kernel_size, stride, dilation,
      output_mask):
    need_x, need_w, need_m = output_mask
    empty = x.new_empty((0,))
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                     memory_format=output_memory_format(x)) if need_x else empty
    return [gx, weight.new_empty(weight.shape) if need_w else empty] + [
        m.new_empty(m.shape) if need_m else empty for m in matrices]


def _setup_context(ctx, inputs, output):
    x, weight, matrices, kernel_size_list, kernel_size, stride, dilation = inputs
    ctx.save_for_backward(x, weight, *matrices)
    ctx.conf = (list(kernel_size_list), kernel_size, stride, dilation)


def _backward(ctx, grad_output):
    x, weight, *matrices = ctx.saved_tensors
    need_m = any(m.requires_grad for m in matrices)
    mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]), need_m]
    grads = torch.ops.ofa_fast.elastic_dwconv2d_backward(grad_output, x, weight, matrices,
                                                         *ctx.conf, mask)
    gx, gw, gm = grads[0], grads[1], list(grads[2:])
    return (gx if mask[0] else None, gw if mask[1] else None,
            gm if need_m else [None] * len(matrices), None, None, None, None)


_elastic_op.register_autograd(_backward, setup_context=_setup_context)

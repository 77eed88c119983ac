"""OFA's kernel-transform chain: the small filter of an active kernel size.

    kernel_transform(weight [C_max, 1, K, K], matrices, ks_chain, channels)
        -> filter [channels, 1, k, k]

ks_chain = [K, ..., k] walks down the sorted kernel-size list; step q crops the
current filter to its centre ks_chain[q+1] window, flattens it and multiplies by the
transposed matrices[q] (OFA's "<a>to<b>_matrix"). The max weight and the matrices are
read in place; the transformed filter (C * k * k values) is the only thing written.
Gradients flow to the full max weight (zero outside the active crop) and to every
matrix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _ext, backend

__all__ = ["kernel_transform", "kernel_transform_backward", "kernel_transform_reference",
           "check_kernel_transform_args"]


def check_kernel_transform_args(weight, matrices, ks_chain, channels,
                                op="ofa_fast.kernel_transform"):
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{op}: weight must be [C_max, 1, K, K], got shape {tuple(weight.shape)}")
    chain = list(ks_chain)
    if len(chain) < 2 or chain[0] != weight.shape[2]:
        raise ValueError(f"{op}: ks_chain {chain} must hold at least two kernel sizes and start "
                         f"at the weight's K = {weight.shape[2]}")
    if any(b >= a for a, b in zip(chain, chain[1:])) or any(s < 1 or s % 2 == 0 for s in chain):
        raise ValueError(f"{op}: ks_chain {chain} must be strictly decreasing odd kernel sizes")
    if len(matrices) != len(chain) - 1:
        raise ValueError(f"{op}: ks_chain {chain} has {len(chain) - 1} steps but "
                         f"{len(matrices)} transform matrices were given")
    for a, b, M in zip(chain, chain[1:], matrices):
        if tuple(M.shape) != (b * b, b * b):
            raise ValueError(f"{op}: the {a}to{b} transform matrix must be [{b * b}, {b * b}], "
                             f"got shape {tuple(M.shape)}")
        if M.device != weight.device or M.dtype != weight.dtype:
            raise ValueError(f"{op}: the {a}to{b} transform matrix is {M.dtype} on {M.device}; "
                             f"it must match the weight ({weight.dtype} on {weight.device})")
    if not 1 <= channels <= weight.shape[0]:
        raise ValueError(f"{op}: channels = {channels} must be between 1 and {weight.shape[0]} "
                         "(the weight's max channels)")


def kernel_transform_reference(weight, matrices, ks_chain, channels):
    """The specification: OFA's get_active_filter, step by step."""
    f = weight[:channels]
    for src, dst, M in zip(ks_chain, ks_chain[1:], matrices):
        start = src // 2 - dst // 2
        f = f[:, :, start:start + dst, start:start + dst].contiguous()
        f = F.linear(f.view(channels, dst * dst), M).view(channels, 1, dst, dst)
    return f


def _fake_forward(weight, matrices, ks_chain, channels):
    k = ks_chain[-1]
    return weight.new_empty((channels, 1, k, k))


def _fake_backward(grad, weight, matrices, ks_chain, channels):
    return [weight.new_empty(weight.shape)] + [M.new_empty(M.shape) for M in matrices]


def _register_autograd(name, backward_op):
    def setup_context(ctx, inputs, output):
        weight, matrices, ks_chain, channels = inputs
        ctx.save_for_backward(weight, *matrices)
        ctx.conf = (list(ks_chain), channels)

    def backward(ctx, grad):
        weight, *matrices = ctx.saved_tensors
        grads = backward_op(grad.contiguous(), weight, matrices, *ctx.conf)
        return grads[0], list(grads[1:]), None, None

    torch.library.register_autograd(name, backward, setup_context=setup_context)


if _ext.has_cpu_kernels():
    # (its autograd is in C++: csrc/autograd/autograd.cpp)
    torch.library.register_fake("ofa_fast::kernel_transform")(_fake_forward)
    torch.library.register_fake("ofa_fast::kernel_transform_backward")(_fake_backward)


def _register_triton():
    """ofa_fast::kernel_transform_triton (+ backward) via torch.library.triton_op."""
    # bare names: triton_op reads this source to find the kernels it launches
    from ..triton_kernels.kernel_transform import kernel_transform_backward, kernel_transform_forward

    @torch.library.triton_op("ofa_fast::kernel_transform_triton", mutates_args=())
    def kernel_transform_triton(weight: torch.Tensor, matrices: list[torch.Tensor],
                                ks_chain: list[int], channels: int) -> torch.Tensor:
        return kernel_transform_forward(weight, matrices, ks_chain, channels)

    @torch.library.triton_op("ofa_fast::kernel_transform_triton_backward", mutates_args=())
    def kernel_transform_triton_backward(grad: torch.Tensor, weight: torch.Tensor,
                                         matrices: list[torch.Tensor], ks_chain: list[int],
                                         channels: int) -> list[torch.Tensor]:
        return kernel_transform_backward(grad, weight, matrices, ks_chain, channels)

    _register_autograd("ofa_fast::kernel_transform_triton", kernel_transform_triton_backward)


_IMPLS = {
    "reference": kernel_transform_reference,
    "cpu": lambda *a: torch.ops.ofa_fast.kernel_transform(*a),
    "cuda": lambda *a: torch.ops.ofa_fast.kernel_transform(*a),
    "triton": lambda *a: torch.ops.ofa_fast.kernel_transform_triton(*a),
}


def kernel_transform(weight, matrices, ks_chain, channels):
    """The transformed [channels, 1, k, k] filter (k = ks_chain[-1])."""
    matrices = list(matrices)
    ks_chain = [int(s) for s in ks_chain]
    check_kernel_transform_args(weight, matrices, ks_chain, channels)
    name = backend.resolve(weight.device.type, weight.dtype)
    return _IMPLS[name](weight, matrices, ks_chain, channels)


def _backward_reference(grad, weight, matrices, ks_chain, channels):
    """kernel_transform_reference's backward, step by step in reverse."""
    flats, f = [], weight[:channels]
    for src, dst, M in zip(ks_chain, ks_chain[1:], matrices):
        start = src // 2 - dst // 2
        flats.append(f[:, :, start:start + dst, start:start + dst].reshape(channels, dst * dst))
        f = F.linear(flats[-1], M).view(channels, 1, dst, dst)
    g = grad.reshape(channels, -1)
    grad_mats = [None] * len(matrices)
    for q in reversed(range(len(matrices))):
        src, dst = ks_chain[q], ks_chain[q + 1]
        grad_mats[q] = g.t() @ flats[q]  # out = in @ M^T
        start = src // 2 - dst // 2
        g_src = g.new_zeros((channels, 1, src, src))
        g_src[:, :, start:start + dst, start:start + dst] = (g @ matrices[q]).view(channels, 1, dst, dst)
        g = g_src.reshape(channels, src * src)
    grad_weight = torch.zeros_like(weight)
    grad_weight[:channels] = g.view(channels, 1, ks_chain[0], ks_chain[0])
    return [grad_weight] + grad_mats


_BACKWARD = {
    "reference": _backward_reference,
    "cpu": lambda *a: torch.ops.ofa_fast.kernel_transform_backward(*a),
    "cuda": lambda *a: torch.ops.ofa_fast.kernel_transform_backward(*a),
    "triton": lambda *a: torch.ops.ofa_fast.kernel_transform_triton_backward(*a),
}


def kernel_transform_backward(grad, weight, matrices, ks_chain, channels):
    """[grad of the full max weight, grad of each matrix] of kernel_transform, without
    autograd, on the backend kernel_transform picks."""
    matrices = list(matrices)
    ks_chain = [int(s) for s in ks_chain]
    name = backend.resolve(weight.device.type, weight.dtype)
    return list(_BACKWARD[name](grad.contiguous(), weight, matrices, ks_chain, channels))

"""Triton kernels of OFA's kernel-transform chain.

ks_chain = [K, ..., k]; step q maps the ks[q] x ks[q] filter f_q of every channel to

    f_{q+1}[c, r] = sum_e crop(f_q)[c, e] * M_q[r, e]      (r, e < ks[q+1]^2)

where crop takes the centre ks[q+1] window (offset ks[q]//2 - ks[q+1]//2), flattened
row-major. f_0 is the max weight, read in place through its strides; the later f_q are
small fp32 tensors (C * ks[q]^2 values), so the chain keeps full precision and only
the final filter is rounded to the weight's dtype. One launch per step: the work is
tiny (C * k^4 multiply-adds), what matters is touching nothing but the active crop.

Backward, per step from the last: grad M_q[r, e] = sum_c g_{q+1}[c, r] * crop(f_q)[c, e]
(a reduction over channels, in a fixed order) and g_q[c, crop_pos(e)] =
sum_r g_{q+1}[c, r] * M_q[r, e], zero outside the crop; g_0 lands in
grad_weight[:C, 0] (zeros elsewhere). Forward intermediates are recomputed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launcher as _launcher
from ._common import np2 as _np2
from ._common import tracing_under_interpreter as _tracing_under_interpreter


__all__ = ["kernel_transform_forward", "kernel_transform_backward"]

_BLOCK_C = 16
_MAX_BLOCK = 32  # rows / columns of a matrix block (a 5x5 step's 25 fits one)
_MAX_BLOCK_K = 16  # reduction-dim block: keeps the 3-D product tile at 8K elements


def _filter_strides(t: torch.Tensor):
    """(channel, row, column) strides of a [C, 1, s, s] filter or a [C, s, s] one."""
    if t.dim() == 4:
        return t.stride(0), t.stride(2), t.stride(3)
    return t.stride(0), t.stride(1), t.stride(2)


@triton.jit
def _transform_step_kernel(
    src_ptr, mat_ptr, dst_ptr,
    C,
    stride_sc, stride_sh, stride_sw,
    stride_mr, stride_me,
    stride_dc, stride_dh, stride_dw,
    SRC: tl.constexpr, DST: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """dst[c, r] = sum_e src[c, crop_pos(e)] * M[r, e] for a [BLOCK_C, BLOCK_R] block."""
    pid_c = tl.program_id(0)
    pid_r = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = r < DST * DST
    off: tl.constexpr = SRC // 2 - DST // 2

    acc = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    for e0 in tl.static_range(0, DST * DST, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        e_mask = e < DST * DST
        f_off = (c * stride_sc)[:, None] + ((e // DST + off) * stride_sh
                                            + (e % DST + off) * stride_sw)[None, :]
        f = tl.load(src_ptr + f_off, mask=c_mask[:, None] & e_mask[None, :], other=0.0)
        m = tl.load(mat_ptr + (r * stride_mr)[:, None] + (e * stride_me)[None, :],
                    mask=r_mask[:, None] & e_mask[None, :], other=0.0)
        acc += tl.sum(f.to(tl.float32)[:, None, :] * m.to(tl.float32)[None, :, :], axis=2)

    d_off = (c * stride_dc)[:, None] + ((r // DST) * stride_dh + (r % DST) * stride_dw)[None, :]
    tl.store(dst_ptr + d_off, acc.to(dst_ptr.dtype.element_ty),
             mask=c_mask[:, None] & r_mask[None, :])


@triton.jit
def _transform_step_backward_kernel(
    g_ptr, mat_ptr, out_ptr,
    C,
    stride_gc, stride_gh, stride_gw,
    stride_mr, stride_me,
    stride_oc, stride_oh, stride_ow,
    SRC: tl.constexpr, DST: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """out[c, u] (u over the whole SRC x SRC grid) = sum_r g[c, r] * M[r, e(u)] where u
    is the crop position of e, else 0: every grid position is written, so the output
    needs no zero fill."""
    pid_c = tl.program_id(0)
    pid_u = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    u = pid_u * BLOCK_U + tl.arange(0, BLOCK_U)
    u_mask = u < SRC * SRC
    off: tl.constexpr = SRC // 2 - DST // 2
    uh = u // SRC - off
    uw = u % SRC - off
    in_crop = u_mask & (uh >= 0) & (uh < DST) & (uw >= 0) & (uw < DST)
    e = uh * DST + uw

    acc = tl.zeros([BLOCK_C, BLOCK_U], dtype=tl.float32)
    for r0 in tl.static_range(0, DST * DST, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < DST * DST
        g_off = (c * stride_gc)[:, None] + ((r // DST) * stride_gh + (r % DST) * stride_gw)[None, :]
        g = tl.load(g_ptr + g_off, mask=c_mask[:, None] & r_mask[None, :], other=0.0)
        m = tl.load(mat_ptr + (e * stride_me)[:, None] + (r * stride_mr)[None, :],
                    mask=in_crop[:, None] & r_mask[None, :], other=0.0)
        acc += tl.sum(g.to(tl.float32)[:, None, :] * m.to(tl.float32)[None, :, :], axis=2)

    o_off = (c * stride_oc)[:, None] + ((u // SRC) * stride_oh + (u % SRC) * stride_ow)[None, :]
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty),
             mask=c_mask[:, None] & u_mask[None, :])


@triton.jit
def _transform_matrix_grad_kernel(
    g_ptr, src_ptr, gm_ptr,
    C,
    stride_gc, stride_gh, stride_gw,
    stride_sc, stride_sh, stride_sw,
    stride_mr, stride_me,
    SRC: tl.constexpr, DST: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """gM[r, e] = sum_c g[c, r] * src[c, crop_pos(e)] for a [BLOCK_R, BLOCK_E] block,
    one program looping over all channels (a fixed order: deterministic)."""
    pid_r = tl.program_id(0)
    pid_e = tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = r < DST * DST
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    e_mask = e < DST * DST
    off: tl.constexpr = SRC // 2 - DST // 2
    g_pos = (r // DST) * stride_gh + (r % DST) * stride_gw
    s_pos = (e // DST + off) * stride_sh + (e % DST + off) * stride_sw

    acc = tl.zeros([BLOCK_C, BLOCK_R, BLOCK_E], dtype=tl.float32)
    for c0 in tl.range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_mask = c < C
        g = tl.load(g_ptr + (c * stride_gc)[:, None] + g_pos[None, :],
                    mask=c_mask[:, None] & r_mask[None, :], other=0.0)
        f = tl.load(src_ptr + (c * stride_sc)[:, None] + s_pos[None, :],
                    mask=c_mask[:, None] & e_mask[None, :], other=0.0)
        acc += g.to(tl.float32)[:, :, None] * f.to(tl.float32)[:, None, :]

    gm = tl.sum(acc, axis=0)
    tl.store(gm_ptr + (r * stride_mr)[:, None] + (e * stride_me)[None, :],
             gm.to(gm_ptr.dtype.element_ty), mask=r_mask[:, None] & e_mask[None, :])


def _step(src, mat, dst, src_size, dst_size, channels):
    """dst = one forward step of src (both [C, (1,) s, s] views read/written by strides)."""
    area = dst_size * dst_size
    block_r = min(_np2(area), _MAX_BLOCK)
    block_e = min(_np2(area), _MAX_BLOCK_K)
    grid = (triton.cdiv(channels, _BLOCK_C), triton.cdiv(area, block_r))
    if _tracing_under_interpreter(src, mat, dst):
        return
    _launcher(_transform_step_kernel)[grid](
        src, mat, dst,
        channels,
        *_filter_strides(src),
        mat.stride(0), mat.stride(1),
        *_filter_strides(dst),
        SRC=src_size, DST=dst_size,
        BLOCK_C=_BLOCK_C, BLOCK_R=block_r, BLOCK_E=block_e,
        num_warps=4,
    )


def _forward_chain(weight, matrices, ks_chain, channels, keep_last):
    """[f_0 (= weight), f_1, ..., f_m]; intermediates fp32 [C, s, s]. keep_last=False
    stops before the final step (the backward needs only f_0 .. f_{m-1})."""
    filters = [weight]
    steps = len(ks_chain) - 1
    for q in range(steps if keep_last else steps - 1):
        src_size, dst_size = ks_chain[q], ks_chain[q + 1]
        if q == steps - 1:
            dst = weight.new_empty((channels, 1, dst_size, dst_size))
        else:
            dst = torch.empty((channels, dst_size, dst_size), dtype=torch.float32,
                              device=weight.device)
        _step(filters[-1], matrices[q], dst, src_size, dst_size, channels)
        filters.append(dst)
    return filters


def kernel_transform_forward(weight, matrices, ks_chain, channels):
    ks_chain = [int(s) for s in ks_chain]
    return _forward_chain(weight, list(matrices), ks_chain, channels, keep_last=True)[-1]


def kernel_transform_backward(grad, weight, matrices, ks_chain, channels):
    matrices = list(matrices)
    ks_chain = [int(s) for s in ks_chain]
    filters = _forward_chain(weight, matrices, ks_chain, channels, keep_last=False)
    grad_weight = weight.new_zeros(weight.shape)
    grad_matrices = [torch.empty_like(m, memory_format=torch.contiguous_format) for m in matrices]
    if _tracing_under_interpreter(grad, weight, *matrices):
        return [grad_weight] + grad_matrices
    g = grad  # g_{q+1}: [C, 1, k, k] first, then fp32 [C, s, s]
    for q in reversed(range(len(matrices))):
        src_size, dst_size = ks_chain[q], ks_chain[q + 1]
        area = dst_size * dst_size
        mat, f = matrices[q], filters[q]

        gm = grad_matrices[q]
        block_r = min(_np2(area), _MAX_BLOCK)
        block_e = min(_np2(area), _MAX_BLOCK_K)
        grid = (triton.cdiv(area, block_r), triton.cdiv(area, block_e))
        _launcher(_transform_matrix_grad_kernel)[grid](
            g, f, gm,
            channels,
            *_filter_strides(g),
            *_filter_strides(f),
            gm.stride(0), gm.stride(1),
            SRC=src_size, DST=dst_size,
            BLOCK_C=_BLOCK_C, BLOCK_R=block_r, BLOCK_E=block_e,
            num_warps=4,
        )

        # g_q: into grad_weight[:C] for the first step (its other channels stay zero)
        if q == 0:
            g_prev = grad_weight
        else:
            g_prev = torch.empty((channels, src_size, src_size), dtype=torch.float32,
                                 device=weight.device)
        src_area = src_size * src_size
        block_u = min(_np2(src_area), _MAX_BLOCK)
        block_k = min(_np2(area), _MAX_BLOCK_K)
        grid = (triton.cdiv(channels, _BLOCK_C), triton.cdiv(src_area, block_u))
        _launcher(_transform_step_backward_kernel)[grid](
            g, mat, g_prev,
            channels,
            *_filter_strides(g),
            mat.stride(0), mat.stride(1),
            *_filter_strides(g_prev),
            SRC=src_size, DST=dst_size,
            BLOCK_C=_BLOCK_C, BLOCK_U=block_u, BLOCK_R=block_k,
            num_warps=4,
        )
        g = g_prev
    return [grad_weight] + grad_matrices

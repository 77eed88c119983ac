"""Triton kernels of the elastic depthwise convolution.

    y[n, c, oh, ow] = sum_{i, j < k} x[n, c, oh*s - p + i*d, ow*s - p + j*d]
                                     * weight[c, 0, crop + i, crop + j]

with crop = K//2 - k//2: the active k x k filter is read in place from the max weight
[C_max, 1, K, K] through its strides. Every kernel reads its tensors through their
strides too, so one kernel serves NCHW, channels_last and any other view (an
expanded grad_output, a channel slice); only the tile shape follows the layout: wide
along W for NCHW, wide along C for channels_last, so loads coalesce on the unit-stride
dim (and vectorise along C). Kernel size, stride and dilation are constexpr, so the
taps unroll. Accumulation is in float32; results are stored in the input dtype.

With the taps' reads hitting cache, the cost is instructions per tap and element
(address, bounds mask, load, FMA): tiles whose every tap reads inside the image take
a path without bounds masks, and a tap's shift is added to a pointer tile computed
once.

The host functions are called inside torch.library.triton_op bodies
(ofa_fast/ops/dwconv.py): they launch through wrap_triton and use torch ops only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launcher as _launcher
from ._common import np2 as _np2
from ._common import tracing_under_interpreter as _tracing_under_interpreter

from ..ops._common import conv_out_size, output_memory_format

__all__ = ["dwconv2d_forward", "dwconv2d_backward_input", "dwconv2d_backward_weight"]

# Program tiles of the forward / input-gradient kernels: NCHW, 1024 elements (8 per
# thread at 4 warps); channels_last, 4096 at 8 warps, so each thread holds 16-byte
# channel vectors at a few positions and its per-tap filter loads (one per channel it
# holds: the filter is strided along C) are shared by those positions. (16 elements a
# thread is what fits the 49 unrolled taps without spilling registers.)
_NCHW_TILE = 1024
_NHWC_TILE = 4096
_NHWC_WARPS = 8
_NCHW_MAX_BLOCK_W = 64
_NHWC_MAX_BLOCK_C = 64
# Weight gradient, NCHW: elements of one [images, rows, cols] tile of a channel; each
# tap's products are summed over the whole tile, so large tiles amortise the reduction.
_WGRAD_NCHW_TILE = 4096
# Weight gradient, channels_last: channels per program, the programs to aim for (a few
# waves of an H100's 132 SMs), and the fewest output rows one program sums (so the
# fp32 partials stay a small fraction of the traffic).
_WGRAD_NHWC_MAX_BLOCK_C = 64
_WGRAD_PROGRAMS = 528
_WGRAD_MIN_ROWS = 16


def _is_channels_last(x: torch.Tensor) -> bool:
    return output_memory_format(x) == torch.channels_last


def _rows_block(n: int, limit: int, fill: int) -> int:
    """A power-of-two block of at most `limit` rows for an extent of n. The largest
    power of two dividing n (56 -> 8, 28 -> 4) leaves no padded rows, when the tile's
    other dim can still grow by `fill` to make up its size; else the whole extent
    (padded to a power of two) or `limit`."""
    full = _np2(n) if n <= limit else limit
    b = 1
    while b * 2 <= limit and n % (b * 2) == 0:
        b *= 2
    return b if b * fill >= full else full


def _tile_shape(C: int, H: int, W: int, channels_last: bool):
    """(BLOCK_C, BLOCK_H, BLOCK_W, num_warps) of a tile over a [C, H, W] plane stack."""
    if channels_last:
        # C is the unit-stride dim: a wide channel block, a square-ish spatial patch.
        block_c = min(_np2(C), _NHWC_MAX_BLOCK_C)
        spatial = max(1, _NHWC_TILE // block_c)
        block_w = min(_np2(W), max(1, triton.next_power_of_2(int(spatial ** 0.5))))
        block_h = _rows_block(H, max(1, spatial // block_w), 1)
        block_w = min(_np2(W), max(1, spatial // block_h))
        return block_c, block_h, block_w, _NHWC_WARPS
    # W is the unit-stride dim: a wide row block, stacked rows, then channels
    # when the planes are small (7x7, 14x14) so a tile still has _NCHW_TILE elements.
    block_w = min(_np2(W), _NCHW_MAX_BLOCK_W)
    block_h = _rows_block(H, max(1, _NCHW_TILE // block_w), _np2(C))
    block_c = min(_np2(C), max(1, _NCHW_TILE // (block_h * block_w)))
    return block_c, block_h, block_w, 4


def _strides4(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


# ---- shared device helpers ----------------------------------------------------------

@triton.jit
def _window_inside(lo0, block, step, taps_span, size):
    """Scalar: the coordinates lo0 + step * [0, block) + [0, taps_span) all lie in
    [0, size)."""
    return (lo0 >= 0) & (lo0 + (block - 1) * step + taps_span < size)


@triton.jit
def _filter_taps(src_tile, w_tap0, c_mask, h0, w0, H, W, stride_h, stride_w,
                 stride_wh, stride_ww,
                 KSIZE: tl.constexpr, DILATION: tl.constexpr, SIGN: tl.constexpr,
                 MASKED: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """sum over taps (i, j) of src[h0 + SIGN*i*d, w0 + SIGN*j*d] * filter[c, i, j] for a
    [BLOCK_C, BLOCK_H, BLOCK_W] tile; src_tile points at (h0, w0). A tap is one constant
    shift of src_tile. MASKED: zero outside [0, H) x [0, W); else every read is inside
    and lanes of channels >= C are left undefined (their outputs are never stored),
    which saves zeroing registers before each load."""
    acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=tl.float32)
    for i in tl.static_range(KSIZE):
        src_row = src_tile + (SIGN * i * DILATION) * stride_h
        if MASKED:
            hh = h0 + SIGN * i * DILATION
            h_ok = (hh >= 0) & (hh < H)
        for j in tl.static_range(KSIZE):
            w_tap = w_tap0 + i * stride_wh + j * stride_ww
            src_tap = src_row + (SIGN * j * DILATION) * stride_w
            if MASKED:
                ww = w0 + SIGN * j * DILATION
                ok = (c_mask[:, None, None] & h_ok[None, :, None]
                      & ((ww >= 0) & (ww < W))[None, None, :])
                wv = tl.load(w_tap, mask=c_mask, other=0.0)
                xv = tl.load(src_tap, mask=ok, other=0.0)
            else:
                wv = tl.load(w_tap, mask=c_mask)
                xv = tl.load(src_tap, mask=c_mask[:, None, None])
            acc += xv.to(tl.float32) * wv.to(tl.float32)[:, None, None]
    return acc


# ---- forward ---------------------------------------------------------------------

@triton.jit
def _dwconv_fwd_kernel(
    x_ptr, w_ptr, y_ptr,
    C, H, W, OH, OW, padding, crop,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wc, stride_wh, stride_ww,
    stride_yn, stride_yc, stride_yh, stride_yw,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, DILATION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One program: a [BLOCK_C, BLOCK_H, BLOCK_W] tile of outputs of image n. The k*k
    taps are unrolled; each loads the shifted input tile (the overlap between taps
    hits in cache, so the input comes from HBM about once per tile)."""
    pid_hw = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)  # n * stride_xn can pass 2^31 on big batches
    tiles_w = tl.cdiv(OW, BLOCK_W)
    oh0 = (pid_hw // tiles_w) * BLOCK_H
    ow0 = (pid_hw % tiles_w) * BLOCK_W
    oh = oh0 + tl.arange(0, BLOCK_H)
    ow = ow0 + tl.arange(0, BLOCK_W)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    ih0 = oh * STRIDE - padding
    iw0 = ow * STRIDE - padding

    x_tile = (x_ptr + n * stride_xn + (c * stride_xc)[:, None, None]
              + (ih0 * stride_xh)[None, :, None] + (iw0 * stride_xw)[None, None, :])
    w_tap0 = w_ptr + c * stride_wc + crop * stride_wh + crop * stride_ww
    span = (KSIZE - 1) * DILATION
    inside = (_window_inside(oh0 * STRIDE - padding, BLOCK_H, STRIDE, span, H)
              & _window_inside(ow0 * STRIDE - padding, BLOCK_W, STRIDE, span, W))
    if inside:
        acc = _filter_taps(x_tile, w_tap0, c_mask, ih0, iw0, H, W, stride_xh, stride_xw,
                           stride_wh, stride_ww, KSIZE, DILATION, 1, False,
                           BLOCK_C, BLOCK_H, BLOCK_W)
    else:
        acc = _filter_taps(x_tile, w_tap0, c_mask, ih0, iw0, H, W, stride_xh, stride_xw,
                           stride_wh, stride_ww, KSIZE, DILATION, 1, True,
                           BLOCK_C, BLOCK_H, BLOCK_W)

    y_off = (n * stride_yn + (c * stride_yc)[:, None, None] + (oh * stride_yh)[None, :, None]
             + (ow * stride_yw)[None, None, :])
    y_mask = c_mask[:, None, None] & (oh < OH)[None, :, None] & (ow < OW)[None, None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


def dwconv2d_forward(x, weight, kernel_size, stride, dilation, padding):
    N, C, H, W = x.shape
    OH = conv_out_size(H, kernel_size, stride, dilation, padding)
    OW = conv_out_size(W, kernel_size, stride, dilation, padding)
    channels_last = _is_channels_last(x)
    y = torch.empty((N, C, OH, OW), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if y.numel() == 0 or _tracing_under_interpreter(x, weight, y):
        return y
    crop = weight.shape[2] // 2 - kernel_size // 2
    block_c, block_h, block_w, num_warps = _tile_shape(C, OH, OW, channels_last)
    grid = (triton.cdiv(OH, block_h) * triton.cdiv(OW, block_w), triton.cdiv(C, block_c), N)
    _launcher(_dwconv_fwd_kernel)[grid](
        x, weight, y,
        C, H, W, OH, OW, padding, crop,
        *_strides4(x),
        weight.stride(0), weight.stride(2), weight.stride(3),
        *_strides4(y),
        KSIZE=kernel_size, STRIDE=stride, DILATION=dilation,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w,
        num_warps=num_warps,
    )
    return y


# ---- gradient of the input -------------------------------------------------------

@triton.jit
def _dwconv_bwd_input_kernel(
    go_ptr, w_ptr, gx_ptr,
    C, H, W, OH, OW, padding, crop,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_wc, stride_wh, stride_ww,
    stride_xn, stride_xc, stride_xh, stride_xw,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, DILATION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One program: a [BLOCK_C, BLOCK_H, BLOCK_W] tile of grad_x of image n, gathered
    (no atomics): input ih gets tap i from output (ih + p - i*d) / s when that is a
    whole number inside the output. Stride 1 is the forward's correlation with the
    flipped shifts."""
    pid_hw = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    tiles_w = tl.cdiv(W, BLOCK_W)
    ih_start = (pid_hw // tiles_w) * BLOCK_H
    iw_start = (pid_hw % tiles_w) * BLOCK_W
    ih = ih_start + tl.arange(0, BLOCK_H)
    iw = iw_start + tl.arange(0, BLOCK_W)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    go_chan = go_ptr + n * stride_gn + (c * stride_gc)[:, None, None]
    w_tap0 = w_ptr + c * stride_wc + crop * stride_wh + crop * stride_ww

    if STRIDE == 1:
        # output (ih + p - i*d, iw + p - j*d) through tap (i, j)
        oh0 = ih + padding
        ow0 = iw + padding
        go_tile = go_chan + (oh0 * stride_gh)[None, :, None] + (ow0 * stride_gw)[None, None, :]
        span = (KSIZE - 1) * DILATION
        inside = (_window_inside(ih_start + padding - span, BLOCK_H, 1, span, OH)
                  & _window_inside(iw_start + padding - span, BLOCK_W, 1, span, OW))
        if inside:
            acc = _filter_taps(go_tile, w_tap0, c_mask, oh0, ow0, OH, OW, stride_gh, stride_gw,
                               stride_wh, stride_ww, KSIZE, DILATION, -1, False,
                               BLOCK_C, BLOCK_H, BLOCK_W)
        else:
            acc = _filter_taps(go_tile, w_tap0, c_mask, oh0, ow0, OH, OW, stride_gh, stride_gw,
                               stride_wh, stride_ww, KSIZE, DILATION, -1, True,
                               BLOCK_C, BLOCK_H, BLOCK_W)
    else:
        acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=tl.float32)
        for i in tl.static_range(KSIZE):
            qh = ih + padding - i * DILATION
            # qh < 0 is masked, so C-style (truncating) division is never observed
            oh = qh // STRIDE
            h_ok = (qh >= 0) & (qh % STRIDE == 0) & (oh < OH)
            row = go_chan + (oh * stride_gh)[None, :, None]
            for j in tl.static_range(KSIZE):
                qw = iw + padding - j * DILATION
                ow = qw // STRIDE
                w_ok = (qw >= 0) & (qw % STRIDE == 0) & (ow < OW)
                mask = c_mask[:, None, None] & h_ok[None, :, None] & w_ok[None, None, :]
                gv = tl.load(row + (ow * stride_gw)[None, None, :], mask=mask, other=0.0)
                wv = tl.load(w_tap0 + i * stride_wh + j * stride_ww, mask=c_mask, other=0.0)
                acc += gv.to(tl.float32) * wv.to(tl.float32)[:, None, None]

    gx_off = (n * stride_xn + (c * stride_xc)[:, None, None] + (ih * stride_xh)[None, :, None]
              + (iw * stride_xw)[None, None, :])
    gx_mask = c_mask[:, None, None] & (ih < H)[None, :, None] & (iw < W)[None, None, :]
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=gx_mask)


def dwconv2d_backward_input(grad_output, x, weight, kernel_size, stride, dilation, padding):
    N, C, H, W = x.shape
    OH, OW = grad_output.shape[2], grad_output.shape[3]
    channels_last = _is_channels_last(x)
    gx = torch.empty((N, C, H, W), dtype=x.dtype, device=x.device,
                     memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if gx.numel() == 0 or _tracing_under_interpreter(grad_output, weight, gx):
        return gx
    crop = weight.shape[2] // 2 - kernel_size // 2
    block_c, block_h, block_w, num_warps = _tile_shape(C, H, W, channels_last)
    grid = (triton.cdiv(H, block_h) * triton.cdiv(W, block_w), triton.cdiv(C, block_c), N)
    _launcher(_dwconv_bwd_input_kernel)[grid](
        grad_output, weight, gx,
        C, H, W, OH, OW, padding, crop,
        *_strides4(grad_output),
        weight.stride(0), weight.stride(2), weight.stride(3),
        *_strides4(gx),
        KSIZE=kernel_size, STRIDE=stride, DILATION=dilation,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w,
        num_warps=num_warps,
    )
    return gx


# ---- gradient of the weight ------------------------------------------------------
# Two kernels write fp32 partial sums part[program, tap, c]; a third sums them in a
# fixed order (deterministic) into the active crop of grad_weight.

@triton.jit
def _wgrad_tile_taps(go, x_tile, part_tap0, part_stride_tap, ih0, iw0, H, W,
                     stride_xh, stride_xw,
                     KSIZE: tl.constexpr, DILATION: tl.constexpr, MASKED: tl.constexpr):
    """For each tap: sum of go * (x shifted by the tap) over the whole tile, stored to
    part_tap0 + tap * part_stride_tap."""
    for i in tl.static_range(KSIZE):
        x_row = x_tile + (i * DILATION) * stride_xh
        if MASKED:
            hh = ih0 + i * DILATION
            h_ok = (hh >= 0) & (hh < H)
        for j in tl.static_range(KSIZE):
            if MASKED:
                ww = iw0 + j * DILATION
                ok = h_ok[None, :, None] & ((ww >= 0) & (ww < W))[None, None, :]
                xv = tl.load(x_row + (j * DILATION) * stride_xw, mask=ok, other=0.0)
            else:
                xv = tl.load(x_row + (j * DILATION) * stride_xw)
            # one reduction over the whole tile (reshape in any order: no data movement)
            prod = xv.to(tl.float32) * go
            s = tl.sum(tl.reshape(prod, [prod.numel], can_reorder=True), axis=0)
            tl.store(part_tap0 + (i * KSIZE + j) * part_stride_tap, s)


@triton.jit
def _dwconv_bwd_weight_nchw_kernel(
    go_ptr, x_ptr, part_ptr,
    N, C, H, W, OH, OW, padding,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, DILATION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One program: channel c, a [BLOCK_N, BLOCK_H, BLOCK_W] tile of output positions
    (images x rows x cols). grad_output is loaded once; each tap loads the shifted input
    tile (like the forward) and reduces go * x over the tile to one partial."""
    pid_hw = tl.program_id(0)
    pid_n = tl.program_id(1)
    c = tl.program_id(2)
    tiles_w = tl.cdiv(OW, BLOCK_W)
    oh0 = (pid_hw // tiles_w) * BLOCK_H
    ow0 = (pid_hw % tiles_w) * BLOCK_W
    oh = oh0 + tl.arange(0, BLOCK_H)
    ow = ow0 + tl.arange(0, BLOCK_W)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    # images past N read image N-1 (in bounds) against a zero grad_output
    n_x = tl.minimum(n, N - 1).to(tl.int64)
    n = n.to(tl.int64)

    go_off = (c * stride_gc + (n * stride_gn)[:, None, None] + (oh * stride_gh)[None, :, None]
              + (ow * stride_gw)[None, None, :])
    go_mask = n_mask[:, None, None] & (oh < OH)[None, :, None] & (ow < OW)[None, None, :]
    go = tl.load(go_ptr + go_off, mask=go_mask, other=0.0).to(tl.float32)

    ih0 = oh * STRIDE - padding
    iw0 = ow * STRIDE - padding
    x_tile = (x_ptr + c * stride_xc + (n_x * stride_xn)[:, None, None]
              + (ih0 * stride_xh)[None, :, None] + (iw0 * stride_xw)[None, None, :])
    taps_c = KSIZE * KSIZE * C
    part_tap0 = part_ptr + (pid_n * tl.num_programs(0) + pid_hw) * taps_c + c
    span = (KSIZE - 1) * DILATION
    inside = (_window_inside(oh0 * STRIDE - padding, BLOCK_H, STRIDE, span, H)
              & _window_inside(ow0 * STRIDE - padding, BLOCK_W, STRIDE, span, W))
    if inside:
        _wgrad_tile_taps(go, x_tile, part_tap0, C, ih0, iw0, H, W, stride_xh, stride_xw,
                         KSIZE, DILATION, False)
    else:
        _wgrad_tile_taps(go, x_tile, part_tap0, C, ih0, iw0, H, W, stride_xh, stride_xw,
                         KSIZE, DILATION, True)


@triton.jit
def _wgrad_nhwc_positions(acc, x_row, go_row, tap_off, go_c, load_mask, h_ok, dw, c_mask,
                          ow_start, ow_end, W, padding, stride_xw, stride_gw,
                          STRIDE: tl.constexpr, MODE: tl.constexpr):
    """acc[tap, c] += x[.., tap shift, c] * go[.., c] over output columns [ow_start,
    ow_end) of one row. MODE 0: every tap reads inside the image (loads masked only by
    load_mask: padded taps and channels >= C, whose sums are never stored, so their
    lanes need no zero fill); 1: columns inside, the row's taps checked by h_ok;
    2: both checked."""
    for ow in tl.range(ow_start, ow_end):
        iw_base = ow * STRIDE - padding
        x_ptrs = x_row + iw_base * stride_xw + tap_off
        if MODE == 0:
            xv = tl.load(x_ptrs, mask=load_mask)
        elif MODE == 1:
            xv = tl.load(x_ptrs, mask=h_ok[:, None] & c_mask[None, :], other=0.0)
        else:
            ok = h_ok & (iw_base + dw >= 0) & (iw_base + dw < W)
            xv = tl.load(x_ptrs, mask=ok[:, None] & c_mask[None, :], other=0.0)
        gv = tl.load(go_row + ow * stride_gw + go_c, mask=c_mask, other=0.0)
        acc += xv.to(tl.float32) * gv.to(tl.float32)[None, :]
    return acc


@triton.jit
def _dwconv_bwd_weight_nhwc_kernel(
    go_ptr, x_ptr, part_ptr,
    C, H, W, OH, OW, padding, num_rows, rows_per_program, ow_lo, ow_hi,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, DILATION: tl.constexpr,
    TAPS_PAD: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Program (pid_c, pid_s): BLOCK_C channels over output rows (n, oh) in
    [pid_s * rows_per_program, ...), one output position at a time. Every tap is a row
    of one [TAPS_PAD, BLOCK_C] gather (contiguous along C) whose offsets are loop
    invariant; products accumulate elementwise, reduced only by the final store.
    Columns [ow_lo, ow_hi) read inside the image for every tap (no column checks)."""
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    tap = tl.arange(0, TAPS_PAD)
    tap_mask = tap < KSIZE * KSIZE
    load_mask = tap_mask[:, None] & c_mask[None, :]
    dh = (tap // KSIZE) * DILATION
    dw = (tap % KSIZE) * DILATION
    tap_off = (dh * stride_xh + dw * stride_xw)[:, None] + (c * stride_xc)[None, :]
    go_c = c * stride_gc
    span = (KSIZE - 1) * DILATION

    acc = tl.zeros([TAPS_PAD, BLOCK_C], dtype=tl.float32)
    row_start = pid_s * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, num_rows)
    for row in tl.range(row_start, row_end):
        n = row // OH
        oh = row - n * OH
        ih_base = oh * STRIDE - padding
        h_ok = tap_mask & (ih_base + dh >= 0) & (ih_base + dh < H)
        x_row = x_ptr + n.to(tl.int64) * stride_xn + ih_base * stride_xh
        go_row = go_ptr + n.to(tl.int64) * stride_gn + oh * stride_gh
        acc = _wgrad_nhwc_positions(acc, x_row, go_row, tap_off, go_c, load_mask, h_ok, dw,
                                    c_mask, 0, ow_lo, W, padding, stride_xw, stride_gw,
                                    STRIDE, 2)
        if (ih_base >= 0) & (ih_base + span < H):
            acc = _wgrad_nhwc_positions(acc, x_row, go_row, tap_off, go_c, load_mask, h_ok,
                                        dw, c_mask, ow_lo, ow_hi, W, padding, stride_xw,
                                        stride_gw, STRIDE, 0)
        else:
            acc = _wgrad_nhwc_positions(acc, x_row, go_row, tap_off, go_c, load_mask, h_ok,
                                        dw, c_mask, ow_lo, ow_hi, W, padding, stride_xw,
                                        stride_gw, STRIDE, 1)
        acc = _wgrad_nhwc_positions(acc, x_row, go_row, tap_off, go_c, load_mask, h_ok, dw,
                                    c_mask, ow_hi, OW, W, padding, stride_xw, stride_gw,
                                    STRIDE, 2)

    part_off = pid_s * (KSIZE * KSIZE * C) + tap[:, None] * C + c[None, :]
    tl.store(part_ptr + part_off, acc, mask=load_mask)


@triton.jit
def _dwconv_bwd_weight_reduce_kernel(
    part_ptr, gw_ptr,
    C, num_parts, crop,
    stride_wc, stride_wh, stride_ww,
    KSIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Sums the partials part[:, tap, c] in a fixed order and writes
    grad_weight[c, 0, crop + tap // k, crop + tap % k] through its strides."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    taps_c = KSIZE * KSIZE * C
    mask = idx < taps_c
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.range(0, num_parts):
        acc += tl.load(part_ptr + s * taps_c + idx, mask=mask, other=0.0)
    tap = idx // C
    c = idx - tap * C
    gw_off = c * stride_wc + (crop + tap // KSIZE) * stride_wh + (crop + tap % KSIZE) * stride_ww
    tl.store(gw_ptr + gw_off, acc.to(gw_ptr.dtype.element_ty), mask=mask)


def _wgrad_nchw_tile(N: int, OH: int, OW: int):
    """(BLOCK_N, BLOCK_H, BLOCK_W): rows of a channel's planes, then images to fill."""
    block_w = min(_np2(OW), _NCHW_MAX_BLOCK_W)
    block_h = _rows_block(OH, max(1, _WGRAD_NCHW_TILE // block_w), _np2(N))
    block_n = min(_np2(N), max(1, _WGRAD_NCHW_TILE // (block_h * block_w)))
    return block_n, block_h, block_w


def dwconv2d_backward_weight(grad_output, x, weight, kernel_size, stride, dilation, padding):
    grad_weight = weight.new_zeros(weight.shape)
    N, C, H, W = x.shape
    OH, OW = grad_output.shape[2], grad_output.shape[3]
    if N * OH * OW == 0 or _tracing_under_interpreter(grad_output, x, grad_weight):
        return grad_weight
    taps = kernel_size * kernel_size
    if _is_channels_last(x):
        block_c = min(_np2(C), _WGRAD_NHWC_MAX_BLOCK_C)
        c_blocks = triton.cdiv(C, block_c)
        num_rows = N * OH
        num_parts = max(1, min(triton.cdiv(_WGRAD_PROGRAMS, c_blocks),
                               triton.cdiv(num_rows, _WGRAD_MIN_ROWS)))
        rows_per_program = triton.cdiv(num_rows, num_parts)
        num_parts = triton.cdiv(num_rows, rows_per_program)
        # every entry is written by exactly one program: no zero fill needed
        partial = torch.empty((num_parts, taps, C), dtype=torch.float32, device=x.device)
        # output columns all of whose taps read inside the image
        span = dilation * (kernel_size - 1)
        ow_lo = min(OW, -(-padding // stride))
        ow_hi = max(ow_lo, min(OW, (W - 1 - span + padding) // stride + 1))
        _launcher(_dwconv_bwd_weight_nhwc_kernel)[(c_blocks, num_parts)](
            grad_output, x, partial,
            C, H, W, OH, OW, padding, num_rows, rows_per_program, ow_lo, ow_hi,
            *_strides4(grad_output),
            *_strides4(x),
            KSIZE=kernel_size, STRIDE=stride, DILATION=dilation,
            TAPS_PAD=_np2(taps), BLOCK_C=block_c,
            num_warps=4,
        )
    else:
        block_n, block_h, block_w = _wgrad_nchw_tile(N, OH, OW)
        tiles_hw = triton.cdiv(OH, block_h) * triton.cdiv(OW, block_w)
        n_blocks = triton.cdiv(N, block_n)
        num_parts = tiles_hw * n_blocks
        partial = torch.empty((num_parts, taps, C), dtype=torch.float32, device=x.device)
        _launcher(_dwconv_bwd_weight_nchw_kernel)[(tiles_hw, n_blocks, C)](
            grad_output, x, partial,
            N, C, H, W, OH, OW, padding,
            *_strides4(grad_output),
            *_strides4(x),
            KSIZE=kernel_size, STRIDE=stride, DILATION=dilation,
            BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_W=block_w,
            num_warps=4,
        )
    crop = weight.shape[2] // 2 - kernel_size // 2
    reduce_block = min(_np2(taps * C), 1024)
    _launcher(_dwconv_bwd_weight_reduce_kernel)[(triton.cdiv(taps * C, reduce_block),)](
        partial, grad_weight,
        C, num_parts, crop,
        grad_weight.stride(0), grad_weight.stride(2), grad_weight.stride(3),
        KSIZE=kernel_size, BLOCK=reduce_block,
        num_warps=4,
    )
    return grad_weight

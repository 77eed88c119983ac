"""Triton kernels of the channel-sliced linear layer and pointwise (1x1) convolution.

    linear:     y[m, o]       = sum_{c < in} x[m, c] * weight[o, c] + bias[o]        (o < out)
    pointwise:  y[n, o, h, w] = sum_{c < in} x[n, c, h, w] * weight[o, c, 0, 0] + bias[o]

The active weight weight[:out, :in] is read in place from the max weight through its
strides (a GEMM's leading dimension), never copied; the gradients of the weight and the
bias come back in the max shape, zero outside the active slice.

Everything is one tiled GEMM kernel, C[g] = A[g] @ B[g] (+ bias), whose operands are
addressed through arbitrary strides, so one kernel serves x in NCHW, channels_last or
any strided view, a transposed or sliced max weight, and an expanded grad_output.
  - A dim may be a pixel index p = h * W + w that does not flatten to one stride (a
    view like x[:, :, ::2, ::2]); the kernel then splits it, h = p // W, w = p % W.
  - The batch is either a grid axis (forward, input gradient: one output per image,
    batch stride 0 for the shared weight) or a reduction (weight gradient: the K loop
    runs over (image, pixel block) pairs, so [N, out, in] is never materialised).
    Where images and pixels flatten to one stride (channels_last, or a linear layer's
    rows) they are one long GEMM dim instead.
  - A reduction long enough to leave the GPU idle is split over several programs that
    write fp32 partial sums; a second kernel adds them in a fixed order (deterministic,
    no atomics).
Accumulation is in float32 (tl.dot); fp32 inputs use IEEE products unless
torch.backends.cuda.matmul.allow_tf32 is set, as with PyTorch's own matmul. Results
are stored in the output's dtype.

Memory formats: the linear outputs are contiguous. The pointwise conv's output and input
gradient take ofa_fast.ops._common.pointwise_memory_format(x), the dwconv kernels' rule:
contiguous if x is contiguous, else channels_last if x is channels_last-contiguous,
else (a strided view) torch._prims_common.suggest_memory_format(x), i.e. channels_last
when x's strides are in channels_last order. The GEMM's orientation follows the
format: pixels x channels (channels unit-stride) for channels_last, channels x pixels
for NCHW, so the loads and stores coalesce along the unit-stride dim.

The host functions validate their arguments (ValueError / TypeError naming the bad
value and what is allowed), launch through wrap_triton and use torch ops only, so the
op wrappers can call them inside torch.library.triton_op bodies.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launcher as _launcher
from ._common import np2 as _np2
from ._common import tracing_under_interpreter as _tracing_under_interpreter

from ..ops._common import pointwise_memory_format

__all__ = [
    "sliced_linear_forward", "sliced_linear_backward_input", "sliced_linear_backward_weight",
    "sliced_linear_backward_bias",
    "pointwise_conv2d_forward", "pointwise_conv2d_backward_input",
    "pointwise_conv2d_backward_weight", "pointwise_conv2d_backward_bias",
]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# GEMM tiles: up to 128 x 128 outputs (8 warps there, else 4), a K step of 32 fp32 or
# 64 half-precision values (128-byte rows); tl.dot needs every block dim >= 16.
_MAX_BLOCK_MN = 128
_MIN_BLOCK = 16
_NUM_STAGES = 3
_GROUP_M = 8  # tile rows visited together, so B's column blocks stay in L2
# Split reductions (weight and bias gradients): aim for a couple of waves of an H100's
# 132 SMs, each split summing at least this many K (row) blocks, so the fp32 partials
# stay a small fraction of the traffic.
_SPLIT_TARGET_PROGRAMS = 264
_MIN_BLOCKS_PER_SPLIT = 8
_REDUCE_BLOCK = 1024
# bias gradient: [rows, channels] tiles of this many elements
_BIAS_TILE = 4096
_BIAS_MAX_BLOCK_O = 64


# ---- kernels -----------------------------------------------------------------------

@triton.jit
def _split_index(idx, LO, SPLIT: tl.constexpr, stride, stride_hi):
    """Offsets of the indices idx along a dim of stride `stride`; SPLIT: idx is a pixel
    index h * LO + w of a dim that does not flatten, at h * stride_hi + w * stride."""
    if SPLIT:
        hi = idx // LO
        return hi * stride_hi + (idx - hi * LO) * stride
    else:
        return idx * stride


@triton.jit
def _gemm_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr,
    M, N, K, M_OUT, N_OUT, BATCH, LO_M, LO_N, LO_K, blocks_per_split,
    stride_ag, stride_am, stride_am_hi, stride_ak, stride_ak_hi,
    stride_bg, stride_bk, stride_bk_hi, stride_bn, stride_bn_hi,
    stride_cg, stride_cm, stride_cm_hi, stride_cn, stride_cn_hi,
    stride_bias,
    SPLIT_M: tl.constexpr, SPLIT_N: tl.constexpr, SPLIT_K: tl.constexpr,
    REDUCE_BATCH: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_ON_M: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """One program: a [BLOCK_M, BLOCK_N] tile of C[g] = sum_k A[g][:, k] B[g][k, :]
    over the active [M, N], zeros in [M, M_OUT) x [N, N_OUT).

    Axis 1 of the grid is g. Without REDUCE_BATCH it is the batch index (every operand
    offset by g * its batch stride). With it, the reduction runs over BATCH * K: its
    K blocks, image by image, are cut into runs of blocks_per_split, and g picks the
    run; C[g] is then this split's (partial) sum."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    # grouped tile order: GROUP_M tile rows sweep the tile columns together
    tiles_m = tl.cdiv(M_OUT, BLOCK_M)
    tiles_n = tl.cdiv(N_OUT, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    a_m = _split_index(rm, LO_M, SPLIT_M, stride_am, stride_am_hi)
    c_m = _split_index(rm, LO_M, SPLIT_M, stride_cm, stride_cm_hi)
    b_n = _split_index(rn, LO_N, SPLIT_N, stride_bn, stride_bn_hi)
    c_n = _split_index(rn, LO_N, SPLIT_N, stride_cn, stride_cn_hi)

    k_blocks = tl.cdiv(K, BLOCK_K)
    a_tile = a_ptr + a_m[:, None]
    b_tile = b_ptr + b_n[None, :]
    if REDUCE_BATCH:
        t0 = g * blocks_per_split
        t1 = tl.minimum(t0 + blocks_per_split, BATCH * k_blocks)
    else:
        a_tile += g.to(tl.int64) * stride_ag  # can pass 2^31 on big batches
        b_tile += g.to(tl.int64) * stride_bg
        t0 = 0
        t1 = k_blocks
    # a tile wholly outside the active slice only stores its zeros
    t1 = tl.where((pid_m * BLOCK_M < M) & (pid_n * BLOCK_N < N), t1, t0)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(t0, t1):
        if REDUCE_BATCH:
            img = t // k_blocks
            rk = (t - img * k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
            a_img = a_tile + tl.cast(img, tl.int64) * stride_ag
            b_img = b_tile + tl.cast(img, tl.int64) * stride_bg
        else:
            rk = t * BLOCK_K + tl.arange(0, BLOCK_K)
            a_img = a_tile
            b_img = b_tile
        k_ok = rk < K
        a_k = _split_index(rk, LO_K, SPLIT_K, stride_ak, stride_ak_hi)
        b_k = _split_index(rk, LO_K, SPLIT_K, stride_bk, stride_bk_hi)
        a = tl.load(a_img + a_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_img + b_k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    if HAS_BIAS:
        if BIAS_ON_M:
            bias = tl.load(bias_ptr + rm * stride_bias, mask=m_ok, other=0.0)
            acc += bias.to(tl.float32)[:, None]
        else:
            bias = tl.load(bias_ptr + rn * stride_bias, mask=n_ok, other=0.0)
            acc += bias.to(tl.float32)[None, :]

    c_tile = c_ptr + g.to(tl.int64) * stride_cg + c_m[:, None] + c_n[None, :]
    c_mask = (rm < M_OUT)[:, None] & (rn < N_OUT)[None, :]
    tl.store(c_tile, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _sum_partials_kernel(
    part_ptr, out_ptr,
    M, N, M_OUT, N_OUT, num_parts,
    stride_om, stride_on,
    BLOCK: tl.constexpr,
):
    """out[m, n] = sum_s part[s, m, n] (a fixed order) inside the active [M, N], zero
    elsewhere in [M_OUT, N_OUT]; out is written through its strides."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx // N_OUT
    n = idx - m * N_OUT
    inside = (m < M) & (n < N)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, num_parts):
        acc += tl.load(part_ptr + s * M * N + m * N + n, mask=inside, other=0.0)
    tl.store(out_ptr + m * stride_om + n * stride_on, acc.to(out_ptr.dtype.element_ty),
             mask=idx < M_OUT * N_OUT)


@triton.jit
def _sum_rows_kernel(
    g_ptr, out_ptr,
    BATCH, R, O, O_OUT, LO_R, blocks_per_split,
    stride_gb, stride_gr, stride_gr_hi, stride_go, stride_out_split, stride_out,
    SPLIT_R: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """out[split][o] = sum of g[b, r, o] over this split's (image b, row block) pairs,
    for o < O; zero for O <= o < O_OUT. The values accumulate elementwise in an fp32
    tile, reduced once at the end."""
    pid_o = tl.program_id(0)
    split = tl.program_id(1)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < O
    g_o = g_ptr + (o * stride_go)[None, :]
    r_blocks = tl.cdiv(R, BLOCK_R)
    t0 = split * blocks_per_split
    t1 = tl.minimum(t0 + blocks_per_split, BATCH * r_blocks)
    t1 = tl.where(pid_o * BLOCK_O < O, t1, t0)
    acc = tl.zeros([BLOCK_R, BLOCK_O], dtype=tl.float32)
    for t in range(t0, t1):
        img = t // r_blocks
        r = (t - img * r_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_off = _split_index(r, LO_R, SPLIT_R, stride_gr, stride_gr_hi)
        v = tl.load(g_o + tl.cast(img, tl.int64) * stride_gb + r_off[:, None],
                    mask=(r < R)[:, None] & o_ok[None, :], other=0.0)
        acc += v.to(tl.float32)
    total = tl.sum(acc, axis=0)
    out = out_ptr + split.to(tl.int64) * stride_out_split + o * stride_out
    tl.store(out, total.to(out_ptr.dtype.element_ty), mask=o < O_OUT)


# ---- host-side launch helpers -------------------------------------------------------

def _flat_stride(sizes, strides):
    """The one stride that addresses the row-major flattened index of these dims, or
    None when they do not flatten. Dims of size 1 do not matter; 0 when no dim is
    longer than 1 (every index is 0) or a dim is empty (nothing is read)."""
    if 0 in sizes:
        return 0
    inner = None
    span = 1
    for size, stride in reversed(list(zip(sizes, strides))):
        if size == 1:
            continue
        if inner is None:
            inner = stride
        elif stride != inner * span:
            return None
        span *= size
    return 0 if inner is None else inner


class _Dim:
    """How a GEMM dim is addressed in each operand that has it: one stride per operand
    (lo == 0), or pixel indices split as h * lo + w with (w stride, h stride) pairs."""

    def __init__(self, size, lo, strides):
        self.size = size
        self.lo = lo
        self.strides = strides  # [(stride, stride_hi)] per operand

    @classmethod
    def plain(cls, size, *strides):
        return cls(size, 0, [(s, 0) for s in strides])

    @classmethod
    def pixels(cls, H, W, *tensors):
        """The pixel index h * W + w of each [N, C, H, W] tensor."""
        flat = [_flat_stride((H, W), (t.stride(2), t.stride(3))) for t in tensors]
        if all(s is not None for s in flat):
            return cls.plain(H * W, *flat)
        return cls(H * W, W, [(t.stride(3), t.stride(2)) for t in tensors])

    @classmethod
    def images_and_pixels(cls, N, H, W, *tensors):
        """(n, h, w) as one dim of N * H * W, or None when it does not flatten in every
        tensor (the images then go to the grid or the reduction loop)."""
        flat = [_flat_stride((N, H, W), (t.stride(0), t.stride(2), t.stride(3)))
                for t in tensors]
        if all(s is not None for s in flat):
            return cls.plain(N * H * W, *flat)
        return None


def _dot_precision(dtype):
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _block(n: int, limit: int) -> int:
    return min(limit, max(_MIN_BLOCK, _np2(n)))


def _gemm(a, b, c, *, m: _Dim, n: _Dim, k: _Dim, batch=1, batch_strides=(0, 0, 0),
          reduce_batch=False, m_out=None, n_out=None, bias=None, bias_on_m=False):
    """c[g][:m_out, :n_out] = a[g] @ b[g] over the active [m, n] (+ bias), zeros outside.

    m.strides = (A's, C's), n.strides = (B's, C's), k.strides = (A's, B's);
    batch_strides = (A's, B's, C's). reduce_batch: sum over the batch too (C has none)."""
    M, N, K = m.size, n.size, k.size
    m_out = M if m_out is None else m_out
    n_out = N if n_out is None else n_out
    block_m = _block(M, _MAX_BLOCK_MN)
    block_n = _block(N, _MAX_BLOCK_MN)
    block_k = _block(K, 128 // a.element_size())
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    stride_cg = batch_strides[2]
    blocks_per_split = 0
    num_parts = 1
    target = c
    if reduce_batch:
        num_parts, blocks_per_split = _num_splits(
            triton.cdiv(M, block_m) * triton.cdiv(N, block_n), batch * triton.cdiv(K, block_k))
        if num_parts > 1:
            # fp32 partials [split, M, N] (M and N are channel dims here, never pixels);
            # every entry is written by exactly one program: no zero fill needed
            assert m.lo == 0 and n.lo == 0
            target = torch.empty((num_parts, M, N), dtype=torch.float32, device=c.device)
            stride_cg = M * N
            m = _Dim.plain(M, m.strides[0][0], N)
            n = _Dim.plain(N, n.strides[0][0], 1)
        else:
            stride_cg = 0
    grid_m, grid_n = (M, N) if num_parts > 1 else (m_out, n_out)
    grid = (triton.cdiv(grid_m, block_m) * triton.cdiv(grid_n, block_n),
            num_parts if reduce_batch else batch)
    (am, am_hi), (cm, cm_hi) = m.strides
    (bn, bn_hi), (cn, cn_hi) = n.strides
    (ak, ak_hi), (bk, bk_hi) = k.strides
    _launcher(_gemm_kernel)[grid](
        a, b, target, bias if bias is not None else c,
        M, N, K, grid_m, grid_n, batch, m.lo, n.lo, k.lo, blocks_per_split,
        batch_strides[0], am, am_hi, ak, ak_hi,
        batch_strides[1], bk, bk_hi, bn, bn_hi,
        stride_cg, cm, cm_hi, cn, cn_hi,
        bias.stride(0) if bias is not None else 0,
        SPLIT_M=m.lo > 0, SPLIT_N=n.lo > 0, SPLIT_K=k.lo > 0,
        REDUCE_BATCH=reduce_batch, HAS_BIAS=bias is not None, BIAS_ON_M=bias_on_m,
        PRECISION=_dot_precision(a.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=_GROUP_M,
        num_warps=num_warps, num_stages=_NUM_STAGES,
    )
    if num_parts > 1:
        _launcher(_sum_partials_kernel)[(triton.cdiv(m_out * n_out, _REDUCE_BLOCK),)](
            target, c,
            M, N, m_out, n_out, num_parts,
            c.stride(0), c.stride(1),
            BLOCK=_REDUCE_BLOCK, num_warps=4,
        )


def _num_splits(tiles: int, total_blocks: int):
    """(splits, blocks per split) of a reduction over total_blocks K blocks whose
    output has `tiles` tiles: enough programs for a couple of waves, each summing at
    least _MIN_BLOCKS_PER_SPLIT blocks."""
    if tiles == 0:  # an empty slice: the launch only stores zeros
        return 1, 0
    splits = max(1, min(triton.cdiv(_SPLIT_TARGET_PROGRAMS, tiles),
                        total_blocks // _MIN_BLOCKS_PER_SPLIT))
    per_split = max(1, triton.cdiv(total_blocks, splits))
    return max(1, triton.cdiv(total_blocks, per_split)), per_split


def _sum_rows(g, out, *, batch, rows: _Dim, O, stride_gb, stride_go):
    """out[:O] = g summed over images and rows, out[O:] = 0 (the bias gradient)."""
    block_o = min(_np2(O), _BIAS_MAX_BLOCK_O)
    block_r = min(_np2(rows.size), max(1, _BIAS_TILE // block_o))
    (sr, sr_hi), = rows.strides
    o_blocks = triton.cdiv(O, block_o)
    num_parts, per_split = _num_splits(o_blocks, batch * triton.cdiv(rows.size, block_r))
    if num_parts > 1:
        target = torch.empty((num_parts, O), dtype=torch.float32, device=g.device)
        o_out, stride_split, stride_out = O, O, 1
    else:
        target, o_out, stride_split, stride_out = out, out.shape[0], 0, out.stride(0)
    grid = (triton.cdiv(o_out, block_o), num_parts)
    _launcher(_sum_rows_kernel)[grid](
        g, target,
        batch, rows.size, O, o_out, rows.lo, per_split,
        stride_gb, sr, sr_hi, stride_go, stride_split, stride_out,
        SPLIT_R=rows.lo > 0, BLOCK_R=block_r, BLOCK_O=block_o,
        num_warps=4,
    )
    if num_parts > 1:
        _launcher(_sum_partials_kernel)[(triton.cdiv(out.shape[0], _REDUCE_BLOCK),)](
            target, out,
            1, O, 1, out.shape[0], num_parts,
            0, out.stride(0),
            BLOCK=_REDUCE_BLOCK, num_warps=4,
        )


# ---- argument checks ----------------------------------------------------------------

def _check_tensor(t, name, dim):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; the Triton kernels take "
                        f"{', '.join(str(d) for d in _DTYPES)}")


def _check_same(ref, ref_name, *others):
    for t, name in others:
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} on {ref.device}; "
                             "all tensors must be on one device")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} {ref.dtype}; "
                            "all tensors must have one dtype")


def _check_count(value, name, lo, hi, hi_name):
    # SymInt: sizes traced with dynamic shapes (torch.compile through triton_op)
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is outside [{lo}, {hi}] ({hi_name} = {hi})")


def _check_weight(weight, pointwise):
    _check_tensor(weight, "weight", 4 if pointwise else 2)
    if pointwise and tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"weight of a pointwise conv must be [out_max, in_max, 1, 1], got "
                         f"shape {tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError(f"weight has out_max = {weight.shape[0]}; it must be >= 1")


def _check_bias(bias, weight):
    if bias is None:
        return
    _check_tensor(bias, "bias", 1)
    if bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias has {bias.shape[0]} entries but weight has out_max = "
                         f"{weight.shape[0]}; bias must be [out_max] (None for no bias)")


def _check_in(x, weight, name="x"):
    _check_count(x.shape[1], f"{name}.size(1) (active in_features)", 0, weight.shape[1],
                 "in_max = weight.size(1)")


def _check_grad_out(grad_y, weight, dim):
    _check_tensor(grad_y, "grad_y", dim)
    _check_count(grad_y.shape[1], "grad_y.size(1) (active out_features)", 1, weight.shape[0],
                 "out_max = weight.size(0)")


def _check_grad_bias(grad_y, out_max, dim):
    _check_tensor(grad_y, "grad_y", dim)
    if isinstance(out_max, bool) or not isinstance(out_max, (int, torch.SymInt)):
        raise TypeError(f"out_max must be an int, got {type(out_max).__name__} {out_max!r}")
    if out_max < grad_y.shape[1] or grad_y.shape[1] < 1:
        raise ValueError(f"grad_y.size(1) (active out_features) = {grad_y.shape[1]} must be "
                         f"in [1, out_max] with out_max = {out_max}")


def _check_pixels_match(grad_y, x):
    if (grad_y.shape[0], *grad_y.shape[2:]) != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"grad_y has shape {tuple(grad_y.shape)} but x {tuple(x.shape)}: "
                         "their batch and image sizes must match")


# ---- linear ---------------------------------------------------------------------------

def sliced_linear_forward(x, weight, bias, out_features):
    """y[M, out] = x @ weight[:out, :in].T + bias[:out] (in = x.size(1)); contiguous."""
    _check_tensor(x, "x", 2)
    _check_weight(weight, False)
    _check_in(x, weight)
    _check_count(out_features, "out_features", 1, weight.shape[0], "out_max = weight.size(0)")
    _check_bias(bias, weight)
    _check_same(x, "x", (weight, "weight"), *([(bias, "bias")] if bias is not None else []))
    M, in_features = x.shape
    y = torch.empty((M, out_features), dtype=x.dtype, device=x.device)
    if y.numel() == 0 or _tracing_under_interpreter(x, weight, y):
        return y
    _gemm(x, weight, y,
          m=_Dim.plain(M, x.stride(0), y.stride(0)),
          n=_Dim.plain(out_features, weight.stride(0), y.stride(1)),
          k=_Dim.plain(in_features, x.stride(1), weight.stride(1)),
          bias=bias)
    return y


def sliced_linear_backward_input(grad_y, weight, in_features):
    """grad_x[M, in] = grad_y @ weight[:out, :in] (out = grad_y.size(1)); contiguous."""
    _check_weight(weight, False)
    _check_grad_out(grad_y, weight, 2)
    _check_count(in_features, "in_features", 0, weight.shape[1], "in_max = weight.size(1)")
    _check_same(grad_y, "grad_y", (weight, "weight"))
    M, out_features = grad_y.shape
    gx = torch.empty((M, in_features), dtype=grad_y.dtype, device=grad_y.device)
    if gx.numel() == 0 or _tracing_under_interpreter(grad_y, weight, gx):
        return gx
    _gemm(grad_y, weight, gx,
          m=_Dim.plain(M, grad_y.stride(0), gx.stride(0)),
          n=_Dim.plain(in_features, weight.stride(1), gx.stride(1)),
          k=_Dim.plain(out_features, grad_y.stride(1), weight.stride(0)))
    return gx


def sliced_linear_backward_weight(grad_y, x, weight):
    """grad_weight of weight's full shape: grad_y.T @ x in [:out, :in], zero elsewhere;
    contiguous, weight's dtype."""
    _check_weight(weight, False)
    _check_grad_out(grad_y, weight, 2)
    _check_tensor(x, "x", 2)
    _check_in(x, weight)
    _check_same(weight, "weight", (grad_y, "grad_y"), (x, "x"))
    if grad_y.shape[0] != x.shape[0]:
        raise ValueError(f"grad_y has {grad_y.shape[0]} rows but x {x.shape[0]}; they must match")
    gw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    if gw.numel() == 0 or _tracing_under_interpreter(grad_y, x, gw):
        return gw
    M, out_features = grad_y.shape
    _gemm(grad_y, x, gw,
          m=_Dim.plain(out_features, grad_y.stride(1), gw.stride(0)),
          n=_Dim.plain(x.shape[1], x.stride(1), gw.stride(1)),
          k=_Dim.plain(M, grad_y.stride(0), x.stride(0)),
          reduce_batch=True, m_out=gw.shape[0], n_out=gw.shape[1])
    return gw


def sliced_linear_backward_bias(grad_y, out_max):
    """grad_bias[out_max]: grad_y.sum(0) (fp32 accumulation) in [:out], zero elsewhere."""
    _check_grad_bias(grad_y, out_max, 2)
    gb = torch.empty((out_max,), dtype=grad_y.dtype, device=grad_y.device)
    if _tracing_under_interpreter(grad_y, gb):
        return gb
    _sum_rows(grad_y, gb, batch=1, rows=_Dim.plain(grad_y.shape[0], grad_y.stride(0)),
              O=grad_y.shape[1], stride_gb=0, stride_go=grad_y.stride(1))
    return gb


# ---- pointwise (1x1) convolution -----------------------------------------------------

def _pointwise_gemm(src, weight, w_strides, dst, bias=None):
    """dst[n, o, h, w] = sum_c W[o, c] src[n, c, h, w] (+ bias[o]), with W read from
    weight through w_strides = (stride along o, stride along c): the weight itself
    for the forward, its transpose for the input gradient. The GEMM's orientation
    follows dst's memory format."""
    N, C_in, H, W = src.shape
    C_out = dst.shape[1]
    stride_wo, stride_wc = w_strides
    if pointwise_memory_format(dst) == torch.channels_last:
        # [pixels, C_in] @ [C_in, C_out]: channels are the unit-stride dim
        n = _Dim.plain(C_out, stride_wo, dst.stride(1))
        k = _Dim.plain(C_in, src.stride(1), stride_wc)
        rows = _Dim.images_and_pixels(N, H, W, src, dst)
        if rows is not None:
            _gemm(src, weight, dst, m=rows, n=n, k=k, bias=bias)
        else:
            _gemm(src, weight, dst, m=_Dim.pixels(H, W, src, dst), n=n, k=k, batch=N,
                  batch_strides=(src.stride(0), 0, dst.stride(0)), bias=bias)
    else:
        # per image, [C_out, C_in] @ [C_in, pixels]: pixels are the unit-stride dim
        _gemm(weight, src, dst,
              m=_Dim.plain(C_out, stride_wo, dst.stride(1)),
              n=_Dim.pixels(H, W, src, dst),
              k=_Dim.plain(C_in, stride_wc, src.stride(1)),
              batch=N, batch_strides=(0, src.stride(0), dst.stride(0)),
              bias=bias, bias_on_m=True)


def pointwise_conv2d_forward(x, weight, bias, out_channels):
    """y[N, out, H, W] = sum_c weight[o, c, 0, 0] * x[n, c, h, w] + bias[o] over
    c < in = x.size(1); y in pointwise_memory_format(x)."""
    _check_tensor(x, "x", 4)
    _check_weight(weight, True)
    _check_in(x, weight)
    _check_count(out_channels, "out_channels", 1, weight.shape[0], "out_max = weight.size(0)")
    _check_bias(bias, weight)
    _check_same(x, "x", (weight, "weight"), *([(bias, "bias")] if bias is not None else []))
    N, _, H, W = x.shape
    y = torch.empty((N, out_channels, H, W), dtype=x.dtype, device=x.device,
                    memory_format=pointwise_memory_format(x))
    if y.numel() == 0 or _tracing_under_interpreter(x, weight, y):
        return y
    _pointwise_gemm(x, weight, (weight.stride(0), weight.stride(1)), y, bias)
    return y


def pointwise_conv2d_backward_input(grad_y, x, weight):
    """grad_x[N, in, H, W] = sum_o weight[o, c, 0, 0] * grad_y[n, o, h, w] (in =
    x.size(1)); in pointwise_memory_format(x)."""
    _check_tensor(x, "x", 4)
    _check_weight(weight, True)
    _check_in(x, weight)
    _check_grad_out(grad_y, weight, 4)
    _check_pixels_match(grad_y, x)
    _check_same(weight, "weight", (grad_y, "grad_y"), (x, "x"))
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                     memory_format=pointwise_memory_format(x))
    if gx.numel() == 0 or _tracing_under_interpreter(grad_y, weight, gx):
        return gx
    # through the transposed slice, W'[c, o] = weight[o, c]
    _pointwise_gemm(grad_y, weight, (weight.stride(1), weight.stride(0)), gx)
    return gx


def pointwise_conv2d_backward_weight(grad_y, x, weight):
    """grad_weight [out_max, in_max, 1, 1] (weight's dtype, contiguous): the sum over
    n, h, w of grad_y[n, o, h, w] * x[n, c, h, w] in [:out, :in], zero elsewhere."""
    _check_tensor(x, "x", 4)
    _check_weight(weight, True)
    _check_in(x, weight)
    _check_grad_out(grad_y, weight, 4)
    _check_pixels_match(grad_y, x)
    _check_same(weight, "weight", (grad_y, "grad_y"), (x, "x"))
    gw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    if gw.numel() == 0 or _tracing_under_interpreter(grad_y, x, gw):
        return gw
    N, C_in, H, W = x.shape
    C_out = grad_y.shape[1]
    m = _Dim.plain(C_out, grad_y.stride(1), gw.stride(0))
    n = _Dim.plain(C_in, x.stride(1), gw.stride(1))
    rows = _Dim.images_and_pixels(N, H, W, grad_y, x)
    if rows is not None:
        _gemm(grad_y, x, gw, m=m, n=n, k=rows, reduce_batch=True,
              m_out=gw.shape[0], n_out=gw.shape[1])
    else:
        _gemm(grad_y, x, gw, m=m, n=n, k=_Dim.pixels(H, W, grad_y, x), batch=N,
              batch_strides=(grad_y.stride(0), x.stride(0), 0), reduce_batch=True,
              m_out=gw.shape[0], n_out=gw.shape[1])
    return gw


def pointwise_conv2d_backward_bias(grad_y, out_max):
    """grad_bias[out_max]: grad_y summed over n, h, w (fp32 accumulation) in [:out],
    zero elsewhere."""
    _check_grad_bias(grad_y, out_max, 4)
    gb = torch.empty((out_max,), dtype=grad_y.dtype, device=grad_y.device)
    if _tracing_under_interpreter(grad_y, gb):
        return gb
    N, C_out, H, W = grad_y.shape
    rows = _Dim.images_and_pixels(N, H, W, grad_y)
    if rows is not None:
        _sum_rows(grad_y, gb, batch=1, rows=rows, O=C_out, stride_gb=0,
                  stride_go=grad_y.stride(1))
    else:
        _sum_rows(grad_y, gb, batch=N, rows=_Dim.pixels(H, W, grad_y), O=C_out,
                  stride_gb=grad_y.stride(0), stride_go=grad_y.stride(1))
    return gb

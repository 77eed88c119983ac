// CUDA implementation of the elastic depthwise convolution (schemas: dwconv_common.cpp).
//
// T is the storage dtype, acc_t = at::opmath_type<T> the accumulator (float for
// half/bf16). The filter is read in place through the max weight's strides
// (FilterView); kernels stage a channel's k x k taps in shared memory/registers.
//
// Kernels and where they run (KS, S: compile-time kernel size 3/5/7 and stride 1/2,
// dilation 1; 0 = taken at run time):
//   NCHW
//     fwd_nchw_tiled<KS,S>    forward; also the stride-1 gradient of the input, which is
//                             the correlation of grad_out with the flipped filter. A block
//                             owns an output tile of NP planes; each thread kRows rows of
//                             one column. Smem: the NP zero-padded input tiles + halo and
//                             their taps. KS > 0: taps and each staged input row sit in
//                             registers, shared by the thread's kRows outputs.
//     bwd_input_direct<KS,S>  gradient of the input for stride > 1: one thread per input
//                             element gathers the outputs that read it (tap_output).
//     wgrad_nchw_tiled<KS,S>  gradient of the filter: a block reduces a chunk of the
//                             (batch, tile) space of one channel, staging input tiles as
//                             the forward does; all k*k sums in registers; block reduce
//                             into a [chunks][C][k*k] scratch of partial sums.
//   channels_last
//     fwd_nhwc<KS,S>          forward (and stride-1 gradient of the input, flipped): block
//                             = up to 32 channels x pixel lanes, coalesced along C; each
//                             thread kPix outputs along W, an input row's span in registers.
//     bwd_input_nhwc<KS,S>    gradient of the input for stride 2, same layout, one input
//                             pixel per thread.
//     wgrad_nhwc<KS,S>        gradient of the filter, same layout, chunks of pixel groups.
//   fallbacks (any k, s, d, p; either layout, indexing by memory order)
//     fwd_direct, bwd_input_direct<0,0>, wgrad_direct.
//   wgrad_finish             sums the partials in chunk order (deterministic) into the
//                             active crop of the full weight gradient.
// The runtime is reached only through common/gpu.h, so this file also builds as C++
// against the CPU emulator the tests run it on (tests/test_cuda_emulated.py).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../common/gpu.h"
#include "dwconv.h"
#include "dwconv_index.h"

namespace ofa_fast {
namespace {

using dwconv::flipped_padding;
using dwconv::tap_input;
using dwconv::tap_output;

constexpr int kBlock = 256;  // threads per block (every kernel)
constexpr int kRows = 4;     // NCHW tiles: output rows per thread
constexpr int kPix = 4;      // channels_last: output pixels per thread along W
constexpr int kWgradBatch = 8;  // channels_last filter gradient: taps reduced per pass
// Dynamic shared memory usable without an opt-in on every arch.
constexpr size_t kSmemBudget = 48 * 1024;
// Tiles take strides and dilations up to this; beyond, the direct kernels (keeps the
// tile arithmetic far from overflow).
constexpr int64_t kMaxTiledStep = 64;

template <int V>
using Int = std::integral_constant<int, V>;

// Tap (i, j) of channel c of the active filter: the centre crop of the max weight,
// read in place (base already points at the crop).
template <typename T>
struct FilterView {
  const T* base;
  int64_t sc, si, sj;
  __device__ __forceinline__ T at(int64_t c, int64_t i, int64_t j) const {
    return base[c * sc + i * si + j * sj];
  }
};

// One depthwise correlation: out[n, c, o] = sum_t w[c, t] * in[n, c, tap_input(o, t)].
// The forward is exactly this; the stride-1 gradient of the input is this with in =
// grad_out, out = grad_in, the filter flipped and padding flipped_padding(k, d, p)
// (negative when p > (k - 1) * d).
struct ConvDims {
  int64_t N, C, H, W;  // input extent
  int64_t OH, OW;      // output extent
  int64_t k, s, d, p;
  bool flip;           // tap (i, j) uses filter tap (k - 1 - i, k - 1 - j)
};

// Division of non-negative values: the 32-bit instruction when both fit (64-bit
// division is a long software sequence on the GPU).
__device__ __forceinline__ int64_t udiv(int64_t a, int64_t b) {
  return ((a | b) >> 31) == 0 ? int64_t(uint32_t(a) / uint32_t(b)) : a / b;
}

template <typename T>
__device__ __forceinline__ T* shared_buffer() {
  OFA_DYNAMIC_SHARED(unsigned char, ofa_dwconv_smem);
  return reinterpret_cast<T*>(ofa_dwconv_smem);
}

// ---- NCHW tiles ---------------------------------------------------------------

// Output tile of one block: NP planes x (TH * kRows) rows x TW columns; thread
// (q, ty, tx) computes rows ty * kRows + [0, kRows) of column tx of plane q.
struct Tiles {
  int TW, TH, NP;
  int IR, IC;  // staged input rows and columns per plane
  int threads;  // NP * TH * TW rounded up to whole warps (block reductions shuffle)
  int64_t tiles_h, tiles_w;
  size_t smem;
};

int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Picks the tile for `planes` planes of the correlation P: wide enough for the row
// (up to a warp), tall enough for the plane, planes packed until the block is full;
// halved (planes, then rows, then columns) until the shared memory fits. Shared
// memory per block: per_plane + the input tile for each plane, per_warp for each warp.
// False when even a one-thread tile does not fit (huge dilation): use a direct kernel.
bool plan_tiles(const ConvDims& P, int64_t planes, size_t elem, size_t per_plane,
                size_t per_warp, Tiles* out) {
  if (P.s > kMaxTiledStep || P.d > kMaxTiledStep) return false;
  int TW = int(std::min<int64_t>(32, pow2_ceil(P.OW)));
  int TH = int(std::min<int64_t>(pow2_ceil(ceil_div(P.OH, kRows)), kBlock / TW));
  int NP = int(std::max<int64_t>(1, std::min<int64_t>(kBlock / (TW * TH), planes)));
  const int64_t reach = (P.k - 1) * P.d;
  for (;;) {
    const int64_t IR = (int64_t(TH) * kRows - 1) * P.s + reach + 1;
    const int64_t IC = (int64_t(TW) - 1) * P.s + reach + 1;
    const int threads = (NP * TH * TW + 31) / 32 * 32;
    const size_t smem = size_t(NP) * (size_t(IR * IC) * elem + per_plane) +
                        size_t(threads / 32) * per_warp;
    if (smem <= kSmemBudget) {
      *out = Tiles{TW, TH, NP, int(IR), int(IC), threads, ceil_div(P.OH, int64_t(TH) * kRows),
                   ceil_div(P.OW, TW), smem};
      return true;
    }
    if (NP > 1) NP /= 2;
    else if (TH > 1) TH /= 2;
    else if (TW > 1) TW /= 2;
    else return false;
  }
}

// Stages tl.NP zero-padded input tiles: tile[q][r][c] = in plane plane_of(q) at
// (ih0 + r, iw0 + c); zero outside the plane or when plane_of(q) < 0.
template <typename T, typename PlaneOf>
__device__ __forceinline__ void stage_tiles(const T* __restrict__ in, T* tile, const Tiles& tl,
                                            int64_t H, int64_t W, int64_t ih0, int64_t iw0,
                                            PlaneOf plane_of) {
  const int plane_elems = tl.IR * tl.IC;
  for (int e = threadIdx.x; e < tl.NP * plane_elems; e += blockDim.x) {
    const int q = e / plane_elems, rem = e - q * plane_elems;
    const int r = rem / tl.IC, c = rem - r * tl.IC;
    const int64_t plane = plane_of(q), ih = ih0 + r, iw = iw0 + c;
    T v = T(0);
    if (plane >= 0 && ih >= 0 && ih < H && iw >= 0 && iw < W) v = in[(plane * H + ih) * W + iw];
    tile[e] = v;
  }
}

template <typename T, int KS, int S>
__global__ void __launch_bounds__(kBlock)
    fwd_nchw_tiled_kernel(const T* __restrict__ in, FilterView<T> f, T* __restrict__ out,
                          ConvDims P, Tiles tl, int64_t nblocks) {
  using acc_t = at::opmath_type<T>;
  constexpr bool kFixed = KS > 0;
  const int k = kFixed ? KS : int(P.k);
  const int s = kFixed ? S : int(P.s);
  const int d = kFixed ? 1 : int(P.d);
  const int kk = k * k;
  const int plane_elems = tl.IR * tl.IC;
  acc_t* w_s = shared_buffer<acc_t>();              // [NP][k * k]
  T* tile = reinterpret_cast<T*>(w_s + tl.NP * kk);  // [NP][IR][IC]
  const int tid = threadIdx.x;
  const int tx = tid % tl.TW, ty = (tid / tl.TW) % tl.TH, q = tid / (tl.TW * tl.TH);
  const int64_t planes = P.N * P.C;
  const int64_t tiles = tl.tiles_h * tl.tiles_w;
  for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const int64_t group = b / tiles, t = b - group * tiles;
    const int64_t oh0 = t / tl.tiles_w * (int64_t(tl.TH) * kRows);
    const int64_t ow0 = t % tl.tiles_w * tl.TW;
    const int64_t plane0 = group * tl.NP;
    __syncthreads();  // the previous tile's readers are done with the buffers
    for (int e = tid; e < tl.NP * kk; e += blockDim.x) {
      const int pq = e / kk, tap = e - pq * kk;
      const int64_t plane = plane0 + pq;
      int i = tap / k, j = tap - (tap / k) * k;
      if (P.flip) {
        i = k - 1 - i;
        j = k - 1 - j;
      }
      w_s[e] = plane < planes ? acc_t(f.at(plane % P.C, i, j)) : acc_t(0);
    }
    stage_tiles(in, tile, tl, P.H, P.W, tap_input(oh0, 0, s, d, P.p), tap_input(ow0, 0, s, d, P.p),
                [&](int pq) -> int64_t { return plane0 + pq < planes ? plane0 + pq : -1; });
    __syncthreads();
    if (q >= tl.NP || plane0 + q >= planes) continue;
    const int64_t plane = plane0 + q;
    const acc_t* wq = w_s + q * kk;
    const T* base = tile + q * plane_elems + ty * kRows * s * tl.IC + tx * s;
    acc_t acc[kRows];
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) acc[rr] = acc_t(0);
    if constexpr (kFixed) {
      acc_t wr[KS * KS];
#pragma unroll
      for (int t2 = 0; t2 < KS * KS; ++t2) wr[t2] = wq[t2];
      // Input row r of the thread's window feeds output row rr through filter row r - rr*S.
#pragma unroll
      for (int r = 0; r < (kRows - 1) * S + KS; ++r) {
        acc_t v[KS];
#pragma unroll
        for (int j = 0; j < KS; ++j) v[j] = acc_t(base[r * tl.IC + j]);
#pragma unroll
        for (int rr = 0; rr < kRows; ++rr) {
          const int i = r - rr * S;
          if (i >= 0 && i < KS) {
#pragma unroll
            for (int j = 0; j < KS; ++j) acc[rr] += wr[i * KS + j] * v[j];
          }
        }
      }
    } else {
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr)
        for (int i = 0; i < k; ++i) {
          const T* row = base + (rr * s + i * d) * tl.IC;
          for (int j = 0; j < k; ++j) acc[rr] += wq[i * k + j] * acc_t(row[j * d]);
        }
    }
    const int64_t ow = ow0 + tx;
    if (ow < P.OW) {
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr) {
        const int64_t oh = oh0 + ty * kRows + rr;
        if (oh < P.OH) out[(plane * P.OH + oh) * P.OW + ow] = T(acc[rr]);
      }
    }
  }
}

// Sums acc[t] over the block (whole warps) and writes the sums to out[0, KK).
// Fixed order: deterministic.
template <typename acc_t, int KK>
__device__ __forceinline__ void block_reduce_taps(const acc_t (&acc)[KK], acc_t* red,
                                                  acc_t* __restrict__ out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int t = 0; t < KK; ++t) {
    acc_t v = acc[t];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) red[warp * KK + t] = v;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < KK; t += blockDim.x) {
    acc_t sum = acc_t(0);
    for (int w = 0; w < warps; ++w) sum += red[w * KK + t];
    out[t] = sum;
  }
}

// Filter gradient of channel blockIdx.x over chunk blockIdx.y of its (batch group,
// tile) space; planes of a tile are NP batch items of the channel.
template <typename T, int KS, int S>
__global__ void __launch_bounds__(kBlock)
    wgrad_nchw_tiled_kernel(const T* __restrict__ x, const T* __restrict__ go,
                            at::opmath_type<T>* __restrict__ partial, ConvDims P, Tiles tl,
                            int64_t chunks) {
  using acc_t = at::opmath_type<T>;
  constexpr int KK = KS * KS;
  acc_t* red = shared_buffer<acc_t>();                             // [warps][KK]
  T* tile = reinterpret_cast<T*>(red + (blockDim.x / 32) * KK);  // [NP][IR][IC]
  const int64_t c = blockIdx.x, chunk = blockIdx.y;
  const int tid = threadIdx.x;
  const int tx = tid % tl.TW, ty = (tid / tl.TW) % tl.TH, q = tid / (tl.TW * tl.TH);
  const int plane_elems = tl.IR * tl.IC;
  const int64_t tiles = tl.tiles_h * tl.tiles_w;
  const int64_t total = ceil_div(P.N, int64_t(tl.NP)) * tiles;
  const int64_t t_begin = total * chunk / chunks, t_end = total * (chunk + 1) / chunks;
  acc_t acc[KK];
#pragma unroll
  for (int t = 0; t < KK; ++t) acc[t] = acc_t(0);
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t group = t / tiles, tt = t - group * tiles;
    const int64_t oh0 = tt / tl.tiles_w * (int64_t(tl.TH) * kRows);
    const int64_t ow0 = tt % tl.tiles_w * tl.TW;
    const int64_t n0 = group * tl.NP;
    __syncthreads();  // the previous tile's readers are done
    stage_tiles(x, tile, tl, P.H, P.W, tap_input(oh0, 0, S, 1, P.p), tap_input(ow0, 0, S, 1, P.p),
                [&](int pq) -> int64_t { return n0 + pq < P.N ? (n0 + pq) * P.C + c : -1; });
    __syncthreads();
    if (q >= tl.NP || n0 + q >= P.N) continue;
    const int64_t plane = (n0 + q) * P.C + c;
    const int64_t ow = ow0 + tx;
    acc_t g[kRows];
    bool ok[kRows];
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) {
      const int64_t oh = oh0 + ty * kRows + rr;
      ok[rr] = oh < P.OH && ow < P.OW;
      g[rr] = ok[rr] ? acc_t(go[(plane * P.OH + oh) * P.OW + ow]) : acc_t(0);
    }
    const T* base = tile + q * plane_elems + ty * kRows * S * tl.IC + tx * S;
#pragma unroll
    for (int r = 0; r < (kRows - 1) * S + KS; ++r) {
      acc_t v[KS];
#pragma unroll
      for (int j = 0; j < KS; ++j) v[j] = acc_t(base[r * tl.IC + j]);
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr) {
        const int i = r - rr * S;
        if (i >= 0 && i < KS && ok[rr]) {
#pragma unroll
          for (int j = 0; j < KS; ++j) acc[i * KS + j] += g[rr] * v[j];
        }
      }
    }
  }
  block_reduce_taps<acc_t, KK>(acc, red, partial + (chunk * P.C + c) * KK);
}

// ---- channels_last ------------------------------------------------------------
// Block (CB, PY): threadIdx.x = channel within the block's CB channels (blockIdx.x),
// threadIdx.y = pixel lane. Filter taps staged as [k * k][CB] in shared memory, then
// kept in registers.

template <typename T, int KS>
__device__ __forceinline__ void stage_taps_nhwc(FilterView<T> f, int64_t c0, int64_t C, bool flip,
                                                at::opmath_type<T>* w_s) {
  using acc_t = at::opmath_type<T>;
  const int CB = blockDim.x;
  for (int e = threadIdx.y * CB + threadIdx.x; e < KS * KS * CB; e += CB * blockDim.y) {
    const int tap = e / CB, cl = e - tap * CB;
    int i = tap / KS, j = tap % KS;
    if (flip) {
      i = KS - 1 - i;
      j = KS - 1 - j;
    }
    w_s[e] = c0 + cl < C ? acc_t(f.at(c0 + cl, i, j)) : acc_t(0);
  }
}

// SPAN consecutive pixels of one channels_last input row, starting at column iw0, as
// accumulator values (zero outside [0, W)); xr points at the row's channel.
template <typename T, typename acc_t, int SPAN>
__device__ __forceinline__ void load_row_span(const T* xr, int64_t iw0, int64_t W, int64_t C,
                                              acc_t* v) {
#pragma unroll
  for (int u = 0; u < SPAN; ++u) {
    const int64_t iw = iw0 + u;
    v[u] = (iw >= 0 && iw < W) ? acc_t(xr[iw * C]) : acc_t(0);
  }
}

template <typename T, int KS, int S>
__global__ void __launch_bounds__(kBlock)
    fwd_nhwc_kernel(const T* __restrict__ in, FilterView<T> f, T* __restrict__ out, ConvDims P,
                    int64_t groups_w) {
  using acc_t = at::opmath_type<T>;
  constexpr int KK = KS * KS, SPAN = (kPix - 1) * S + KS;
  const int CB = blockDim.x, PY = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c0 = int64_t(blockIdx.x) * CB, c = c0 + tx;
  acc_t* w_s = shared_buffer<acc_t>();  // [KK][CB]
  stage_taps_nhwc<T, KS>(f, c0, P.C, P.flip, w_s);
  __syncthreads();
  if (c >= P.C) return;
  acc_t wr[KK];
#pragma unroll
  for (int t = 0; t < KK; ++t) wr[t] = w_s[t * CB + tx];
  const int64_t npg = P.N * P.OH * groups_w;
  for (int64_t pg = int64_t(blockIdx.y) * PY + ty; pg < npg; pg += int64_t(gridDim.y) * PY) {
    const int64_t row = udiv(pg, groups_w);  // n * OH + oh
    const int64_t ow0 = (pg - row * groups_w) * kPix;
    const int64_t n = udiv(row, P.OH), oh = row - n * P.OH;
    const int64_t iw0 = tap_input(ow0, 0, S, 1, P.p);
    acc_t acc[kPix];
#pragma unroll
    for (int u = 0; u < kPix; ++u) acc[u] = acc_t(0);
#pragma unroll
    for (int i = 0; i < KS; ++i) {
      const int64_t ih = tap_input(oh, i, S, 1, P.p);
      if (ih < 0 || ih >= P.H) continue;
      acc_t v[SPAN];
      load_row_span<T, acc_t, SPAN>(in + (n * P.H + ih) * P.W * P.C + c, iw0, P.W, P.C, v);
#pragma unroll
      for (int u = 0; u < kPix; ++u)
#pragma unroll
        for (int j = 0; j < KS; ++j) acc[u] += wr[i * KS + j] * v[u * S + j];
    }
    T* yr = out + (row * P.OW + ow0) * P.C + c;
#pragma unroll
    for (int u = 0; u < kPix; ++u)
      if (ow0 + u < P.OW) yr[u * P.C] = T(acc[u]);
  }
}

// Gradient of the input (stride S > 1), one input pixel per thread: the outputs
// reading it through tap (i, j) are (tap_output(ih, i), tap_output(iw, j)).
// P holds the forward's dims.
template <typename T, int KS, int S>
__global__ void __launch_bounds__(kBlock)
    bwd_input_nhwc_kernel(const T* __restrict__ go, FilterView<T> f, T* __restrict__ gx,
                          ConvDims P) {
  using acc_t = at::opmath_type<T>;
  constexpr int KK = KS * KS;
  const int CB = blockDim.x, PY = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c0 = int64_t(blockIdx.x) * CB, c = c0 + tx;
  acc_t* w_s = shared_buffer<acc_t>();  // [KK][CB]
  stage_taps_nhwc<T, KS>(f, c0, P.C, false, w_s);
  __syncthreads();
  if (c >= P.C) return;
  acc_t wr[KK];
#pragma unroll
  for (int t = 0; t < KK; ++t) wr[t] = w_s[t * CB + tx];
  const int64_t npix = P.N * P.H * P.W;
  for (int64_t pix = int64_t(blockIdx.y) * PY + ty; pix < npix; pix += int64_t(gridDim.y) * PY) {
    const int64_t row = udiv(pix, P.W);  // n * H + ih
    const int64_t iw = pix - row * P.W;
    const int64_t n = udiv(row, P.H), ih = row - n * P.H;
    int64_t ow[KS];
#pragma unroll
    for (int j = 0; j < KS; ++j) ow[j] = tap_output(iw, j, S, P.d, P.p, P.OW);
    acc_t acc = acc_t(0);
#pragma unroll
    for (int i = 0; i < KS; ++i) {
      const int64_t oh = tap_output(ih, i, S, P.d, P.p, P.OH);
      if (oh < 0) continue;
      const T* gr = go + (n * P.OH + oh) * P.OW * P.C + c;
#pragma unroll
      for (int j = 0; j < KS; ++j)
        if (ow[j] >= 0) acc += wr[i * KS + j] * acc_t(gr[ow[j] * P.C]);
    }
    gx[pix * P.C + c] = T(acc);
  }
}

// Filter gradient for the block's channels over chunk blockIdx.y of the pixel groups
// (kPix outputs along W each); partial sums of the chunk go to partial[chunk][c][tap].
template <typename T, int KS, int S>
__global__ void __launch_bounds__(kBlock)
    wgrad_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ go,
                      at::opmath_type<T>* __restrict__ partial, ConvDims P, int64_t groups_w,
                      int64_t chunks) {
  using acc_t = at::opmath_type<T>;
  constexpr int KK = KS * KS, SPAN = (kPix - 1) * S + KS;
  const int CB = blockDim.x, PY = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * CB + tx, chunk = blockIdx.y;
  const int64_t npg = P.N * P.OH * groups_w;
  const int64_t g_begin = npg * chunk / chunks, g_end = npg * (chunk + 1) / chunks;
  acc_t acc[KK];
#pragma unroll
  for (int t = 0; t < KK; ++t) acc[t] = acc_t(0);
  if (c < P.C) {
    for (int64_t pg = g_begin + ty; pg < g_end; pg += PY) {
      const int64_t row = udiv(pg, groups_w);  // n * OH + oh
      const int64_t ow0 = (pg - row * groups_w) * kPix;
      const int64_t n = udiv(row, P.OH), oh = row - n * P.OH;
      acc_t g[kPix];
      bool ok[kPix];
#pragma unroll
      for (int u = 0; u < kPix; ++u) {
        ok[u] = ow0 + u < P.OW;
        g[u] = ok[u] ? acc_t(go[(row * P.OW + ow0 + u) * P.C + c]) : acc_t(0);
      }
      const int64_t iw0 = tap_input(ow0, 0, S, 1, P.p);
#pragma unroll
      for (int i = 0; i < KS; ++i) {
        const int64_t ih = tap_input(oh, i, S, 1, P.p);
        if (ih < 0 || ih >= P.H) continue;
        acc_t v[SPAN];
        load_row_span<T, acc_t, SPAN>(x + (n * P.H + ih) * P.W * P.C + c, iw0, P.W, P.C, v);
#pragma unroll
        for (int u = 0; u < kPix; ++u)
          if (ok[u]) {
#pragma unroll
            for (int j = 0; j < KS; ++j) acc[i * KS + j] += g[u] * v[u * S + j];
          }
      }
    }
  }
  // Sum over the pixel lanes, kWgradBatch taps at a time (bounded shared memory).
  acc_t* red = shared_buffer<acc_t>();  // [PY][kWgradBatch][CB]
#pragma unroll
  for (int t0 = 0; t0 < KK; t0 += kWgradBatch) {
#pragma unroll
    for (int b = 0; b < kWgradBatch; ++b)
      if (t0 + b < KK) red[(ty * kWgradBatch + b) * CB + tx] = acc[t0 + b];
    __syncthreads();
    for (int b = ty; b < kWgradBatch; b += PY) {
      if (t0 + b < KK && c < P.C) {
        acc_t sum = acc_t(0);
        for (int y = 0; y < PY; ++y) sum += red[(y * kWgradBatch + b) * CB + tx];
        partial[(chunk * P.C + c) * KK + t0 + b] = sum;
      }
    }
    __syncthreads();
  }
}

// ---- direct kernels (any k, s, d, p; either memory format) ----------------------

// Element idx of a dense [N, C, A, B] tensor in NCHW or NHWC memory order.
struct Coord {
  int64_t n, c, a, b;
};
__device__ __forceinline__ Coord coord_of(int64_t idx, int64_t C, int64_t A, int64_t B, bool cl) {
  Coord r;
  if (cl) {
    const int64_t pix = udiv(idx, C);
    r.c = idx - pix * C;
    const int64_t row = udiv(pix, B);
    r.b = pix - row * B;
    r.n = udiv(row, A);
    r.a = row - r.n * A;
  } else {
    const int64_t row = udiv(idx, B);
    r.b = idx - row * B;
    const int64_t plane = udiv(row, A);
    r.a = row - plane * A;
    r.n = udiv(plane, C);
    r.c = plane - r.n * C;
  }
  return r;
}
__device__ __forceinline__ int64_t offset_of(int64_t n, int64_t c, int64_t a, int64_t b,
                                             int64_t C, int64_t A, int64_t B, bool cl) {
  return cl ? ((n * A + a) * B + b) * C + c : ((n * C + c) * A + a) * B + b;
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    fwd_direct_kernel(const T* __restrict__ in, FilterView<T> f, T* __restrict__ out, ConvDims P,
                      bool cl, int64_t total) {
  using acc_t = at::opmath_type<T>;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Coord o = coord_of(idx, P.C, P.OH, P.OW, cl);
    acc_t acc = acc_t(0);
    for (int64_t i = 0; i < P.k; ++i) {
      const int64_t ih = tap_input(o.a, i, P.s, P.d, P.p);
      if (ih < 0 || ih >= P.H) continue;
      for (int64_t j = 0; j < P.k; ++j) {
        const int64_t iw = tap_input(o.b, j, P.s, P.d, P.p);
        if (iw < 0 || iw >= P.W) continue;
        const T w = P.flip ? f.at(o.c, P.k - 1 - i, P.k - 1 - j) : f.at(o.c, i, j);
        acc += acc_t(w) * acc_t(in[offset_of(o.n, o.c, ih, iw, P.C, P.H, P.W, cl)]);
      }
    }
    out[idx] = T(acc);
  }
}

// Gradient of the input by gathering: grad_in[ih, iw] = sum over taps (i, j) of
// w[i, j] * grad_out[tap_output(ih, i), tap_output(iw, j)] where both exist.
// P holds the forward's dims.
template <typename T, int KS, int S>
__global__ void __launch_bounds__(kBlock)
    bwd_input_direct_kernel(const T* __restrict__ go, FilterView<T> f, T* __restrict__ gx,
                            ConvDims P, bool cl, int64_t total) {
  using acc_t = at::opmath_type<T>;
  const int k = KS > 0 ? KS : int(P.k);
  const int64_t s = S > 0 ? S : P.s;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Coord e = coord_of(idx, P.C, P.H, P.W, cl);
    acc_t acc = acc_t(0);
    if constexpr (KS > 0) {
      int64_t ow[KS];
#pragma unroll
      for (int j = 0; j < KS; ++j) ow[j] = tap_output(e.b, j, s, P.d, P.p, P.OW);
#pragma unroll
      for (int i = 0; i < KS; ++i) {
        const int64_t oh = tap_output(e.a, i, s, P.d, P.p, P.OH);
        if (oh < 0) continue;
#pragma unroll
        for (int j = 0; j < KS; ++j)
          if (ow[j] >= 0)
            acc += acc_t(f.at(e.c, i, j)) *
                   acc_t(go[offset_of(e.n, e.c, oh, ow[j], P.C, P.OH, P.OW, cl)]);
      }
    } else {
      for (int i = 0; i < k; ++i) {
        const int64_t oh = tap_output(e.a, i, s, P.d, P.p, P.OH);
        if (oh < 0) continue;
        for (int j = 0; j < k; ++j) {
          const int64_t ow = tap_output(e.b, j, s, P.d, P.p, P.OW);
          if (ow < 0) continue;
          acc += acc_t(f.at(e.c, i, j)) * acc_t(go[offset_of(e.n, e.c, oh, ow, P.C, P.OH, P.OW, cl)]);
        }
      }
    }
    gx[idx] = T(acc);
  }
}

// Filter gradient of channel blockIdx.x over chunk blockIdx.y of its N * OH * OW
// outputs: thread lanes split the outputs of each tap; lanes summed in order.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    wgrad_direct_kernel(const T* __restrict__ x, const T* __restrict__ go,
                        at::opmath_type<T>* __restrict__ partial, ConvDims P, bool cl,
                        int64_t chunks) {
  using acc_t = at::opmath_type<T>;
  const int64_t c = blockIdx.x, chunk = blockIdx.y;
  const int k = int(P.k), kk = k * k;
  const int lanes = max(1, int(blockDim.x) / kk);
  const int64_t M = P.N * P.OH * P.OW;
  const int64_t m_begin = M * chunk / chunks, m_end = M * (chunk + 1) / chunks;
  acc_t* red = shared_buffer<acc_t>();  // [lanes][kk]
  for (int u = threadIdx.x; u < lanes * kk; u += blockDim.x) {
    const int tap = u % kk, lane = u / kk;
    const int i = tap / k, j = tap % k;
    acc_t sum = acc_t(0);
    for (int64_t m = m_begin + lane; m < m_end; m += lanes) {
      const int64_t row = udiv(m, P.OW);
      const int64_t ow = m - row * P.OW;
      const int64_t n = udiv(row, P.OH), oh = row - n * P.OH;
      const int64_t ih = tap_input(oh, i, P.s, P.d, P.p), iw = tap_input(ow, j, P.s, P.d, P.p);
      if (ih < 0 || ih >= P.H || iw < 0 || iw >= P.W) continue;
      sum += acc_t(go[offset_of(n, c, oh, ow, P.C, P.OH, P.OW, cl)]) *
             acc_t(x[offset_of(n, c, ih, iw, P.C, P.H, P.W, cl)]);
    }
    red[u] = sum;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < kk; t += blockDim.x) {
    acc_t sum = acc_t(0);
    for (int lane = 0; lane < lanes; ++lane) sum += red[lane * kk + t];
    partial[(chunk * P.C + c) * kk + t] = sum;
  }
}

// grad_w[c, crop + i, crop + j] = sum over chunks (in order) of partial[chunk][c][i*k+j].
template <typename T>
__global__ void __launch_bounds__(kBlock)
    wgrad_finish_kernel(const at::opmath_type<T>* __restrict__ partial, int64_t chunks, int64_t C,
                        int k, T* __restrict__ gw_crop, int64_t s0, int64_t s2, int64_t s3) {
  using acc_t = at::opmath_type<T>;
  const int64_t kk = int64_t(k) * k;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < C * kk;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = idx / kk, t = idx - c * kk;
    acc_t sum = acc_t(0);
    for (int64_t ch = 0; ch < chunks; ++ch) sum += partial[(ch * C + c) * kk + t];
    gw_crop[c * s0 + (t / k) * s2 + (t % k) * s3] = T(sum);
  }
}

// ---- host side ------------------------------------------------------------------

// Calls fn(Int<KS>, Int<S>) for the compiled-in kernel sizes at stride ss; false if k
// has none.
template <typename SS, typename Fn>
bool with_fixed_k(int64_t k, SS ss, Fn&& fn) {
  switch (k) {
    case 3: fn(Int<3>{}, ss); return true;
    case 5: fn(Int<5>{}, ss); return true;
    case 7: fn(Int<7>{}, ss); return true;
    default: return false;
  }
}
// Same for (k, s) with dilation 1 (the register-window kernels assume it).
template <typename Fn>
bool with_fixed_shape(int64_t k, int64_t s, int64_t d, Fn&& fn) {
  if (d != 1) return false;
  if (s == 1) return with_fixed_k(k, Int<1>{}, fn);
  if (s == 2) return with_fixed_k(k, Int<2>{}, fn);
  return false;
}

int grid_size(int64_t blocks) {
  return int(std::max<int64_t>(1, std::min<int64_t>(blocks, INT_MAX)));
}
int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return std::max(lo, std::min(v, hi)); }

// Blocks that fill the GPU a few times over: enough to hide latency, few enough that
// per-block set-up (staged taps, reductions) is amortised.
int64_t target_blocks() {
  return int64_t(gpu::sm_count()) * 8;
}

// Channel lanes of the channels-last kernels: a warp across channels when C allows.
int channel_lanes(int64_t C) { return int(std::min<int64_t>(32, pow2_ceil(C))); }

at::MemoryFormat format_of(const DwGeometry& g) {
  return g.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

ConvDims forward_dims(const DwGeometry& g) {
  return ConvDims{g.N, g.C, g.H, g.W, g.OH, g.OW, g.k, g.s, g.d, g.p, false};
}

template <typename T>
FilterView<T> filter_of(const at::Tensor& weight, const DwGeometry& g) {
  return FilterView<T>{
      weight.const_data_ptr<T>() + g.crop * weight.stride(2) + g.crop * weight.stride(3),
      weight.stride(0), weight.stride(2), weight.stride(3)};
}

void check_cuda(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(gpu::on_device(input.device()), op, ": input is on ", input.device(), "; this kernel takes CUDA tensors");
  TORCH_CHECK(gpu::on_device(weight.device()), op, ": weight is on ", weight.device(), "; this kernel takes CUDA tensors");
}

// out = the correlation P of in (forward, or flipped stride-1 gradient of the input).
template <typename T>
void launch_correlation(const T* in, FilterView<T> f, T* out, const ConvDims& P, bool channels_last) {
  using acc_t = at::opmath_type<T>;
  const cudaStream_t stream = gpu::current_stream();
  if (channels_last) {
    const int CB = channel_lanes(P.C), PY = kBlock / CB;
    const int64_t cblocks = ceil_div(P.C, int64_t(CB));
    const int64_t groups_w = ceil_div(P.OW, int64_t(kPix));
    const int64_t npg = P.N * P.OH * groups_w;
    const int64_t pblocks =
        clamp64(ceil_div(target_blocks(), cblocks), 1, std::min<int64_t>(ceil_div(npg, PY), 65535));
    const bool done = with_fixed_shape(P.k, P.s, P.d, [&](auto ks, auto ss) {
      constexpr int KS = decltype(ks)::value, S = decltype(ss)::value;
      const size_t smem = size_t(KS * KS) * CB * sizeof(acc_t);
      OFA_CUDA_LAUNCH(dim3(grid_size(cblocks), unsigned(pblocks)), dim3(CB, PY), smem, stream, fwd_nhwc_kernel<T, KS, S>)(
          in, f, out, P, groups_w);
      OFA_CUDA_LAUNCH_CHECK();
    });
    if (done) return;
  } else {
    Tiles tl;
    if (plan_tiles(P, P.N * P.C, sizeof(T), size_t(P.k * P.k) * sizeof(acc_t), 0, &tl)) {
      const int64_t nblocks = ceil_div(P.N * P.C, int64_t(tl.NP)) * tl.tiles_h * tl.tiles_w;
      auto launch = [&](auto kernel) {
        OFA_CUDA_LAUNCH(grid_size(nblocks), tl.threads, tl.smem, stream, kernel)(in, f, out, P, tl, nblocks);
        OFA_CUDA_LAUNCH_CHECK();
      };
      const bool done = with_fixed_shape(P.k, P.s, P.d, [&](auto ks, auto ss) {
        launch(fwd_nchw_tiled_kernel<T, decltype(ks)::value, decltype(ss)::value>);
      });
      if (!done) launch(fwd_nchw_tiled_kernel<T, 0, 0>);
      return;
    }
  }
  const int64_t total = P.N * P.C * P.OH * P.OW;
  OFA_CUDA_LAUNCH(grid_size(ceil_div(total, int64_t(kBlock))), kBlock, 0, stream, fwd_direct_kernel<T>)(
      in, f, out, P, channels_last, total);
  OFA_CUDA_LAUNCH_CHECK();
}

template <typename T>
void launch_backward_input(const T* go, FilterView<T> f, T* gx, const DwGeometry& g) {
  using acc_t = at::opmath_type<T>;
  const cudaStream_t stream = gpu::current_stream();
  if (g.s == 1) {
    // Stride 1: the correlation of grad_out with the flipped filter, output = input extent.
    const ConvDims F{g.N, g.C, g.OH, g.OW, g.H, g.W, g.k, 1, g.d, flipped_padding(g.k, g.d, g.p), true};
    launch_correlation<T>(go, f, gx, F, g.channels_last);
    return;
  }
  const ConvDims P = forward_dims(g);
  if (g.channels_last && g.s == 2) {
    const int CB = channel_lanes(P.C), PY = kBlock / CB;
    const int64_t cblocks = ceil_div(P.C, int64_t(CB));
    const int64_t npix = P.N * P.H * P.W;
    const int64_t pblocks =
        clamp64(ceil_div(target_blocks(), cblocks), 1, std::min<int64_t>(ceil_div(npix, PY), 65535));
    const bool done = with_fixed_k(g.k, Int<2>{}, [&](auto ks, auto ss) {
      constexpr int KS = decltype(ks)::value, S = decltype(ss)::value;
      const size_t smem = size_t(KS * KS) * CB * sizeof(acc_t);
      OFA_CUDA_LAUNCH(dim3(grid_size(cblocks), unsigned(pblocks)), dim3(CB, PY), smem, stream, bwd_input_nhwc_kernel<T, KS, S>)(
          go, f, gx, P);
      OFA_CUDA_LAUNCH_CHECK();
    });
    if (done) return;
  }
  const int64_t total = P.N * P.C * P.H * P.W;
  const int grid = grid_size(ceil_div(total, int64_t(kBlock)));
  auto launch = [&](auto kernel) {
    OFA_CUDA_LAUNCH(grid, kBlock, 0, stream, kernel)(go, f, gx, P, g.channels_last, total);
    OFA_CUDA_LAUNCH_CHECK();
  };
  const bool done = g.s == 2 && with_fixed_k(g.k, Int<2>{}, [&](auto ks, auto ss) {
    launch(bwd_input_direct_kernel<T, decltype(ks)::value, decltype(ss)::value>);
  });
  if (!done) launch(bwd_input_direct_kernel<T, 0, 0>);
}

// Writes the filter gradient's active crop into gw (already zero elsewhere).
template <typename T>
void launch_backward_weight(const T* x, const T* go, const at::Tensor& gw, const DwGeometry& g,
                            const at::TensorOptions& options) {
  using acc_t = at::opmath_type<T>;
  const cudaStream_t stream = gpu::current_stream();
  const ConvDims P = forward_dims(g);
  const int64_t kk = g.k * g.k;
  const auto acc_options = options.dtype(at::toOpMathType(options.dtype().toScalarType()));
  at::Tensor partial;
  int64_t chunks = 0;
  auto scratch = [&](int64_t n) {
    chunks = n;
    partial = at::empty({chunks, g.C, kk}, acc_options);
    return partial.mutable_data_ptr<acc_t>();
  };

  bool done = false;
  if (g.channels_last) {
    const int CB = channel_lanes(P.C), PY = kBlock / CB;
    const int64_t cblocks = ceil_div(P.C, int64_t(CB));
    const int64_t groups_w = ceil_div(P.OW, int64_t(kPix));
    const int64_t npg = P.N * P.OH * groups_w;
    done = with_fixed_shape(g.k, g.s, g.d, [&](auto ks, auto ss) {
      constexpr int KS = decltype(ks)::value, S = decltype(ss)::value;
      acc_t* part = scratch(
          clamp64(ceil_div(target_blocks(), cblocks), 1, std::min<int64_t>(ceil_div(npg, PY), 65535)));
      const size_t smem = size_t(PY) * kWgradBatch * CB * sizeof(acc_t);
      OFA_CUDA_LAUNCH(dim3(grid_size(cblocks), unsigned(chunks)), dim3(CB, PY), smem, stream, wgrad_nhwc_kernel<T, KS, S>)(
          x, go, part, P, groups_w, chunks);
      OFA_CUDA_LAUNCH_CHECK();
    });
  } else {
    Tiles tl;
    if (plan_tiles(P, P.N, sizeof(T), 0, size_t(kk) * sizeof(acc_t), &tl)) {
      const int64_t total = ceil_div(P.N, int64_t(tl.NP)) * tl.tiles_h * tl.tiles_w;
      done = with_fixed_shape(g.k, g.s, g.d, [&](auto ks, auto ss) {
        constexpr int KS = decltype(ks)::value, S = decltype(ss)::value;
        acc_t* part = scratch(clamp64(ceil_div(target_blocks(), P.C), 1, std::min<int64_t>(total, 65535)));
        OFA_CUDA_LAUNCH(dim3(grid_size(P.C), unsigned(chunks)), tl.threads, tl.smem, stream, wgrad_nchw_tiled_kernel<T, KS, S>)(
            x, go, part, P, tl, chunks);
        OFA_CUDA_LAUNCH_CHECK();
      });
    }
  }
  if (!done) {
    const int64_t M = P.N * P.OH * P.OW;
    acc_t* part = scratch(clamp64(ceil_div(target_blocks(), P.C), 1, std::min<int64_t>(ceil_div(M, kBlock), 65535)));
    const int64_t lanes = std::max<int64_t>(1, kBlock / kk);
    const size_t smem = size_t(lanes * kk) * sizeof(acc_t);
    OFA_CUDA_LAUNCH(dim3(grid_size(P.C), unsigned(chunks)), kBlock, smem, stream, wgrad_direct_kernel<T>)(
        x, go, part, P, g.channels_last, chunks);
    OFA_CUDA_LAUNCH_CHECK();
  }
  T* crop = gw.mutable_data_ptr<T>() + g.crop * gw.stride(2) + g.crop * gw.stride(3);
  OFA_CUDA_LAUNCH(grid_size(ceil_div(g.C * kk, int64_t(kBlock))), kBlock, 0, stream, wgrad_finish_kernel<T>)(
      partial.const_data_ptr<acc_t>(), chunks, g.C, int(g.k), crop, gw.stride(0), gw.stride(2),
      gw.stride(3));
  OFA_CUDA_LAUNCH_CHECK();
}

}  // namespace

at::Tensor dwconv2d_cuda(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                         int64_t stride, int64_t dilation, int64_t padding) {
  const char* op = "ofa_fast.dwconv2d";
  const DwGeometry g = dwconv_geometry(input, weight, kernel_size, stride, dilation, padding, op);
  check_cuda(op, input, weight);
  const gpu::DeviceGuard guard(input.device());
  const at::Tensor x = input.contiguous(format_of(g));
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, input.options().memory_format(format_of(g)));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ofa_fast_dwconv2d_cuda", [&] {
    launch_correlation<scalar_t>(x.const_data_ptr<scalar_t>(), filter_of<scalar_t>(weight, g),
                                 y.mutable_data_ptr<scalar_t>(), forward_dims(g), g.channels_last);
  });
  return y;
}

at::Tensor dwconv2d_backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, int64_t kernel_size,
                                        int64_t stride, int64_t dilation, int64_t padding) {
  const char* op = "ofa_fast.dwconv2d_backward_input";
  const DwGeometry g = dwconv_geometry(input, weight, kernel_size, stride, dilation, padding, op);
  dwconv_check_grad_output(grad_output, input, g, op);
  check_cuda(op, input, weight);
  const gpu::DeviceGuard guard(input.device());
  at::Tensor gx = at::empty({g.N, g.C, g.H, g.W}, input.options().memory_format(format_of(g)));
  if (gx.numel() == 0) return gx;
  const at::Tensor go = grad_output.contiguous(format_of(g));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ofa_fast_dwconv2d_backward_input_cuda", [&] {
    launch_backward_input<scalar_t>(go.const_data_ptr<scalar_t>(), filter_of<scalar_t>(weight, g),
                                    gx.mutable_data_ptr<scalar_t>(), g);
  });
  return gx;
}

at::Tensor dwconv2d_backward_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& weight, int64_t kernel_size,
                                         int64_t stride, int64_t dilation, int64_t padding) {
  const char* op = "ofa_fast.dwconv2d_backward_weight";
  const DwGeometry g = dwconv_geometry(input, weight, kernel_size, stride, dilation, padding, op);
  dwconv_check_grad_output(grad_output, input, g, op);
  check_cuda(op, input, weight);
  const gpu::DeviceGuard guard(input.device());
  // Full-size gradient of the max weight: zero outside the active crop of weight[:C].
  at::Tensor gw = at::zeros(weight.sizes(), weight.options());
  if (g.N * g.OH * g.OW == 0) return gw;
  const at::Tensor x = input.contiguous(format_of(g));
  const at::Tensor go = grad_output.contiguous(format_of(g));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ofa_fast_dwconv2d_backward_weight_cuda", [&] {
    launch_backward_weight<scalar_t>(x.const_data_ptr<scalar_t>(), go.const_data_ptr<scalar_t>(), gw, g,
                                     input.options());
  });
  return gw;
}

// Both gradients (the fused op the CPU implements in one pass): here the two kernels.
std::tuple<at::Tensor, at::Tensor> dwconv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    int64_t kernel_size, int64_t stride, int64_t dilation, int64_t padding,
    std::array<bool, 2> output_mask) {
  at::Tensor gx = output_mask[0]
                      ? dwconv2d_backward_input_cuda(grad_output, input, weight, kernel_size, stride,
                                                     dilation, padding)
                      : at::empty({0}, input.options());
  at::Tensor gw = output_mask[1]
                      ? dwconv2d_backward_weight_cuda(grad_output, input, weight, kernel_size,
                                                      stride, dilation, padding)
                      : at::empty({0}, weight.options());
  return {gx, gw};
}

#ifndef OFA_FAST_CUDA_EMULATION  // the emulator's tests call the functions directly
TORCH_LIBRARY_IMPL(ofa_fast, CUDA, m) {
  m.impl("dwconv2d", &dwconv2d_cuda);
  m.impl("dwconv2d_backward_input", &dwconv2d_backward_input_cuda);
  m.impl("dwconv2d_backward_weight", &dwconv2d_backward_weight_cuda);
  m.impl("dwconv2d_backward", &dwconv2d_backward_cuda);
}
#endif

}  // namespace ofa_fast

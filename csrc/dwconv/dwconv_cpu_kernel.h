// CPU kernels of the elastic depthwise convolution: forward, gradient of the input,
// gradient of the filter. Plain C++ on Vec<T, V> (cpu_vec.h), no torch:
// dwconv_cpu.cpp owns the tensors, the threads and the instruction-set dispatch, and
// calls these on ranges of independent work units.
//
// One unit is one image and one block of V = kLanes<T> channels (16 floats: one
// AVX-512 register). Its input is staged into a dense, zero-padded tile of pixel
// vectors, tile[row][col][V]: from channels_last a strided copy, from NCHW a 16 x 16
// register transpose. Every tap of every output pixel is then one aligned,
// unchecked vector load, whatever the memory format, the borders, the stride or the
// plane size (8x8 planes fill whole vectors, which vectorising along the width
// could not). Outputs go straight to a channels_last tensor, or through a tile and a
// transpose to NCHW. The filter comes packed as [k * k][V] per channel block, read
// once per call through the max weight's strides: no copy of the max weight.
//
// In float32 on AVX-512 the kernels skip the tiles where that measured faster
// (direct_fwd / direct_bwd pick, fwd_direct / bwd_direct run):
// - channels_last: a whole block of a pixel is one vector load in place
//   (fwd_cl_direct, bwd_cl_direct);
// - NCHW at stride 1, k = 3: vectors along the rows of a staged, zero-padded plane, no
//   transposes (fwd_nchw_rows, bwd_nchw_rows).
// The rest (the forward at k = 7 stride 1, NCHW at k = 5 and 7, rows too narrow for
// those paths, NCHW at stride 2, float64, CPUs without AVX-512) keeps the tiles;
// at stride 1 their float32 AVX-512 filter gradient runs in register blocks
// (wgrad_tile_k). Tiles, staged planes and packed filters start on cache lines
// (AlignedVector): whole-register loads that straddle two lines cost two.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/cpu_vec.h"
#include "dwconv_index.h"

namespace ofa_fast {
namespace cpu {
namespace dw {

using ofa_fast::dwconv::phase_count;
using ofa_fast::dwconv::phase_tap_output_offset;
using ofa_fast::dwconv::tap_matches_phase;

// Largest kernel size the kernels take (the op checks it first).
constexpr int kMaxK = ofa_fast::dwconv::kMaxKernelSize;

// Bytes of tile rows a loop may keep hot in the L1 data cache (48 KB on recent Xeons;
// half of it leaves room for the rest).
constexpr int64_t kL1Budget = 24 * 1024;
// Bytes of rows (all channels) a loop over channel blocks may keep in the L2 cache.
constexpr int64_t kL2Band = 256 * 1024;

struct Problem {
  int64_t N, C, H, W;  // input (active channels only)
  int64_t OH, OW;      // output
  int64_t k, s, d, p;  // active kernel size, stride, dilation, padding
};

// Tap (i, j) of channel c of the active filter is base[c * sc + i * si + j * sj]:
// the centre crop of the max weight, read in place.
template <typename T>
struct Filter {
  const T* base;
  int64_t sc, si, sj;
  OFA_INLINE T at(int64_t c, int64_t i, int64_t j) const { return base[c * sc + i * si + j * sj]; }
};

// Destination of a filter gradient: same addressing, writable.
template <typename T>
struct FilterGrad {
  T* base;
  int64_t sc, si, sj;
  OFA_INLINE T& at(int64_t c, int64_t i, int64_t j) const { return base[c * sc + i * si + j * sj]; }
};

// Element (n, c, h, w) of a tensor is at n * sn + c * sc + h * sh + w * sw; the
// kernels take channels_last-contiguous tensors (sc == 1) or NCHW-contiguous ones,
// whose every (n, c) plane is contiguous (sh == W, sw == 1).
struct Layout {
  int64_t sn, sc, sh, sw;
  OFA_INLINE bool channels_last() const { return sc == 1 && sw != 1; }
};

template <typename T>
OFA_INLINE int64_t channel_blocks(int64_t C) {
  return (C + kLanes<T> - 1) / kLanes<T>;
}

// ---------------------------------------------------------------------------------
// Tiles: dense [rows][cols][V] planes of pixel vectors of one image and channel block
// ---------------------------------------------------------------------------------

// tile[r][q][l] = src(c = l, h = r - pad_r, w = q - pad_c) for l < nch, zero for the
// padded lanes. `src` points at (n, cb, 0, 0). Only the pixels the H x W source covers
// are written: the zero border is the caller's, a buffer that starts zeroed and that
// every unit of a call fills at the same pixels (rewriting it per unit cost up to 20%
// of the forward at 8x8 images, where the border is two thirds of the tile).
template <typename T>
OFA_INLINE void load_tile(T* tile, int64_t rows, int64_t cols, const T* src, const Layout& L,
                          int64_t H, int64_t W, int64_t pad_r, int64_t pad_c, int64_t nch) {
  constexpr int V = kLanes<T>;
  const int64_t r0 = std::clamp<int64_t>(pad_r, 0, rows), r1 = std::clamp<int64_t>(pad_r + H, r0, rows);
  const int64_t q0 = std::clamp<int64_t>(pad_c, 0, cols), q1 = std::clamp<int64_t>(pad_c + W, q0, cols);
  const int64_t row = cols * V;
  if (L.channels_last()) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* srow = src + (r - pad_r) * L.sh + (q0 - pad_c) * L.sw;
      T* trow = tile + r * row;
      for (int64_t q = q0; q < q1; ++q, srow += L.sw) {
        T* dst = trow + q * V;
        if (nch == V) {
          Vec<T, V>::load(srow).store(dst);
        } else {
          for (int64_t l = 0; l < V; ++l) dst[l] = l < nch ? srow[l] : T(0);
        }
      }
    }
    return;
  }
  // NCHW: each channel's plane is contiguous, so V consecutive source pixels of V
  // channels are one register transpose away from V pixel vectors, whatever the width
  // (rows of 8 or 7 pixels would waste most of a transpose done row by row).
  const int64_t HW = H * W;
  if (nch == V && HW % V == 0 && (W % V == 0 || V % W == 0) && pad_r >= 0 && pad_c >= 0 &&
      pad_r + H <= rows && pad_c + W <= cols) {
    // Whole registers, the common case: the V pixels of every source stretch land at
    // the same offsets from their first one (one row of a wide plane, or V / W rows of
    // a narrow one), so the loop has no per-lane or per-pixel branches.
    int64_t off[V];
    for (int t = 0; t < V; ++t) off[t] = (W >= V ? t : (t / W) * cols + t % W) * V;
    const T* s = src;
    T* row = tile + (pad_r * cols + pad_c) * V;  // row h of the source in the tile
    for (int64_t m = 0, w = 0; m < HW; m += V, s += V) {
      Vec<T, V> v[V];
#pragma GCC unroll 16
      for (int l = 0; l < V; ++l) v[l] = Vec<T, V>::load(s + l * L.sc);
      transpose<T, V>(v);
      T* d = row + w * V;
#pragma GCC unroll 16
      for (int t = 0; t < V; ++t) v[t].store(d + off[t]);
      if (W < V) {
        row += (V / W) * cols * V;
      } else if ((w += V) == W) {
        w = 0;
        row += cols * V;
      }
    }
    return;
  }
  int64_t h = 0, w = 0;  // source pixel of plane offset m
  for (int64_t m = 0; m < HW; m += V) {
    const int64_t n = std::min<int64_t>(V, HW - m);
    Vec<T, V> v[V];
    for (int64_t l = 0; l < V; ++l) {
      if (l >= nch) {
        v[l] = Vec<T, V>::zero();
      } else if (n == V) {
        v[l] = Vec<T, V>::load(src + l * L.sc + m);
      } else {  // the plane's last pixels: never read past them
        T tmp[V];
        for (int64_t t = 0; t < V; ++t) tmp[t] = t < n ? src[l * L.sc + m + t] : T(0);
        v[l] = Vec<T, V>::load(tmp);
      }
    }
    transpose<T, V>(v);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t r = h + pad_r, q = w + pad_c;
      if (r < rows && q < cols) v[t].store(tile + r * row + q * V);
      if (++w == W) {
        w = 0;
        ++h;
      }
    }
  }
}

// dst(c = l, h = r, w = q) = tile[r][q][l] for l < nch. `dst` points at (n, cb, 0, 0),
// and the tile covers the whole rows x cols destination plane.
template <typename T>
OFA_INLINE void store_tile(const T* tile, int64_t rows, int64_t cols, T* dst, const Layout& L,
                           int64_t nch) {
  constexpr int V = kLanes<T>;
  if (L.channels_last()) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* trow = tile + r * cols * V;
      T* drow = dst + r * L.sh;
      for (int64_t q = 0; q < cols; ++q) {
        if (nch == V) {
          Vec<T, V>::load(trow + q * V).store(drow + q * L.sw);
        } else {
          for (int64_t l = 0; l < nch; ++l) drow[q * L.sw + l] = trow[q * V + l];
        }
      }
    }
    return;
  }
  // NCHW: the dense tile and each channel's plane list pixels in the same order
  const int64_t HW = rows * cols;
  if (nch == V && HW % V == 0) {  // whole registers, no per-lane branches
    for (int64_t m = 0; m < HW; m += V) {
      Vec<T, V> v[V];
#pragma GCC unroll 16
      for (int t = 0; t < V; ++t) v[t] = Vec<T, V>::load(tile + (m + t) * V);
      transpose<T, V>(v);
#pragma GCC unroll 16
      for (int l = 0; l < V; ++l) v[l].store(dst + l * L.sc + m);
    }
    return;
  }
  for (int64_t m = 0; m < HW; m += V) {
    const int64_t n = std::min<int64_t>(V, HW - m);
    Vec<T, V> v[V];
    for (int64_t t = 0; t < V; ++t) v[t] = t < n ? Vec<T, V>::load(tile + (m + t) * V) : Vec<T, V>::zero();
    transpose<T, V>(v);
    for (int64_t l = 0; l < nch; ++l) {
      if (n == V) {
        v[l].store(dst + l * L.sc + m);
      } else {
        T tmp[V];
        v[l].store(tmp);
        for (int64_t t = 0; t < n; ++t) dst[l * L.sc + m + t] = tmp[t];
      }
    }
  }
}

// A unit of work: image n, channel blocks [b0, b1) (each of V channels, the last one
// possibly narrower). Its tiles are staged together: from channels_last, one pass over
// the image's pixels in address order (each pixel's channels are contiguous), which
// keeps the reads and writes sequential; strided per-block passes were 2-3x slower.
struct Unit {
  int64_t n, b0, b1;
};

OFA_INLINE Unit unit_of(int64_t index, int64_t nb, int64_t group) {
  const int64_t groups = (nb + group - 1) / group;
  const int64_t n = index / groups, b0 = (index % groups) * group;
  return Unit{n, b0, std::min(nb, b0 + group)};
}

// load_tile for every block of the unit; tiles[b - b0] is rows x cols x V (zero
// border: see load_tile).
template <typename T>
OFA_INLINE void load_tiles(T* tiles, int64_t rows, int64_t cols, const T* src_n, const Layout& L,
                           int64_t C, int64_t H, int64_t W, int64_t pad_r, int64_t pad_c,
                           const Unit& u) {
  constexpr int V = kLanes<T>;
  const int64_t tsize = rows * cols * V;
  if (!L.channels_last() || u.b1 - u.b0 == 1) {
    for (int64_t b = u.b0; b < u.b1; ++b)
      load_tile(tiles + (b - u.b0) * tsize, rows, cols, src_n + b * V * L.sc, L, H, W, pad_r, pad_c,
                std::min<int64_t>(V, C - b * V));
    return;
  }
  // channels_last, several blocks: the pixels in address order
  const int64_t r0 = std::clamp<int64_t>(pad_r, 0, rows), r1 = std::clamp<int64_t>(pad_r + H, r0, rows);
  const int64_t q0 = std::clamp<int64_t>(pad_c, 0, cols), q1 = std::clamp<int64_t>(pad_c + W, q0, cols);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t q = q0; q < q1; ++q) {
      const T* px = src_n + (r - pad_r) * L.sh + (q - pad_c) * L.sw;
      T* dst = tiles + (r * cols + q) * V;
      for (int64_t b = u.b0; b < u.b1; ++b, dst += tsize) {
        const int64_t cb = b * V, nch = std::min<int64_t>(V, C - cb);
        if (nch == V) {
          Vec<T, V>::load(px + cb).store(dst);
        } else {
          for (int64_t l = 0; l < V; ++l) dst[l] = l < nch ? px[cb + l] : T(0);
        }
      }
    }
}

// store_tile for every block of the unit (tiles as in load_tiles).
template <typename T>
OFA_INLINE void store_tiles(const T* tiles, int64_t rows, int64_t cols, T* dst_n, const Layout& L,
                            int64_t C, const Unit& u) {
  constexpr int V = kLanes<T>;
  const int64_t tsize = rows * cols * V;
  if (!L.channels_last() || u.b1 - u.b0 == 1) {
    for (int64_t b = u.b0; b < u.b1; ++b)
      store_tile(tiles + (b - u.b0) * tsize, rows, cols, dst_n + b * V * L.sc, L,
                 std::min<int64_t>(V, C - b * V));
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < cols; ++q) {
      T* px = dst_n + r * L.sh + q * L.sw;
      const T* src = tiles + (r * cols + q) * V;
      for (int64_t b = u.b0; b < u.b1; ++b, src += tsize) {
        const int64_t cb = b * V, nch = std::min<int64_t>(V, C - cb);
        if (nch == V) {
          Vec<T, V>::load(src).store(px + cb);
        } else {
          for (int64_t l = 0; l < nch; ++l) px[cb + l] = src[l];
        }
      }
    }
}

// ---------------------------------------------------------------------------------
// Compute on tiles
// ---------------------------------------------------------------------------------

// R consecutive output pixels: out[r] = sum_t w[woff[t]] * in[off[t] + r * S * V]
// (S: the input pixels between consecutive outputs; 0: runtime `stride` instead).
// R independent accumulators hide the multiply-add latency; every load is aligned,
// and with a constant S its address is one register plus a constant.
template <typename T, int R, int S>
OFA_INLINE void conv_block(const T* in, int64_t stride, const int64_t* off, const T* wp,
                           const int64_t* woff, int ntaps, T* out, int64_t out_px) {
  constexpr int V = kLanes<T>;
  const int64_t step = (S > 0 ? S : stride) * V;
  Vec<T, V> acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec<T, V>::zero();
  for (int t = 0; t < ntaps; ++t) {
    const Vec<T, V> w = Vec<T, V>::load(wp + woff[t]);
    const T* src = in + off[t];
    for (int r = 0; r < R; ++r) acc[r].fma(Vec<T, V>::load(src + r * step), w);
  }
  for (int r = 0; r < R; ++r) acc[r].store(out + r * out_px);
}

template <typename T, int S>
OFA_INLINE void conv_row_s(const T* in, int64_t stride, const int64_t* off, const T* wp,
                           const int64_t* woff, int ntaps, T* out, int64_t out_px, int64_t n) {
  const int64_t step = (S > 0 ? S : stride) * kLanes<T>;
  int64_t u = 0;
  for (; u + 8 <= n; u += 8)
    conv_block<T, 8, S>(in + u * step, stride, off, wp, woff, ntaps, out + u * out_px, out_px);
  for (; u + 4 <= n; u += 4)
    conv_block<T, 4, S>(in + u * step, stride, off, wp, woff, ntaps, out + u * out_px, out_px);
  for (; u < n; ++u)
    conv_block<T, 1, S>(in + u * step, stride, off, wp, woff, ntaps, out + u * out_px, out_px);
}

// One row of n output pixels; `stride` input pixels between consecutive outputs.
template <typename T>
OFA_INLINE void conv_row(const T* in, int64_t stride, const int64_t* off, const T* wp,
                         const int64_t* woff, int ntaps, T* out, int64_t out_px, int64_t n) {
  if (stride == 1) conv_row_s<T, 1>(in, stride, off, wp, woff, ntaps, out, out_px, n);
  else if (stride == 2) conv_row_s<T, 2>(in, stride, off, wp, woff, ntaps, out, out_px, n);
  else conv_row_s<T, 0>(in, stride, off, wp, woff, ntaps, out, out_px, n);
}

// OFA's cases (k = 3, 5, 7; stride 1 or 2; dilation 1) with every tap a compile-time
// offset: R outputs of one row at `in` (the tile at their first input pixel),
// `rs` elements per tile row. One base register per filter row, constant
// displacements for the taps and the weights.
template <typename T, int K, int S, int R>
OFA_INLINE void conv_block_k(const T* in, int64_t rs, const T* wp, T* out) {
  constexpr int V = kLanes<T>;
  Vec<T, V> acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec<T, V>::zero();
  for (int i = 0; i < K; ++i) {
    const T* row = in + i * rs;
    const T* wrow = wp + i * K * V;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const Vec<T, V> w = Vec<T, V>::load(wrow + j * V);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r].fma(Vec<T, V>::load(row + (r * S + j) * V), w);
    }
  }
  for (int r = 0; r < R; ++r) acc[r].store(out + r * V);
}

// A dense rows x n output tile from a zero-padded input tile of `cols` pixels per row.
template <typename T, int K, int S>
OFA_INLINE void conv_plane_k(const T* in, int64_t cols, const T* wp, T* out, int64_t rows,
                             int64_t n) {
  constexpr int V = kLanes<T>;
  const int64_t rs = cols * V;
  for (int64_t o = 0; o < rows; ++o) {
    const T* base = in + o * S * rs;
    T* dst = out + o * n * V;
    int64_t u = 0;
    for (; u + 8 <= n; u += 8) conv_block_k<T, K, S, 8>(base + u * S * V, rs, wp, dst + u * V);
    for (; u + 4 <= n; u += 4) conv_block_k<T, K, S, 4>(base + u * S * V, rs, wp, dst + u * V);
    for (; u < n; ++u) conv_block_k<T, K, S, 1>(base + u * S * V, rs, wp, dst + u * V);
  }
}

// conv_plane_k for run-time k in {3, 5, 7}, s in {1, 2}; false: not one of those.
template <typename T>
OFA_INLINE bool conv_plane_fixed(int64_t k, int64_t s, const T* in, int64_t cols, const T* wp,
                                 T* out, int64_t rows, int64_t n) {
#define OFA_DW_CASE(KS, SS)                                                                        \
  if (k == KS && s == SS) {                                                                         \
    conv_plane_k<T, KS, SS>(in, cols, wp, out, rows, n);                                           \
    return true;                                                                                    \
  }
  OFA_DW_CASE(3, 1) OFA_DW_CASE(5, 1) OFA_DW_CASE(7, 1)
  OFA_DW_CASE(3, 2) OFA_DW_CASE(5, 2) OFA_DW_CASE(7, 2)
#undef OFA_DW_CASE
  return false;
}

// ---------------------------------------------------------------------------------
// Forward straight from channels_last memory (no tiles)
// ---------------------------------------------------------------------------------
// A full channel block of a channels_last image is V contiguous channels per pixel,
// one vector, so the forward can read the input where it lies and write each
// output pixel once: no staging copy, no zero border. Border outputs, whose taps fall
// partly into the padding, take the taps that do not from a zero vector.

// R outputs of one row from the pixel under their first tap: filter rows [0, nrows) of
// the packed block filter, `rs` / `ps` elements per input row / pixel, `ops` per output
// pixel. Per filter row the K weights stay in registers and each of the (R - 1) * S + K
// input pixels is loaded once and used for every output it feeds.
template <typename T, int K, int S, int R>
OFA_INLINE void conv_block_cl(const T* in, int64_t rs, int64_t ps, int nrows, const T* wp, T* out,
                              int64_t ops) {
  constexpr int V = kLanes<T>;
  constexpr int M = (R - 1) * S + K;
  Vec<T, V> acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec<T, V>::zero();
  for (int i = 0; i < nrows; ++i) {
    const T* px = in + i * rs;
    Vec<T, V> w[K];
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) w[j] = Vec<T, V>::load(wp + (i * K + j) * V);
#pragma GCC unroll 32
    for (int m = 0; m < M; ++m, px += ps) {
      const Vec<T, V> xv = Vec<T, V>::load(px);
#pragma GCC unroll 8
      for (int j = 0; j < K; ++j) {
        const int o = m - j;  // the output this tap of this pixel feeds, times S
        if (o >= 0 && o % S == 0 && o / S < R) acc[o / S].fma(xv, w[j]);
      }
    }
  }
  for (int r = 0; r < R; ++r) acc[r].store(out + r * ops);
}

// R outputs at columns cols[0..R) of one row (`in`: the row's pixel 0), all at once so
// their sums are independent chains; taps outside [0, W) read zeros. The kernel size
// and the stride are run-time values here: only a few columns per row come this way.
template <typename T, int R>
OFA_INLINE void conv_block_cl_edge(const T* in, int64_t rs, int64_t ps, int nrows, int64_t k,
                                   int64_t s, const T* wp, T* out, int64_t ops,
                                   const int64_t* cols, int64_t W, int64_t p) {
  constexpr int V = kLanes<T>;
  alignas(64) static const T zeros[V] = {};
  int64_t off[R][kMaxK];  // element offset of each tap's pixel in its row, -1: padding
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t iw = cols[r] * s - p + j;
      off[r][j] = iw >= 0 && iw < W ? iw * ps : -1;
    }
  Vec<T, V> acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec<T, V>::zero();
  for (int i = 0; i < nrows; ++i) {
    const T* row = in + i * rs;
    for (int64_t j = 0; j < k; ++j) {
      const Vec<T, V> w = Vec<T, V>::load(wp + (i * k + j) * V);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        acc[r].fma(Vec<T, V>::load(off[r][j] >= 0 ? row + off[r][j] : zeros), w);
    }
  }
  for (int r = 0; r < R; ++r) acc[r].store(out + cols[r] * ops);
}

// Columns of a channels_last output row: [lo, mid) run through conv_block_cl in
// blocks of 8 and 4, the rest (the borders and what the blocks leave) through
// conv_block_cl_edge in blocks of 8, the last one of 4, 2 or 1 after repeating its
// last column (computing and storing an output twice is harmless, and four block
// sizes instead of eight halve the kernels to compile).
struct ClColumns {
  int64_t lo = 0, mid = 0;
  std::vector<int64_t> rest;
  explicit ClColumns(const Problem& P) {
    using ofa_fast::ceil_div;
    using ofa_fast::floor_div;
    // interior: ow * s - p >= 0 and ow * s - p + k - 1 <= W - 1
    lo = std::min(P.OW, ceil_div(P.p, P.s));
    const int64_t hi = std::clamp<int64_t>(floor_div(P.W - P.k + P.p, P.s) + 1, lo, P.OW);
    mid = lo + (hi - lo) / 4 * 4;
    for (int64_t ow = 0; ow < lo; ++ow) rest.push_back(ow);
    for (int64_t ow = mid; ow < P.OW; ++ow) rest.push_back(ow);
    const size_t last = rest.size() % 8;  // the last block's size, rounded up to 1, 2, 4, 8
    if (last > 0) {
      const int64_t back = rest.back();
      rest.insert(rest.end(), (last <= 2 ? last : last <= 4 ? 4 : 8) - last, back);
    }
  }
};

// Output rows [oh_begin, oh_end) of one channel block of one image: x, y point at its
// channel 0; wp: its packed filter.
template <typename T, int K, int S>
OFA_INLINE void conv_image_cl(const Problem& P, const ClColumns& cc, const T* x, const Layout& Lx,
                              const T* wp, T* y, const Layout& Ly, int64_t oh_begin,
                              int64_t oh_end) {
  constexpr int V = kLanes<T>;
  for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
    const int64_t ih0 = oh * S - P.p;
    const int64_t i0 = std::max<int64_t>(0, -ih0), i1 = std::min<int64_t>(K, P.H - ih0);
    T* yr = y + oh * Ly.sh;
    if (i1 <= i0) {  // every tap in the padding (padding > k - 1)
      for (int64_t ow = 0; ow < P.OW; ++ow) Vec<T, V>::zero().store(yr + ow * Ly.sw);
      continue;
    }
    const T* xr = x + (ih0 + i0) * Lx.sh;  // first filter row inside the image
    const T* wr = wp + i0 * K * V;
    const int nr = int(i1 - i0);
    int64_t ow = cc.lo;
    for (; ow + 8 <= cc.mid; ow += 8)
      conv_block_cl<T, K, S, 8>(xr + (ow * S - P.p) * Lx.sw, Lx.sh, Lx.sw, nr, wr, yr + ow * Ly.sw, Ly.sw);
    for (; ow < cc.mid; ow += 4)
      conv_block_cl<T, K, S, 4>(xr + (ow * S - P.p) * Lx.sw, Lx.sh, Lx.sw, nr, wr, yr + ow * Ly.sw, Ly.sw);
    // (no lambdas here: they would not inherit the caller's instruction set)
    for (size_t e = 0; e < cc.rest.size();) {
      const int64_t* cols = cc.rest.data() + e;
      const size_t n = std::min<size_t>(8, cc.rest.size() - e);
      if (n == 8) conv_block_cl_edge<T, 8>(xr, Lx.sh, Lx.sw, nr, K, S, wr, yr, Ly.sw, cols, P.W, P.p);
      else if (n == 4) conv_block_cl_edge<T, 4>(xr, Lx.sh, Lx.sw, nr, K, S, wr, yr, Ly.sw, cols, P.W, P.p);
      else if (n == 2) conv_block_cl_edge<T, 2>(xr, Lx.sh, Lx.sw, nr, K, S, wr, yr, Ly.sw, cols, P.W, P.p);
      else conv_block_cl_edge<T, 1>(xr, Lx.sh, Lx.sw, nr, K, S, wr, yr, Ly.sw, cols, P.W, P.p);
      e += n;
    }
  }
}

// conv_image_cl for the run-time k and s that direct_cl takes; false: not one of those.
template <typename T>
OFA_INLINE bool conv_image_cl_fixed(const Problem& P, const ClColumns& cc, const T* x,
                                    const Layout& Lx, const T* wp, T* y, const Layout& Ly,
                                    int64_t oh_begin, int64_t oh_end) {
#define OFA_DW_CASE(KS, SS)                                                                        \
  if (P.k == KS && P.s == SS) {                                                                     \
    conv_image_cl<T, KS, SS>(P, cc, x, Lx, wp, y, Ly, oh_begin, oh_end);                           \
    return true;                                                                                    \
  }
  OFA_DW_CASE(3, 1) OFA_DW_CASE(5, 1)  // k = 7 stride 1: the tiles are faster (direct_cl)
  OFA_DW_CASE(3, 2) OFA_DW_CASE(5, 2) OFA_DW_CASE(7, 2)
#undef OFA_DW_CASE
  return false;
}

// Whether the forward reads channels_last input in place. Measured against the tiles
// (one thread, batch 16, fp32): 1.3-1.6x faster at k = 3 and at stride 2, 1.35x at
// k = 5 on 32-pixel rows; slower at k = 7 stride 1 (0.5-0.9x: its wide borders take the
// checked path) and at k = 5 on rows of 16 or fewer. dwconv_cpu.cpp compiles it for
// float32 on AVX-512 only: its unrolled kernels would otherwise be most of the build
// time (emulating 16-float vectors on narrower registers), and float64 is the CPU's
// checking dtype.
OFA_INLINE bool direct_cl(const Problem& P, const Layout& Lx, const Layout& Ly) {
  if (!Lx.channels_last() || !Ly.channels_last() || P.d != 1) return false;
  if ((P.k != 3 && P.k != 5 && P.k != 7) || (P.s != 1 && P.s != 2)) return false;
  return P.k == 3 || P.s == 2 || (P.k == 5 && P.OW >= 24);
}

// Geometry of the zero-padded input tile the forward and the filter gradient read:
// output (oh, ow) tap (i, j) reads tile[oh * s + i * d][ow * s + j * d].
struct InputTile {
  int64_t rows, cols;
  explicit InputTile(const Problem& P)
      : rows(ofa_fast::dwconv::input_extent(P.OH, P.k, P.s, P.d)),
        cols(ofa_fast::dwconv::input_extent(P.OW, P.k, P.s, P.d)) {}
};

// Forward over units [begin, end) (see unit_of; `group` blocks per unit).
// wp: packed filter [blocks][k * k][V].
template <typename T>
OFA_INLINE void fwd(const Problem& P, const T* x, const Layout& Lx, const T* wp, T* y,
                    const Layout& Ly, int64_t group, int64_t begin, int64_t end) {
  constexpr int V = kLanes<T>;
  const int64_t nb = channel_blocks<T>(P.C), kk = P.k * P.k;
  const InputTile it(P);
  const int64_t xsize = it.rows * it.cols * V, ysize = P.OH * P.OW * V;
  // zero-initialised: the input tiles' borders stay zero (load_tile)
  AlignedVector<T> xt(static_cast<size_t>(group * xsize)), yt(static_cast<size_t>(group * ysize));
  int64_t off[kMaxK * kMaxK], woff[kMaxK * kMaxK];
  for (int64_t i = 0; i < P.k; ++i)
    for (int64_t j = 0; j < P.k; ++j) {
      off[i * P.k + j] = (i * P.d * it.cols + j * P.d) * V;
      woff[i * P.k + j] = (i * P.k + j) * V;
    }
  for (int64_t index = begin; index < end; ++index) {
    const Unit u = unit_of(index, nb, group);
    load_tiles(xt.data(), it.rows, it.cols, x + u.n * Lx.sn, Lx, P.C, P.H, P.W, P.p, P.p, u);
    for (int64_t b = u.b0; b < u.b1; ++b) {
      const T* xb = xt.data() + (b - u.b0) * xsize;
      T* yb = yt.data() + (b - u.b0) * ysize;
      if (P.d == 1 && conv_plane_fixed(P.k, P.s, xb, it.cols, wp + b * kk * V, yb, P.OH, P.OW))
        continue;
      for (int64_t oh = 0; oh < P.OH; ++oh)
        conv_row(xb + oh * P.s * it.cols * V, P.s, off, wp + b * kk * V, woff, int(kk),
                 yb + oh * P.OW * V, V, P.OW);
    }
    store_tiles(yt.data(), P.OH, P.OW, y + u.n * Ly.sn, Ly, P.C, u);
  }
}

// The forward when direct_cl(P, ...) holds (see fwd for the arguments): whole channel
// blocks in place, a narrower last block through one tile.
template <typename T>
OFA_INLINE void fwd_cl_direct(const Problem& P, const T* x, const Layout& Lx, const T* wp, T* y,
                              const Layout& Ly, int64_t group, int64_t begin, int64_t end) {
  constexpr int V = kLanes<T>;
  const int64_t nb = channel_blocks<T>(P.C), kk = P.k * P.k;
  const InputTile it(P);
  const ClColumns cc(P);
  AlignedVector<T> xt, yt;  // the tiles, made when a block first needs them
  const int64_t row_bytes = (P.W * P.s + P.OW) * Lx.sw * int64_t(sizeof(T));
  const int64_t rows = std::max<int64_t>(1, kL2Band / row_bytes);
  const int64_t full_end = std::min(nb, P.C / V);  // blocks of V channels
  for (int64_t index = begin; index < end; ++index) {
    const Unit u = unit_of(index, nb, group);
    const int64_t bf = std::min(u.b1, full_end);
    // Whole blocks in row bands across the unit (as in bwd_cl_direct_k: 1.02-1.18x
    // over one block at a time). direct_cl takes only the (k, s) conv_image_cl_fixed
    // has; were one missing, every block would take the tiles below.
    bool in_place = true;
    for (int64_t h0 = 0; h0 < P.OH && in_place; h0 += rows)
      for (int64_t b = u.b0; b < bf && in_place; ++b)
        in_place = conv_image_cl_fixed(P, cc, x + u.n * Lx.sn + b * V, Lx, wp + b * kk * V,
                                       y + u.n * Ly.sn + b * V, Ly, h0, std::min(P.OH, h0 + rows));
    for (int64_t b = in_place ? bf : u.b0; b < u.b1; ++b) {  // the narrower last block
      const T* xb = x + u.n * Lx.sn + b * V;
      T* yb = y + u.n * Ly.sn + b * V;
      const int64_t nch = std::min<int64_t>(V, P.C - b * V);
      if (xt.empty()) {  // zero-filled: the tile's border stays zero (load_tile)
        xt.assign(static_cast<size_t>(it.rows * it.cols * V), T(0));
        yt.assign(static_cast<size_t>(P.OH * P.OW * V), T(0));
      }
      load_tile(xt.data(), it.rows, it.cols, xb, Lx, P.H, P.W, P.p, P.p, nch);
      conv_plane_fixed(P.k, P.s, xt.data(), it.cols, wp + b * kk * V, yt.data(), P.OH, P.OW);
      store_tile(yt.data(), P.OH, P.OW, yb, Ly, nch);
    }
  }
}

// The zero-padded grad_out tile the gradient of the input gathers from. Input pixels
// of one phase (ih = a + s * q, iw = b + s * u) share one set of taps, and tap (i, j)
// reads grad_out[q + ro_i][u + co_j]: per phase pair, a stride-1 correlation. The
// tile also holds all of grad_out at (pad, pad), so the filter gradient reads it too.
struct GradOutTile {
  int64_t pad, rows, cols;
  std::vector<int64_t> off, woff;  // per phase pair: tile and packed-filter offsets
  std::vector<int> ntaps;
  template <typename T>
  GradOutTile(const Problem& P, T /*dtype tag*/) {
    constexpr int V = kLanes<T>;
    const int64_t s = P.s, k = P.k, kk = k * k;
    // extremes of the offsets of every tap that matches some phase; rows and columns
    // follow the same rule (square kernels, same s, d, p)
    int64_t o_min = 0, o_max = 0;
    bool first = true;
    for (int64_t a = 0; a < s; ++a)
      for (int64_t i = 0; i < k; ++i)
        if (tap_matches_phase(a, i, s, P.d, P.p)) {
          const int64_t o = phase_tap_output_offset(a, i, s, P.d, P.p);
          o_min = first ? o : std::min(o_min, o);
          o_max = first ? o : std::max(o_max, o);
          first = false;
        }
    pad = std::max<int64_t>(0, -o_min);
    rows = std::max((P.H + s - 1) / s + o_max, P.OH) + pad;
    cols = std::max((P.W + s - 1) / s + o_max, P.OW) + pad;
    off.assign(static_cast<size_t>(s * s * kk), 0);
    woff.assign(off.size(), 0);
    ntaps.assign(static_cast<size_t>(s * s), 0);
    for (int64_t a = 0; a < s; ++a)
      for (int64_t b = 0; b < s; ++b) {
        int& nt = ntaps[a * s + b];
        for (int64_t i = 0; i < k; ++i) {
          if (!tap_matches_phase(a, i, s, P.d, P.p)) continue;
          const int64_t ro = phase_tap_output_offset(a, i, s, P.d, P.p);
          for (int64_t j = 0; j < k; ++j) {
            if (!tap_matches_phase(b, j, s, P.d, P.p)) continue;
            const int64_t co = phase_tap_output_offset(b, j, s, P.d, P.p);
            off[(a * s + b) * kk + nt] = ((ro + pad) * cols + co + pad) * V;
            woff[(a * s + b) * kk + nt] = (i * k + j) * V;
            ++nt;
          }
        }
      }
  }
};

// Gradient of the input of one channel block: gb its grad_out tile, wpb its packed
// filter (wpb_flipped: the same with taps reversed), xb the dense H x W output tile.
template <typename T>
OFA_INLINE void input_grad_block(const Problem& P, const GradOutTile& gt, const T* gb,
                                 const T* wpb, const T* wpb_flipped, T* xb) {
  constexpr int V = kLanes<T>;
  const int64_t s = P.s, kk = P.k * P.k;
  // stride 1, dilation 1: the correlation of the padded grad_out with the flipped filter
  if (s == 1 && P.d == 1 && gt.pad == ofa_fast::dwconv::flipped_padding(P.k, P.d, P.p) &&
      conv_plane_fixed(P.k, int64_t(1), gb, gt.cols, wpb_flipped, xb, P.H, P.W))
    return;
  for (int64_t a = 0; a < s; ++a) {
    const int64_t nq = phase_count(P.H, a, s);
    for (int64_t b = 0; b < s; ++b) {
      const int64_t nu = phase_count(P.W, b, s), ph = a * s + b;
      for (int64_t q = 0; q < nq; ++q)
        conv_row(gb + q * gt.cols * V, 1, gt.off.data() + ph * kk, wpb, gt.woff.data() + ph * kk,
                 gt.ntaps[ph], xb + ((a + s * q) * P.W + b) * V, s * V, nu);
    }
  }
}

// J filter-gradient accumulators of filter row i, columns [j0, j0 + J), over output
// rows [oh0, oh1) of one unit's tile; added into acc[(i * k + j) * V]. Dilation 1 (OFA's
// case) is a template case so the taps' offsets are constants, not spilled registers.
template <typename T, int J, bool kUnitDilation>
OFA_INLINE void wgrad_taps(const Problem& P, const InputTile& it, const T* xt, const T* g,
                           int64_t g_row, int64_t g_px, int64_t oh0, int64_t oh1, int64_t i,
                           int64_t j0, T* acc) {
  constexpr int V = kLanes<T>;
  Vec<T, V> a[J];
  for (int jj = 0; jj < J; ++jj) a[jj] = Vec<T, V>::zero();
  const int64_t step = P.s * V, dj = kUnitDilation ? V : P.d * V;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const T* xp = xt + ((oh * P.s + i * P.d) * it.cols + j0 * P.d) * V;
    const T* gp = g + oh * g_row;
    for (int64_t ow = 0; ow < P.OW; ++ow, xp += step, gp += g_px) {
      const Vec<T, V> gv = Vec<T, V>::load(gp);
      for (int jj = 0; jj < J; ++jj) a[jj].fma(gv, Vec<T, V>::load(xp + jj * dj));
    }
  }
  for (int jj = 0; jj < J; ++jj) {
    T* dst = acc + (i * P.k + j0 + jj) * V;
    Vec<T, V> cur = Vec<T, V>::load(dst);
    cur.add(a[jj]);
    cur.store(dst);
  }
}

template <typename T, bool kUnitDilation>
OFA_INLINE void wgrad_row(const Problem& P, const InputTile& it, const T* xt, const T* g,
                          int64_t g_row, int64_t g_px, int64_t oh0, int64_t oh1, int64_t i,
                          T* acc) {
  int64_t j = 0;
  for (; j + 8 <= P.k; j += 8) wgrad_taps<T, 8, kUnitDilation>(P, it, xt, g, g_row, g_px, oh0, oh1, i, j, acc);
  switch (P.k - j) {
    case 7: wgrad_taps<T, 7, kUnitDilation>(P, it, xt, g, g_row, g_px, oh0, oh1, i, j, acc); break;
    case 6: wgrad_taps<T, 6, kUnitDilation>(P, it, xt, g, g_row, g_px, oh0, oh1, i, j, acc); break;
    case 5: wgrad_taps<T, 5, kUnitDilation>(P, it, xt, g, g_row, g_px, oh0, oh1, i, j, acc); break;
    case 4: wgrad_taps<T, 4, kUnitDilation>(P, it, xt, g, g_row, g_px, oh0, oh1, i, j, acc); break;
    case 3: wgrad_taps<T, 3, kUnitDilation>(P, it, xt, g, g_row, g_px, oh0, oh1, i, j, acc); break;
    case 2: wgrad_taps<T, 2, kUnitDilation>(P, it, xt, g, g_row, g_px, oh0, oh1, i, j, acc); break;
    case 1: wgrad_taps<T, 1, kUnitDilation>(P, it, xt, g, g_row, g_px, oh0, oh1, i, j, acc); break;
    default: break;
  }
}

// Filter row i's taps over R consecutive outputs of one row: a[(r % Q) * K + j] +=
// g[r] * x[r + j], `x` the input pixel under the first output's tap 0, xps / gps
// elements per pixel. Q partial sums per tap keep Q * K independent chains (K alone
// would leave the multiply-add units waiting at k = 3); each of the R + K - 1 input
// pixels is loaded once.
template <typename T, int K, int R, int Q>
OFA_INLINE void wgrad_block_cl(const T* x, int64_t xps, const T* g, int64_t gps,
                               Vec<T, kLanes<T>>* a) {
  constexpr int V = kLanes<T>;
  Vec<T, V> gv[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r, g += gps) {
    gv[r] = Vec<T, V>::load(g);
    gv[r].pin();
  }
#pragma GCC unroll 16
  for (int m = 0; m < R + K - 1; ++m, x += xps) {
    Vec<T, V> xv = Vec<T, V>::load(x);
    xv.pin();
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const int r = m - j;
      if (r >= 0 && r < R) a[(r % Q) * K + j].fma(xv, gv[r]);
    }
  }
}

// wgrad_block_cl over n consecutive outputs of one row, in blocks of 8, 4, 2 and 1.
template <typename T, int K, int Q>
OFA_INLINE void wgrad_run_cl(const T* x, int64_t xps, const T* g, int64_t gps, int64_t n,
                             Vec<T, kLanes<T>>* a) {
  int64_t o = 0;
  for (; o + 8 <= n; o += 8) wgrad_block_cl<T, K, 8, Q>(x + o * xps, xps, g + o * gps, gps, a);
  if (o + 4 <= n) {
    wgrad_block_cl<T, K, 4, Q>(x + o * xps, xps, g + o * gps, gps, a);
    o += 4;
  }
  if (o + 2 <= n) {
    wgrad_block_cl<T, K, 2, Q>(x + o * xps, xps, g + o * gps, gps, a);
    o += 2;
  }
  if (o < n) wgrad_block_cl<T, K, 1, Q>(x + o * xps, xps, g + o * gps, gps, a);
}

// Filter row i's Q partial sums per tap (a[q * K + j]) added into acc [k * k][V].
template <typename T, int K, int Q>
OFA_INLINE void add_partial_sums(const Vec<T, kLanes<T>>* a, int i, T* acc) {
  constexpr int V = kLanes<T>;
#pragma GCC unroll 8
  for (int j = 0; j < K; ++j) {
    Vec<T, V> sum = Vec<T, V>::load(acc + (i * K + j) * V);
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) sum.add(a[q * K + j]);
    sum.store(acc + (i * K + j) * V);
  }
}

// The filter gradient of output rows [oh0, oh1) of one tile at stride 1, dilation 1
// (OFA's case), K a constant: per filter row, blocks of R outputs of a row share each
// input pixel's load across the K taps it feeds (wgrad_block_cl on the tile: the zero
// border needs no column checks), with Q partial sums per tap. `xt`: the input tile,
// `cols` pixels per row; g: grad_out's pixel (0, 0), g_row elements per row.
// For code compiled for AVX-512 alone (wgrad_block_cl pins its vectors): BwdTiles<T, true>.
template <typename T, int K, int Q>
OFA_INLINE void wgrad_tile_k(const T* xt, int64_t cols, const T* g, int64_t g_row, int64_t OW,
                             int64_t oh0, int64_t oh1, T* acc) {
  constexpr int V = kLanes<T>;
  for (int i = 0; i < K; ++i) {
    Vec<T, V> a[Q * K];
#pragma GCC unroll 32
    for (int t = 0; t < Q * K; ++t) a[t] = Vec<T, V>::zero();
    for (int64_t oh = oh0; oh < oh1; ++oh)
      wgrad_run_cl<T, K, Q>(xt + (oh + i) * cols * V, V, g + oh * g_row, V, OW, a);
    add_partial_sums<T, K, Q>(a, i, acc);
  }
}

// wgrad_tile_k for the run-time k; false: stride or dilation not 1, or k not 3, 5, 7.
template <typename T>
OFA_INLINE bool wgrad_tile_fixed(const Problem& P, const T* xt, int64_t cols, const T* g,
                                 int64_t g_row, int64_t oh0, int64_t oh1, T* acc) {
  if (P.s != 1 || P.d != 1) return false;
  switch (P.k) {
    case 3: wgrad_tile_k<T, 3, 3>(xt, cols, g, g_row, P.OW, oh0, oh1, acc); return true;
    case 5: wgrad_tile_k<T, 5, 2>(xt, cols, g, g_row, P.OW, oh0, oh1, acc); return true;
    case 7: wgrad_tile_k<T, 7, 2>(xt, cols, g, g_row, P.OW, oh0, oh1, acc); return true;
    default: return false;
  }
}

// Both gradients of units through tiles: grad_out is staged once (padded, for the
// input gradient's gather) and serves both. wp / wp_flipped: the packed filter, and
// the same with taps reversed. gx: the input gradient (when need_gx);
// acc: a private filter-gradient accumulator [blocks][k * k][V] (when need_gw; the
// caller adds the workers' up). Holds the tiles of up to `group` blocks.
// kPin: code compiled for AVX-512 alone, where a Vec is one register (Vec::pin); its
// filter gradient then runs wgrad_tile_fixed (1.2-1.5x the wgrad_row loop).
template <typename T, bool kPin = false>
struct BwdTiles {
  static constexpr int V = kLanes<T>;
  const Problem& P;
  const T *go, *x, *wp, *wp_flipped;
  const Layout &Lg, &Lx;
  T *gx, *acc;
  bool need_gx, need_gw;
  GradOutTile gtile;
  InputTile it;
  int64_t gsize, xsize, dsize, band;
  AlignedVector<T> gt, xt, dt;  // zero-initialised: the tiles' borders stay zero (load_tile)

  BwdTiles(const Problem& P_, const T* go_, const Layout& Lg_, const T* x_, const Layout& Lx_,
           const T* wp_, const T* wpf_, T* gx_, T* acc_, bool ngx, bool ngw, int64_t group)
      : P(P_), go(go_), x(x_), wp(wp_), wp_flipped(wpf_), Lg(Lg_), Lx(Lx_), gx(gx_), acc(acc_),
        need_gx(ngx), need_gw(ngw), gtile(P_, T(0)), it(P_) {
    gsize = gtile.rows * gtile.cols * V;
    xsize = it.rows * it.cols * V;
    dsize = P.H * P.W * V;
    gt.resize(static_cast<size_t>(group * gsize));
    xt.resize(static_cast<size_t>(need_gw ? group * xsize : 0));
    dt.resize(static_cast<size_t>(need_gx ? group * dsize : 0));
    // The filter gradient walks the output rows in bands whose input rows (and grad_out
    // rows) stay in the L1 cache across the k filter rows: one pass over the whole
    // plane per filter row streamed the tiles from L2 k times.
    const int64_t in_row = it.cols * V * int64_t(sizeof(T)), go_row = gtile.cols * V * int64_t(sizeof(T));
    band = std::max<int64_t>(
        1, (kL1Budget / (in_row + go_row) - (P.k - 1) * P.d) / std::max<int64_t>(1, P.s));
  }

  // (always inlined: a member compiled on its own would miss its caller's instruction set)
  OFA_INLINE void run(const Unit& u) {
    const int64_t kk = P.k * P.k;
    const int64_t g0 = (gtile.pad * gtile.cols + gtile.pad) * V, g_row = gtile.cols * V;
    load_tiles(gt.data(), gtile.rows, gtile.cols, go + u.n * Lg.sn, Lg, P.C, P.OH, P.OW, gtile.pad,
               gtile.pad, u);
    if (need_gw)
      load_tiles(xt.data(), it.rows, it.cols, x + u.n * Lx.sn, Lx, P.C, P.H, P.W, P.p, P.p, u);
    for (int64_t b = u.b0; b < u.b1; ++b) {
      const T* gb = gt.data() + (b - u.b0) * gsize;
      if (need_gx)
        input_grad_block(P, gtile, gb, wp + b * kk * V, wp_flipped + b * kk * V,
                         dt.data() + (b - u.b0) * dsize);
      if (need_gw) {
        const T* xb = xt.data() + (b - u.b0) * xsize;
        T* a = acc + b * kk * V;
        for (int64_t oh0 = 0; oh0 < P.OH; oh0 += band) {
          const int64_t oh1 = std::min(P.OH, oh0 + band);
          if constexpr (kPin) {
            if (wgrad_tile_fixed(P, xb, it.cols, gb + g0, g_row, oh0, oh1, a)) continue;
          }
          for (int64_t i = 0; i < P.k; ++i) {
            if (P.d == 1) wgrad_row<T, true>(P, it, xb, gb + g0, g_row, V, oh0, oh1, i, a);
            else wgrad_row<T, false>(P, it, xb, gb + g0, g_row, V, oh0, oh1, i, a);
          }
        }
      }
    }
    if (need_gx) store_tiles(dt.data(), P.H, P.W, gx + u.n * Lx.sn, Lx, P.C, u);
  }
};

// Both gradients over units [begin, end) (see unit_of; BwdTiles for the arguments).
template <typename T, bool kPin = false>
OFA_INLINE void bwd(const Problem& P, const T* go, const Layout& Lg, const T* x, const Layout& Lx,
                    const T* wp, const T* wp_flipped, T* gx, T* acc, bool need_gx, bool need_gw,
                    int64_t group, int64_t begin, int64_t end) {
  BwdTiles<T, kPin> tiles(P, go, Lg, x, Lx, wp, wp_flipped, gx, acc, need_gx, need_gw, group);
  const int64_t nb = channel_blocks<T>(P.C);
  for (int64_t index = begin; index < end; ++index) tiles.run(unit_of(index, nb, group));
}

// ---------------------------------------------------------------------------------
// Backward straight from channels_last memory (no tiles)
// ---------------------------------------------------------------------------------
// At stride 1 and dilation 1 the gradient of the input is the forward's correlation
// of grad_out, padded by k - 1 - p, with the flipped filter: conv_image_cl reads it in
// place. The filter gradient reads grad_out and the input in place too.

// One output column's taps of one filter row where some fall outside [0, W): those
// read a zero vector. `row`: the input row's pixel 0, iw0: the column of tap 0.
template <typename T, int K>
OFA_INLINE void wgrad_col_cl(const T* row, int64_t xps, int64_t W, int64_t iw0, const T* g,
                             Vec<T, kLanes<T>>* a) {
  constexpr int V = kLanes<T>;
  alignas(64) static const T zeros[V] = {};
  const Vec<T, V> gv = Vec<T, V>::load(g);
#pragma GCC unroll 8
  for (int j = 0; j < K; ++j) {
    const int64_t iw = iw0 + j;
    a[j].fma(Vec<T, V>::load(iw >= 0 && iw < W ? row + iw * xps : zeros), gv);
  }
}

// The filter gradient of one channel block of one image (x, g: its channel 0),
// added into acc [k * k][V]. Output rows go in bands whose input and grad_out rows
// stay in the L1 cache across the K filter rows.
template <typename T, int K, int Q>
OFA_INLINE void wgrad_image_cl(const Problem& P, const T* x, const Layout& Lx, const T* g,
                               const Layout& Lg, T* acc, int64_t oh_begin, int64_t oh_end) {
  constexpr int V = kLanes<T>;
  // interior columns: every tap inside the image (ow - p >= 0, ow - p + K - 1 < W)
  const int64_t lo = std::min(P.OW, P.p), hi = std::clamp<int64_t>(P.W - K + P.p + 1, lo, P.OW);
  const int64_t row_bytes = (P.W + P.OW) * V * int64_t(sizeof(T));
  const int64_t band = std::max<int64_t>(1, kL1Budget / row_bytes - (K - 1));
  for (int64_t oh0 = oh_begin; oh0 < oh_end; oh0 += band) {
    const int64_t oh1 = std::min(oh_end, oh0 + band);
    for (int64_t i = 0; i < K; ++i) {
      // output rows whose tap row i is inside the image: 0 <= oh - p + i < H
      const int64_t r0 = std::max(oh0, P.p - i), r1 = std::min(oh1, P.H + P.p - i);
      if (r1 <= r0) continue;
      Vec<T, V> a[Q * K];
#pragma GCC unroll 32
      for (int t = 0; t < Q * K; ++t) a[t] = Vec<T, V>::zero();
      for (int64_t oh = r0; oh < r1; ++oh) {
        const T* xr = x + (oh - P.p + i) * Lx.sh;
        const T* gr = g + oh * Lg.sh;
        wgrad_run_cl<T, K, Q>(xr + (lo - P.p) * Lx.sw, Lx.sw, gr + lo * Lg.sw, Lg.sw, hi - lo, a);
        // the border columns, spread over the partial sums
        for (int64_t ow = 0; ow < lo; ++ow)
          wgrad_col_cl<T, K>(xr, Lx.sw, P.W, ow - P.p, gr + ow * Lg.sw, a + (ow % Q) * K);
        for (int64_t ow = hi; ow < P.OW; ++ow)
          wgrad_col_cl<T, K>(xr, Lx.sw, P.W, ow - P.p, gr + ow * Lg.sw, a + ((ow - hi + lo) % Q) * K);
      }
      add_partial_sums<T, K, Q>(a, int(i), acc);
    }
  }
}

// Whether the backward reads channels_last tensors in place: stride 1, dilation 1,
// a padding the flipped correlation can take (p <= k - 1), and rows wide enough.
// Measured against the tiles (2 threads, batch 16, fp32, both gradients):
// k = 3 2.0x at 144x32x32, 1.2x at 240x16x16, 0.95x at 480x8x8, 0.7x at 40x9x9;
// k = 5 1.4x at 144x32x32, 0.9x at 240x16x16, 0.7x at 480x8x8 (narrow rows are mostly
// border columns, and their strided reads lose to the tiles' sequential staging);
// k = 7 (one thread, against the tiles' register-blocked filter gradient) 1.1x at
// 144x32x32.
OFA_INLINE bool direct_cl_bwd(const Problem& P, const Layout& Lx, const Layout& Lg) {
  if (!Lx.channels_last() || !Lg.channels_last() || P.s != 1 || P.d != 1) return false;
  if (P.p > P.k - 1) return false;
  return (P.k == 3 && P.OW >= 16) || ((P.k == 5 || P.k == 7) && P.OW >= 24);
}

// The backward when direct_cl_bwd(P, ...) holds (see bwd for the arguments): whole
// channel blocks in place, a narrower last block through tiles.
template <typename T, int K>
OFA_INLINE void bwd_cl_direct_k(const Problem& P, const T* go, const Layout& Lg, const T* x,
                                const Layout& Lx, const T* wp, const T* wp_flipped, T* gx, T* acc,
                                bool need_gx, bool need_gw, int64_t group, int64_t begin,
                                int64_t end) {
  constexpr int V = kLanes<T>;
  constexpr int kk = K * K;
  const int64_t nb = channel_blocks<T>(P.C);
  // the input gradient as a forward: grad_out (OH x OW) in, the input's H x W out
  const Problem Pt{P.N, P.C, P.OH, P.OW, P.H, P.W, K, 1, 1, ofa_fast::dwconv::flipped_padding(K, 1, P.p)};
  const ClColumns cct(Pt);
  std::vector<BwdTiles<T, true>> tail;  // made when a narrower last block first needs it
  // Rows in bands across the unit's blocks: the band's memory (all channels of a few
  // rows) streams in sequentially, then each block reads its part from the L2 cache.
  const int64_t full_end = std::min(nb, P.C / V);  // blocks of V channels
  const int64_t row_bytes = (P.W * 2 + P.OW) * Lx.sw * int64_t(sizeof(T));
  const int64_t rows = std::max<int64_t>(1, kL2Band / row_bytes);
  for (int64_t index = begin; index < end; ++index) {
    const Unit u = unit_of(index, nb, group);
    const int64_t bf = std::min(u.b1, full_end);
    // band [h0, h0 + rows) of the input gradient's rows and of the output's
    for (int64_t h0 = 0; h0 < std::max(P.H, P.OH); h0 += rows) {
      const int64_t h1 = h0 + rows;
      for (int64_t b = u.b0; b < bf; ++b) {
        const T* gb = go + u.n * Lg.sn + b * V;
        if (need_gx && h0 < P.H)
          conv_image_cl<T, K, 1>(Pt, cct, gb, Lg, wp_flipped + b * kk * V, gx + u.n * Lx.sn + b * V, Lx,
                                 h0, std::min(P.H, h1));
        if (need_gw && h0 < P.OH)
          wgrad_image_cl<T, K, (K == 3 ? 3 : 2)>(P, x + u.n * Lx.sn + b * V, Lx, gb, Lg,
                                                 acc + b * kk * V, h0, std::min(P.OH, h1));
      }
    }
    for (int64_t b = std::max(u.b0, bf); b < u.b1; ++b) {
      if (tail.empty()) tail.emplace_back(P, go, Lg, x, Lx, wp, wp_flipped, gx, acc, need_gx, need_gw, 1);
      tail.front().run(Unit{u.n, b, b + 1});
    }
  }
}

template <typename T>
OFA_INLINE void bwd_cl_direct(const Problem& P, const T* go, const Layout& Lg, const T* x,
                              const Layout& Lx, const T* wp, const T* wp_flipped, T* gx, T* acc,
                              bool need_gx, bool need_gw, int64_t group, int64_t begin, int64_t end) {
  if (P.k == 3)
    bwd_cl_direct_k<T, 3>(P, go, Lg, x, Lx, wp, wp_flipped, gx, acc, need_gx, need_gw, group, begin, end);
  else if (P.k == 5)
    bwd_cl_direct_k<T, 5>(P, go, Lg, x, Lx, wp, wp_flipped, gx, acc, need_gx, need_gw, group, begin, end);
  else if (P.k == 7)
    bwd_cl_direct_k<T, 7>(P, go, Lg, x, Lx, wp, wp_flipped, gx, acc, need_gx, need_gw, group, begin, end);
  else  // not a case direct_cl_bwd takes
    bwd<T, true>(P, go, Lg, x, Lx, wp, wp_flipped, gx, acc, need_gx, need_gw, group, begin, end);
}

// ---------------------------------------------------------------------------------
// NCHW along the rows (no transposes)
// ---------------------------------------------------------------------------------
// Each channel's plane is contiguous, so at stride 1 V consecutive outputs of a row are
// one vector, and their tap (i, j) is the V input values from column j on: an
// unaligned load from the plane staged with its zero padding. No transposes (the
// tiles' 16 x 16 register transposes cost about as much as the multiply-adds at
// k = 3). The stride-1 input gradient is the same correlation of grad_out with the
// flipped filter; the filter gradient reads grad_out in place.

// Plane src (H x W, contiguous) into buf at (pad, pad), `cols` values per buffer row.
// Only those are written: the zero border is the caller's (a buffer that starts zeroed).
template <typename T>
OFA_INLINE void stage_plane(T* buf, int64_t cols, const T* src, int64_t H, int64_t W, int64_t pad) {
  for (int64_t r = 0; r < H; ++r) std::copy(src + r * W, src + (r + 1) * W, buf + (r + pad) * cols + pad);
}

// R output rows of V outputs: `in` the staged input at their first tap, `rs` values per
// staged row; w: the channel's taps, `ws` apart. Staged row t feeds output row r through
// filter row t - r: each input vector is loaded once for all the outputs it feeds.
template <typename T, int K, int R>
OFA_INLINE void conv_rows_block(const T* in, int64_t rs, const T* w, int64_t ws, T* out, int64_t ors) {
  constexpr int V = kLanes<T>;
  Vec<T, V> acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec<T, V>::zero();
#pragma GCC unroll 16
  for (int t = 0; t < R + K - 1; ++t) {
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      Vec<T, V> xv = Vec<T, V>::load(in + t * rs + j);
      xv.pin();
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int i = t - r;
        if (i >= 0 && i < K) acc[r].fma(xv, w[(i * K + j) * ws]);
      }
    }
  }
  for (int r = 0; r < R; ++r) acc[r].store(out + r * ors);
}

// The OH x OW output plane y (contiguous) of a staged input (see conv_rows_block).
// A last part-vector of each row goes through `tail` (R x V scratch).
template <typename T, int K, int R>
OFA_INLINE void conv_plane_rows_r(const T* buf, int64_t cols, const T* w, int64_t ws, T* y,
                                  int64_t oh0, int64_t oh1, int64_t OW, T* tail) {
  constexpr int V = kLanes<T>;
  const int64_t nq = OW / V, rem = OW % V;
  for (int64_t oh = oh0; oh + R <= oh1; oh += R) {
    for (int64_t q = 0; q < nq; ++q)
      conv_rows_block<T, K, R>(buf + oh * cols + q * V, cols, w, ws, y + oh * OW + q * V, OW);
    if (rem == 0) continue;
    conv_rows_block<T, K, R>(buf + oh * cols + nq * V, cols, w, ws, tail, V);
    for (int r = 0; r < R; ++r) std::copy(tail + r * V, tail + r * V + rem, y + (oh + r) * OW + nq * V);
  }
}

template <typename T, int K>
OFA_INLINE void conv_plane_rows(const T* buf, int64_t cols, const T* w, int64_t ws, T* y,
                                int64_t OH, int64_t OW, T* tail) {
  constexpr int R = 4;
  const int64_t whole = OH / R * R;
  conv_plane_rows_r<T, K, R>(buf, cols, w, ws, y, 0, whole, OW, tail);
  conv_plane_rows_r<T, K, 1>(buf, cols, w, ws, y, whole, OH, OW, tail);
}

// Staged-buffer geometry of a stride-1 correlation with an (oh x ow) output: every tap
// of every output vector, the last one's padding lanes included, lies inside.
struct RowsBuffer {
  int64_t rows, cols;
  RowsBuffer(int64_t oh, int64_t ow, int64_t k, int V) : rows(oh + k - 1), cols((ow + V - 1) / V * V + k - 1) {}
};

// Whether the forward (and, below, the backward) of NCHW tensors runs along the rows:
// stride 1, dilation 1, k = 3, a padding the flipped correlation can take, rows of 16+
// outputs (narrower ones would waste most of each vector). The kernels take any K, but
// against the cache-line-aligned tiles (one thread, batch 16) only k = 3 gains: forward
// 1.2-1.5x at 28x28 and 32x32; k = 5 runs 1.1-1.3x faster on the tiles (16x16, 32x32,
// 56x56), k = 7 about as fast.
OFA_INLINE bool direct_nchw(const Problem& P, const Layout& Lx, const Layout& Ly) {
  if (Lx.channels_last() || Ly.channels_last() || P.s != 1 || P.d != 1) return false;
  return P.k == 3 && P.p <= P.k - 1 && P.OW >= 16;
}

// Forward over NCHW units [begin, end) (one image and channel block each; see fwd).
template <typename T, int K>
OFA_INLINE void fwd_nchw_rows_k(const Problem& P, const T* x, const Layout& Lx, const T* wp, T* y,
                                const Layout& Ly, int64_t begin, int64_t end) {
  constexpr int V = kLanes<T>;
  constexpr int kk = K * K;
  const int64_t nb = channel_blocks<T>(P.C);
  const RowsBuffer rb(P.OH, P.OW, K, V);
  AlignedVector<T> buf(static_cast<size_t>(rb.rows * rb.cols)), tail(4 * V);  // zeroed: see stage_plane
  for (int64_t index = begin; index < end; ++index) {
    const Unit u = unit_of(index, nb, 1);
    const int64_t nch = std::min<int64_t>(V, P.C - u.b0 * V);
    for (int64_t l = 0; l < nch; ++l) {
      const int64_t c = u.b0 * V + l;
      stage_plane(buf.data(), rb.cols, x + u.n * Lx.sn + c * Lx.sc, P.H, P.W, P.p);
      conv_plane_rows<T, K>(buf.data(), rb.cols, wp + u.b0 * kk * V + l, V, y + u.n * Ly.sn + c * Ly.sc,
                            P.OH, P.OW, tail.data());
    }
  }
}

template <typename T>
OFA_INLINE void fwd_nchw_rows(const Problem& P, const T* x, const Layout& Lx, const T* wp, T* y,
                              const Layout& Ly, int64_t group, int64_t begin, int64_t end) {
  if (P.k == 3) fwd_nchw_rows_k<T, 3>(P, x, Lx, wp, y, Ly, begin, end);
  else fwd(P, x, Lx, wp, y, Ly, group, begin, end);  // not a case direct_nchw takes
}

// The filter gradient over R output rows of V outputs: a[i * K + j] += g(r) * x(r + i, j)
// (xs: the staged input at their first tap, `cols` per row; g: grad_out at the first
// output, OW per row). Staged row t meets output row r at filter row t - r: each input
// vector is loaded once for all the taps it feeds.
// kMasked: only the first n outputs (a row's last part-vector): every load keeps its
// first n lanes and zeros the rest, so the lanes past the row add 0 * 0 (a vector over
// them would multiply input pixels no output reads by zero, and 0 * inf is nan).
template <typename T, int K, int R, bool kMasked = false>
OFA_INLINE void wgrad_rows_block(const T* xs, int64_t cols, const T* g, int64_t OW,
                                 Vec<T, kLanes<T>>* a, int n = kLanes<T>) {
  constexpr int V = kLanes<T>;
  Vec<T, V> gv[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    gv[r] = kMasked ? Vec<T, V>::load_first(g + r * OW, n) : Vec<T, V>::load(g + r * OW);
    gv[r].pin();
  }
#pragma GCC unroll 16
  for (int t = 0; t < R + K - 1; ++t) {
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const T* px = xs + t * cols + j;
      Vec<T, V> xv = kMasked ? Vec<T, V>::load_first(px, n) : Vec<T, V>::load(px);
      xv.pin();
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int i = t - r;
        if (i >= 0 && i < K) a[i * K + j].fma(gv[r], xv);
      }
    }
  }
}

// The filter gradient of one plane, added into acc [K * K][V] still spread over the
// lanes (the caller sums them once at the end: a horizontal sum per plane cost more
// than the plane's multiply-adds at 16 x 16). A row's last part-vector (OW % V) takes
// masked loads (wgrad_rows_block).
template <typename T, int K>
OFA_INLINE void wgrad_plane_rows(const T* xs, int64_t cols, const T* g, int64_t OH, int64_t OW,
                                 T* acc) {
  constexpr int V = kLanes<T>, R = K == 3 ? 4 : 2;  // K * K + R + 1 of 32 vector registers
  const int64_t nq = OW / V;
  const int rem = int(OW % V);
  Vec<T, V> a[K * K];
#pragma GCC unroll 32
  for (int t = 0; t < K * K; ++t) a[t] = Vec<T, V>::zero();
  int64_t oh = 0;
  for (; oh + R <= OH; oh += R) {
    for (int64_t q = 0; q < nq; ++q)
      wgrad_rows_block<T, K, R>(xs + oh * cols + q * V, cols, g + oh * OW + q * V, OW, a);
    if (rem)
      wgrad_rows_block<T, K, R, true>(xs + oh * cols + nq * V, cols, g + oh * OW + nq * V, OW, a, rem);
  }
  for (; oh < OH; ++oh) {
    for (int64_t q = 0; q < nq; ++q)
      wgrad_rows_block<T, K, 1>(xs + oh * cols + q * V, cols, g + oh * OW + q * V, OW, a);
    if (rem)
      wgrad_rows_block<T, K, 1, true>(xs + oh * cols + nq * V, cols, g + oh * OW + nq * V, OW, a, rem);
  }
  // (unrolled: a run-time index into a[] would keep it in memory through the loops above)
#pragma GCC unroll 8
  for (int i = 0; i < K; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      T* dst = acc + (i * K + j) * V;
      a[i * K + j].add(Vec<T, V>::load(dst));
      a[i * K + j].store(dst);
    }
}

// Whether the backward of NCHW tensors runs along the rows (as direct_nchw, on rows of
// 24+). Both gradients against the aligned tiles with their register-blocked filter
// gradient (1 thread, batch 16): k = 3 1.0-1.2x at 28x28 and 32x32, but 0.8-0.9x at
// 16x16 and (noisier) 56x56; k = 5 0.7-0.95x (it was 1.1-1.9x against the old tiles).
OFA_INLINE bool direct_nchw_bwd(const Problem& P, const Layout& Lx, const Layout& Lg) {
  return direct_nchw(P, Lx, Lg) && P.OW >= 24;
}

// Both gradients over NCHW units [begin, end) (see bwd for the arguments, but acc:
// [C][k * k][V], each channel's sums spread over the lanes: see wgrad_plane_rows).
template <typename T, int K>
OFA_INLINE void bwd_nchw_rows_k(const Problem& P, const T* go, const Layout& Lg, const T* x,
                                const Layout& Lx, const T* wp_flipped, T* gx, T* acc, bool need_gx,
                                bool need_gw, int64_t begin, int64_t end) {
  constexpr int V = kLanes<T>;
  constexpr int kk = K * K;
  const int64_t nb = channel_blocks<T>(P.C);
  // the input gradient: grad_out (OH x OW) padded by k - 1 - p, the flipped filter
  const int64_t pt = ofa_fast::dwconv::flipped_padding(K, 1, P.p);
  const RowsBuffer gb(P.H, P.W, K, V), xb(P.OH, P.OW, K, V);
  // zeroed: see stage_plane
  AlignedVector<T> gbuf(static_cast<size_t>(need_gx ? gb.rows * gb.cols : 0));
  AlignedVector<T> xbuf(static_cast<size_t>(need_gw ? xb.rows * xb.cols : 0)), tail(4 * V);
  for (int64_t index = begin; index < end; ++index) {
    const Unit u = unit_of(index, nb, 1);
    const int64_t nch = std::min<int64_t>(V, P.C - u.b0 * V);
    for (int64_t l = 0; l < nch; ++l) {
      const int64_t c = u.b0 * V + l;
      const T* g = go + u.n * Lg.sn + c * Lg.sc;
      if (need_gx) {
        stage_plane(gbuf.data(), gb.cols, g, P.OH, P.OW, pt);
        conv_plane_rows<T, K>(gbuf.data(), gb.cols, wp_flipped + u.b0 * kk * V + l, V,
                              gx + u.n * Lx.sn + c * Lx.sc, P.H, P.W, tail.data());
      }
      if (need_gw) {
        stage_plane(xbuf.data(), xb.cols, x + u.n * Lx.sn + c * Lx.sc, P.H, P.W, P.p);
        wgrad_plane_rows<T, K>(xbuf.data(), xb.cols, g, P.OH, P.OW, acc + c * kk * V);
      }
    }
  }
}

template <typename T>
OFA_INLINE void bwd_nchw_rows(const Problem& P, const T* go, const Layout& Lg, const T* x,
                              const Layout& Lx, const T* wp, const T* wp_flipped, T* gx, T* acc,
                              bool need_gx, bool need_gw, int64_t group, int64_t begin, int64_t end) {
  if (P.k == 3)
    bwd_nchw_rows_k<T, 3>(P, go, Lg, x, Lx, wp_flipped, gx, acc, need_gx, need_gw, begin, end);
  else {  // not a case direct_nchw_bwd takes: the tiles, their sums into lane 0
    constexpr int V = kLanes<T>;
    const int64_t nb = channel_blocks<T>(P.C), kk = P.k * P.k;
    AlignedVector<T> blocks(static_cast<size_t>(need_gw ? nb * kk * V : 0));
    bwd<T, true>(P, go, Lg, x, Lx, wp, wp_flipped, gx, blocks.data(), need_gx, need_gw, group, begin, end);
    if (need_gw)
      for (int64_t c = 0; c < P.C; ++c)
        for (int64_t t = 0; t < kk; ++t) acc[(c * kk + t) * V] += blocks[((c / V) * kk + t) * V + c % V];
  }
}

// ---------------------------------------------------------------------------------
// The in-place paths, by layout
// ---------------------------------------------------------------------------------
// Whether the forward / backward reads its tensors in place (float32 on AVX-512, where
// dwconv_cpu.cpp compiles these): channels_last whole blocks, or NCHW along the rows.
OFA_INLINE bool direct_fwd(const Problem& P, const Layout& Lx, const Layout& Ly) {
  return direct_cl(P, Lx, Ly) || direct_nchw(P, Lx, Ly);
}
OFA_INLINE bool direct_bwd(const Problem& P, const Layout& Lx, const Layout& Lg) {
  return direct_cl_bwd(P, Lx, Lg) || direct_nchw_bwd(P, Lx, Lg);
}
// The filter-gradient accumulator a direct backward of this layout adds into:
// [blocks][k * k][V] (one lane per channel), or NCHW's [C][k * k][V] (each channel's
// sums spread over the lanes).
OFA_INLINE bool direct_bwd_spreads_lanes(const Layout& Lx) { return !Lx.channels_last(); }

template <typename T>
OFA_INLINE void fwd_direct(const Problem& P, const T* x, const Layout& Lx, const T* wp, T* y,
                           const Layout& Ly, int64_t group, int64_t begin, int64_t end) {
  if (Lx.channels_last()) fwd_cl_direct(P, x, Lx, wp, y, Ly, group, begin, end);
  else fwd_nchw_rows(P, x, Lx, wp, y, Ly, group, begin, end);
}

template <typename T>
OFA_INLINE void bwd_direct(const Problem& P, const T* go, const Layout& Lg, const T* x,
                           const Layout& Lx, const T* wp, const T* wp_flipped, T* gx, T* acc,
                           bool need_gx, bool need_gw, int64_t group, int64_t begin, int64_t end) {
  if (Lx.channels_last())
    bwd_cl_direct(P, go, Lg, x, Lx, wp, wp_flipped, gx, acc, need_gx, need_gw, group, begin, end);
  else
    bwd_nchw_rows(P, go, Lg, x, Lx, wp, wp_flipped, gx, acc, need_gx, need_gw, group, begin, end);
}

}  // namespace dw
}  // namespace cpu
}  // namespace ofa_fast

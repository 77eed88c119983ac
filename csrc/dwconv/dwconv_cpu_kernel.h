// CPU kernels of the elastic depthwise convolution: forward, gradient of the input,
// gradient of the filter, for NCHW and channels_last tensors. Plain C++ on Vec<T, W>
// (cpu_vec.h), no torch: dwconv_cpu.cpp owns the tensors, the threads and the
// instruction-set dispatch, and calls these on ranges of independent work.
//
// NCHW: one (n, c) plane at a time, vectorised along the width. The plane is first
// staged into a zero-padded scratch buffer, its columns split by phase (column mod
// stride), so every tap of every output row is one contiguous, unchecked load.
// channels_last: one output row at a time, vectorised across channels; taps read
// neighbouring pixels at a fixed element offset, bounds are checked only at the
// borders. The filter is read through its strides (NCHW) or from a small packed
// [k*k][C] tile built per call (channels_last): never a copy of the max weight.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/cpu_vec.h"
#include "dwconv_index.h"

namespace ofa_fast {
namespace cpu {
namespace dw {

using ofa_fast::dwconv::tap_matches_phase;
using ofa_fast::dwconv::phase_count;
using ofa_fast::dwconv::phase_tap_output_offset;
using ofa_fast::dwconv::tap_output;

// Largest kernel size the kernels take (the op checks it first).
constexpr int kMaxK = ofa_fast::dwconv::kMaxKernelSize;

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

// ---------------------------------------------------------------------------------
// NCHW
// ---------------------------------------------------------------------------------

// Zero-padded, column-phase-split copy of one H x W plane (row stride W):
//   buf[b * rows * L + r * L + u] = src[r - pad_r][u * s + b - pad_c], 0 outside.
template <typename T>
OFA_INLINE void stage_plane(T* buf, const T* src, int64_t H, int64_t W, int64_t rows,
                            int64_t L, int64_t s, int64_t pad_r, int64_t pad_c) {
  for (int64_t b = 0; b < s; ++b) {
    // u such that 0 <= u * s + b - pad_c < W
    int64_t u0 = std::max<int64_t>(0, ceil_div(pad_c - b, s));
    int64_t u1 = std::min<int64_t>(L, floor_div(W - 1 + pad_c - b, s) + 1);
    if (u1 < u0) u1 = u0;
    for (int64_t r = 0; r < rows; ++r) {
      T* dst = buf + (b * rows + r) * L;
      const int64_t sr = r - pad_r;
      if (sr < 0 || sr >= H) {
        std::memset(dst, 0, sizeof(T) * L);
        continue;
      }
      const T* srow = src + sr * W + b - pad_c;
      std::memset(dst, 0, sizeof(T) * u0);
      if (s == 1) {
        std::memcpy(dst + u0, srow + u0, sizeof(T) * (u1 - u0));
      } else {
        for (int64_t u = u0; u < u1; ++u) dst[u] = srow[u * s];
      }
      std::memset(dst + u1, 0, sizeof(T) * (L - u1));
    }
  }
}

// An R x Q tile of output vectors (rows r < R, vectors q < Q):
//   out[r * out_rs + q * V + l] = sum_t wt[t] * base[off[t] + r * in_rs + q * V + l].
// R * Q independent accumulators hide the multiply-add latency.
template <typename T, int V, int R, int Q>
OFA_INLINE void corr_tile(T* out, int64_t out_rs, const T* base, int64_t in_rs, const int64_t* off,
                          const T* wt, int ntaps) {
  Vec<T, V> acc[R][Q];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < Q; ++q) acc[r][q] = Vec<T, V>::zero();
  // row pointers hoisted: each load is then [row + off[t] + constant], one instruction
  const T* row[R];
  for (int r = 0; r < R; ++r) row[r] = base + r * in_rs;
  for (int t = 0; t < ntaps; ++t) {
    const int64_t o = off[t];
    const T w = wt[t];
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < Q; ++q) acc[r][q].fma(Vec<T, V>::load(row[r] + o + q * V), w);
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < Q; ++q) acc[r][q].store(out + r * out_rs + q * V);
}

// nrows x nvec output vectors of one plane (or phase): output row r starts at
// out + r * out_rs and reads base + r * in_rs (+ tap offsets). Every vector is
// written whole, so rows are padded to nvec * V elements by the caller.
template <typename T, int V>
OFA_INLINE void corr_plane(T* out, int64_t out_rs, int64_t nrows, int64_t nvec, const T* base,
                           int64_t in_rs, const int64_t* off, const T* wt, int ntaps) {
  int64_t q = 0;
  for (; q + 2 <= nvec; q += 2) {
    int64_t r = 0;
    for (; r + 4 <= nrows; r += 4)
      corr_tile<T, V, 4, 2>(out + r * out_rs + q * V, out_rs, base + r * in_rs + q * V, in_rs, off, wt, ntaps);
    for (; r < nrows; ++r)
      corr_tile<T, V, 1, 2>(out + r * out_rs + q * V, out_rs, base + r * in_rs + q * V, in_rs, off, wt, ntaps);
  }
  for (; q < nvec; ++q) {
    int64_t r = 0;
    for (; r + 8 <= nrows; r += 8)
      corr_tile<T, V, 8, 1>(out + r * out_rs + q * V, out_rs, base + r * in_rs + q * V, in_rs, off, wt, ntaps);
    for (; r + 2 <= nrows; r += 2)
      corr_tile<T, V, 2, 1>(out + r * out_rs + q * V, out_rs, base + r * in_rs + q * V, in_rs, off, wt, ntaps);
    for (; r < nrows; ++r)
      corr_tile<T, V, 1, 1>(out + r * out_rs + q * V, out_rs, base + r * in_rs + q * V, in_rs, off, wt, ntaps);
  }
}

// Copies the first `cols` elements of each of `rows` rows (strides src_rs, dst_rs).
template <typename T>
OFA_INLINE void copy_rows(T* dst, int64_t dst_rs, const T* src, int64_t src_rs, int64_t rows,
                          int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * dst_rs, src + r * src_rs, sizeof(T) * cols);
}

// Geometry of the staged input plane of the forward and the filter gradient.
struct FwdStage {
  int64_t nvec, width;  // vectors per output row, their elements (>= OW)
  int64_t rows, L;      // staged rows and phase-row length
  FwdStage(const Problem& P, int V) {
    nvec = (P.OW + V - 1) / V;
    width = nvec * V;
    const int64_t reach = (P.k - 1) * P.d;
    rows = (P.OH - 1) * P.s + reach + 1;
    L = width + reach / P.s + 1;
  }
  // Offset, in the staged buffer, of tap (i, j) from the start of output row 0.
  OFA_INLINE int64_t tap(const Problem& P, int64_t i, int64_t j) const {
    return ((j * P.d) % P.s) * rows * L + i * P.d * L + (j * P.d) / P.s;
  }
};

// Forward over planes [begin, end) of the N * C planes.
template <typename T, int V>
OFA_INLINE void fwd_nchw(const Problem& P, const T* x, Filter<T> f, T* y, int64_t begin,
                         int64_t end) {
  const FwdStage st(P, V);
  const int64_t kk = P.k * P.k;
  std::vector<T> buf(static_cast<size_t>(P.s * st.rows * st.L));
  // rows are computed whole vectors wide: straight into y when OW fills them
  const bool direct = st.width == P.OW;
  std::vector<T> ybuf(direct ? 0 : static_cast<size_t>(P.OH * st.width));
  int64_t off[kMaxK * kMaxK];
  T wt[kMaxK * kMaxK];
  for (int64_t i = 0; i < P.k; ++i)
    for (int64_t j = 0; j < P.k; ++j) off[i * P.k + j] = st.tap(P, i, j);
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t c = plane % P.C;
    for (int64_t i = 0; i < P.k; ++i)
      for (int64_t j = 0; j < P.k; ++j) wt[i * P.k + j] = f.at(c, i, j);
    stage_plane(buf.data(), x + plane * P.H * P.W, P.H, P.W, st.rows, st.L, P.s, P.p, P.p);
    T* yp = y + plane * P.OH * P.OW;
    T* out = direct ? yp : ybuf.data();
    corr_plane<T, V>(out, st.width, P.OH, st.nvec, buf.data(), P.s * st.L, off, wt, int(kk));
    if (!direct) copy_rows(yp, P.OW, out, st.width, P.OH, P.OW);
  }
}

// Gradient of the input over planes [begin, end). Input coordinates of one phase
// (ih = a + s * q, iw = b + s * u) share one set of taps, and tap (i, j) reads
// grad_out[q + ro_i][u + co_j]: a stride-1 correlation of the zero-padded
// grad_out plane per phase pair.
template <typename T, int V>
OFA_INLINE void bwd_input_nchw(const Problem& P, const T* go, Filter<T> f, T* gx,
                               int64_t begin, int64_t end) {
  const int64_t s = P.s, k = P.k;
  // offsets of every tap that matches some phase, and their extremes
  int64_t ro_min = 0, ro_max = 0, nq_max = 0, nu_max = 0;
  bool first = true;
  for (int64_t a = 0; a < s; ++a)
    for (int64_t i = 0; i < k; ++i)
      if (tap_matches_phase(a, i, s, P.d, P.p)) {
        const int64_t o = phase_tap_output_offset(a, i, s, P.d, P.p);
        ro_min = first ? o : std::min(ro_min, o);
        ro_max = first ? o : std::max(ro_max, o);
        first = false;
      }
  // rows and columns follow the same rule (square kernels, same s, d, p)
  const int64_t co_min = ro_min, co_max = ro_max;
  for (int64_t a = 0; a < s; ++a) {
    nq_max = std::max(nq_max, phase_count(P.H, a, s));
    nu_max = std::max(nu_max, phase_count(P.W, a, s));
  }
  const int64_t PT = std::max<int64_t>(0, -ro_min), PL = std::max<int64_t>(0, -co_min);
  const int64_t width = (nu_max + V - 1) / V * V;
  const int64_t rows = nq_max + ro_max + PT + 1;
  const int64_t L = width + co_max + PL + 1;
  std::vector<T> buf(static_cast<size_t>(rows * L));
  std::vector<T> tmp(static_cast<size_t>(nq_max * width));
  int64_t off[kMaxK * kMaxK];
  T wt[kMaxK * kMaxK];
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t c = plane % P.C;
    stage_plane(buf.data(), go + plane * P.OH * P.OW, P.OH, P.OW, rows, L, 1, PT, PL);
    T* gxp = gx + plane * P.H * P.W;
    for (int64_t a = 0; a < s; ++a) {
      const int64_t nq = phase_count(P.H, a, s);
      for (int64_t b = 0; b < s; ++b) {
        const int64_t nu = phase_count(P.W, b, s);
        int nt = 0;
        for (int64_t i = 0; i < k; ++i) {
          if (!tap_matches_phase(a, i, s, P.d, P.p)) continue;
          const int64_t ro = phase_tap_output_offset(a, i, s, P.d, P.p);
          for (int64_t j = 0; j < k; ++j) {
            if (!tap_matches_phase(b, j, s, P.d, P.p)) continue;
            const int64_t co = phase_tap_output_offset(b, j, s, P.d, P.p);
            off[nt] = (ro + PT) * L + co + PL;
            wt[nt] = f.at(c, i, j);
            ++nt;
          }
        }
        // the phase's nq x nu values, rows padded to `width`, then put in place
        corr_plane<T, V>(tmp.data(), width, nq, (nu + V - 1) / V, buf.data(), L, off, wt, nt);
        if (s == 1) {
          copy_rows(gxp, P.W, tmp.data(), width, nq, nu);
        } else {
          for (int64_t q = 0; q < nq; ++q) {
            T* dst = gxp + (a + s * q) * P.W + b;
            const T* src = tmp.data() + q * width;
            for (int64_t u = 0; u < nu; ++u) dst[u * s] = src[u];
          }
        }
      }
    }
  }
}

// J filter-gradient accumulators of one filter row i: acc[jj] += g * x(tap j0 + jj),
// summed over every output row of one plane.
template <typename T, int V, int J>
OFA_INLINE void wgrad_taps(const Problem& P, const FwdStage& st, const T* xbuf, const T* gbuf,
                           int64_t i, int64_t j0, T* total) {
  Vec<T, V> acc[J];
  for (int jj = 0; jj < J; ++jj) acc[jj] = Vec<T, V>::zero();
  int64_t off[J];
  for (int jj = 0; jj < J; ++jj) off[jj] = st.tap(P, i, j0 + jj);
  for (int64_t oh = 0; oh < P.OH; ++oh) {
    const T* xb = xbuf + oh * P.s * st.L;
    const T* g = gbuf + oh * st.width;
    for (int64_t r = 0; r < st.nvec; ++r) {
      const Vec<T, V> gv = Vec<T, V>::load(g + r * V);
      for (int jj = 0; jj < J; ++jj) acc[jj].fma(gv, Vec<T, V>::load(xb + off[jj] + r * V));
    }
  }
  for (int jj = 0; jj < J; ++jj) total[j0 + jj] += acc[jj].sum();
}

// Gradient of the filter for channels [cbegin, cend), summed over the batch.
// The staged grad_out rows are zero past OW, so the padded lanes add nothing.
template <typename T, int V>
OFA_INLINE void bwd_weight_nchw(const Problem& P, const T* go, const T* x, FilterGrad<T> gw,
                                int64_t cbegin, int64_t cend) {
  const FwdStage st(P, V);
  std::vector<T> xbuf(static_cast<size_t>(P.s * st.rows * st.L));
  std::vector<T> gbuf(static_cast<size_t>(P.OH * st.width));
  T total[kMaxK * kMaxK];
  for (int64_t c = cbegin; c < cend; ++c) {
    std::fill(total, total + P.k * P.k, T(0));
    for (int64_t n = 0; n < P.N; ++n) {
      const int64_t plane = n * P.C + c;
      stage_plane(xbuf.data(), x + plane * P.H * P.W, P.H, P.W, st.rows, st.L, P.s, P.p, P.p);
      stage_plane(gbuf.data(), go + plane * P.OH * P.OW, P.OH, P.OW, P.OH, st.width, 1, 0, 0);
      for (int64_t i = 0; i < P.k; ++i) {
        T* row_total = total + i * P.k;
        int64_t j = 0;
        for (; j + 8 <= P.k; j += 8) wgrad_taps<T, V, 8>(P, st, xbuf.data(), gbuf.data(), i, j, row_total);
        switch (P.k - j) {
          case 7: wgrad_taps<T, V, 7>(P, st, xbuf.data(), gbuf.data(), i, j, row_total); break;
          case 6: wgrad_taps<T, V, 6>(P, st, xbuf.data(), gbuf.data(), i, j, row_total); break;
          case 5: wgrad_taps<T, V, 5>(P, st, xbuf.data(), gbuf.data(), i, j, row_total); break;
          case 4: wgrad_taps<T, V, 4>(P, st, xbuf.data(), gbuf.data(), i, j, row_total); break;
          case 3: wgrad_taps<T, V, 3>(P, st, xbuf.data(), gbuf.data(), i, j, row_total); break;
          case 2: wgrad_taps<T, V, 2>(P, st, xbuf.data(), gbuf.data(), i, j, row_total); break;
          case 1: wgrad_taps<T, V, 1>(P, st, xbuf.data(), gbuf.data(), i, j, row_total); break;
          default: break;
        }
      }
    }
    for (int64_t i = 0; i < P.k; ++i)
      for (int64_t j = 0; j < P.k; ++j) gw.at(c, i, j) = total[i * P.k + j];
  }
}

// ---------------------------------------------------------------------------------
// channels_last
// ---------------------------------------------------------------------------------

// One row of a channels-last depthwise gather:
//   out[u] = sum over source rows r and column taps j of
//            w[wrow[r], wcol[j]] * row[r][u * in_step + col[j]]   (0 outside [0, in_len))
// for u in [0, nu), output pixel u at out + u * out_step * C. Weights are packed
// [k * k][Cp]. The forward (rows: valid filter rows; in_step = s) and the gradient of
// the input (one phase of an input row; in_step = 1) are both this.
template <typename T>
struct Gather {
  const T* row[kMaxK];
  int64_t wrow[kMaxK];
  int nrows;
  int64_t col[kMaxK];
  int64_t wcol[kMaxK];
  int ncols;
  int64_t in_step, in_len;
  T* out;
  int64_t out_step, nu;
  int64_t C, k;
  const T* wp;
  int64_t Cp;
  int64_t ulo, uhi;  // u whose every column tap is in range

  OFA_INLINE void set_interior() {
    int64_t lo = 0, hi = nu;
    for (int j = 0; j < ncols; ++j) {
      lo = std::max(lo, ceil_div(-col[j], in_step));
      hi = std::min(hi, floor_div(in_len - 1 - col[j], in_step) + 1);
    }
    ulo = std::min(lo, nu);
    uhi = std::max(hi, ulo);
  }
};

// Border pixels [u0, u1): taps are bounds-checked; up to four pixels at a time so
// their accumulations stay independent.
template <typename T, int VW>
OFA_INLINE void gather_edge(const Gather<T>& g, int64_t u0, int64_t u1, int64_t cb) {
  for (int64_t u = u0; u < u1; u += 4) {
    const int n = int(std::min<int64_t>(4, u1 - u));
    Vec<T, VW> acc[4];
    for (int q = 0; q < 4; ++q) acc[q] = Vec<T, VW>::zero();
    for (int r = 0; r < g.nrows; ++r) {
      const T* wrow = g.wp + g.wrow[r] * g.k * g.Cp + cb;
      for (int j = 0; j < g.ncols; ++j) {
        const Vec<T, VW> w = Vec<T, VW>::load(wrow + g.wcol[j] * g.Cp);
        for (int q = 0; q < n; ++q) {
          const int64_t iu = (u + q) * g.in_step + g.col[j];
          if (iu >= 0 && iu < g.in_len) acc[q].fma(Vec<T, VW>::load(g.row[r] + iu * g.C + cb), w);
        }
      }
    }
    for (int q = 0; q < n; ++q) acc[q].store(g.out + (u + q) * g.out_step * g.C + cb);
  }
}

template <typename T, int VW, int R>
OFA_INLINE void gather_block(const Gather<T>& g, int64_t u, int64_t cb) {
  Vec<T, VW> acc[R];
  for (int q = 0; q < R; ++q) acc[q] = Vec<T, VW>::zero();
  const int64_t step = g.in_step * g.C;
  for (int r = 0; r < g.nrows; ++r) {
    const T* wrow = g.wp + g.wrow[r] * g.k * g.Cp + cb;
    for (int j = 0; j < g.ncols; ++j) {
      const Vec<T, VW> w = Vec<T, VW>::load(wrow + g.wcol[j] * g.Cp);
      const T* src = g.row[r] + (u * g.in_step + g.col[j]) * g.C + cb;
      for (int q = 0; q < R; ++q) acc[q].fma(Vec<T, VW>::load(src + q * step), w);
    }
  }
  T* dst = g.out + u * g.out_step * g.C + cb;
  for (int q = 0; q < R; ++q) acc[q].store(dst + q * g.out_step * g.C);
}

template <typename T, int VW>
OFA_INLINE void gather_channels(const Gather<T>& g, int64_t cb) {
  gather_edge<T, VW>(g, 0, g.ulo, cb);
  int64_t u = g.ulo;
  for (; u + 8 <= g.uhi; u += 8) gather_block<T, VW, 8>(g, u, cb);
  for (; u + 4 <= g.uhi; u += 4) gather_block<T, VW, 4>(g, u, cb);
  for (; u < g.uhi; ++u) gather_block<T, VW, 1>(g, u, cb);
  gather_edge<T, VW>(g, g.uhi, g.nu, cb);
}

// Work is split into rows (one output or input row of one image, all channels):
// the rows a row reads are then read in address order, and mostly still in L2
// for the next row. (Running all rows of one channel block instead strides
// through memory and was twice as slow.)
// Runs op.run<VW>(cb) over every channel: full vectors, then the tail as halves,
// quarters and single channels.
template <typename T, typename Op>
OFA_INLINE void run_channels(Op& op, int64_t C) {
  constexpr int V = kLanes<T>;
  int64_t cb = 0;
  for (; cb + V <= C; cb += V) op.template run<V>(cb);
  if (cb + V / 2 <= C) {
    op.template run<V / 2>(cb);
    cb += V / 2;
  }
  if (cb + V / 4 <= C) {
    op.template run<V / 4>(cb);
    cb += V / 4;
  }
  for (; cb < C; ++cb) op.template run<1>(cb);
}

template <typename T>
struct GatherOp {
  const Gather<T>& g;
  template <int VW>
  OFA_INLINE void run(int64_t cb) {
    gather_channels<T, VW>(g, cb);
  }
};

// Forward over output rows [begin, end) of the N * OH rows.
template <typename T>
OFA_INLINE void fwd_nhwc(const Problem& P, const T* x, const T* wp, int64_t Cp, T* y,
                         int64_t begin, int64_t end) {
  Gather<T> g;
  g.ncols = int(P.k);
  for (int64_t j = 0; j < P.k; ++j) {
    g.col[j] = j * P.d - P.p;
    g.wcol[j] = j;
  }
  g.in_step = P.s;
  g.in_len = P.W;
  g.out_step = 1;
  g.nu = P.OW;
  g.C = P.C;
  g.k = P.k;
  g.wp = wp;
  g.Cp = Cp;
  g.set_interior();
  GatherOp<T> op{g};
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / P.OH, oh = row % P.OH;
    g.nrows = 0;
    for (int64_t i = 0; i < P.k; ++i) {
      const int64_t ih = oh * P.s - P.p + i * P.d;
      if (ih < 0 || ih >= P.H) continue;
      g.row[g.nrows] = x + (n * P.H + ih) * P.W * P.C;
      g.wrow[g.nrows] = i;
      ++g.nrows;
    }
    g.out = y + row * P.OW * P.C;
    run_channels<T>(op, P.C);
  }
}

// Gradient of the input over input rows [begin, end) of the N * H rows: input row ih,
// column phase b (iw = b + s * u) is a gather over the grad_out rows and columns
// that read it.
template <typename T>
OFA_INLINE void bwd_input_nhwc(const Problem& P, const T* go, const T* wp, int64_t Cp, T* gx,
                               int64_t begin, int64_t end) {
  std::vector<Gather<T>> phase(static_cast<size_t>(P.s));  // column taps per phase b
  for (int64_t b = 0; b < P.s; ++b) {
    Gather<T>& g = phase[b];
    g.ncols = 0;
    for (int64_t j = 0; j < P.k; ++j) {
      if (!tap_matches_phase(b, j, P.s, P.d, P.p)) continue;
      g.col[g.ncols] = phase_tap_output_offset(b, j, P.s, P.d, P.p);
      g.wcol[g.ncols] = j;
      ++g.ncols;
    }
    g.in_step = 1;
    g.in_len = P.OW;
    g.out_step = P.s;
    g.nu = phase_count(P.W, b, P.s);
    g.C = P.C;
    g.k = P.k;
    g.wp = wp;
    g.Cp = Cp;
    g.set_interior();
  }
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / P.H, ih = row % P.H;
    for (int64_t b = 0; b < P.s; ++b) {
      Gather<T>& g = phase[b];
      g.nrows = 0;
      for (int64_t i = 0; i < P.k; ++i) {
        const int64_t oh = tap_output(ih, i, P.s, P.d, P.p, P.OH);
        if (oh < 0) continue;
        g.row[g.nrows] = go + (n * P.OH + oh) * P.OW * P.C;
        g.wrow[g.nrows] = i;
        ++g.nrows;
      }
      g.out = gx + (row * P.W + b) * P.C;
      GatherOp<T> op{g};
      run_channels<T>(op, P.C);
    }
  }
}

// Filter-gradient accumulators of filter row i, column taps [j0, j0 + J), channels
// [cb, cb + VW), over one output row; added into acc [k * k][Cp].
template <typename T, int VW, int J>
OFA_INLINE void wgrad_row_nhwc(const Problem& P, const T* gorow, const T* xrow, int64_t i,
                               int64_t j0, int64_t cb, int64_t olo, int64_t ohi, T* accbuf,
                               int64_t Cp) {
  Vec<T, VW> acc[J];
  for (int jj = 0; jj < J; ++jj) acc[jj] = Vec<T, VW>::zero();
  const int64_t C = P.C;
  auto checked = [&](int64_t ow) {
    const Vec<T, VW> g = Vec<T, VW>::load(gorow + ow * C + cb);
    for (int jj = 0; jj < J; ++jj) {
      const int64_t iw = ow * P.s - P.p + (j0 + jj) * P.d;
      if (iw < 0 || iw >= P.W) continue;
      acc[jj].fma(g, Vec<T, VW>::load(xrow + iw * C + cb));
    }
  };
  for (int64_t ow = 0; ow < olo; ++ow) checked(ow);
  for (int64_t ow = olo; ow < ohi; ++ow) {  // interior: every tap in range
    const Vec<T, VW> g = Vec<T, VW>::load(gorow + ow * C + cb);
    const T* src = xrow + (ow * P.s - P.p + j0 * P.d) * C + cb;
    for (int jj = 0; jj < J; ++jj) acc[jj].fma(g, Vec<T, VW>::load(src + jj * P.d * C));
  }
  for (int64_t ow = ohi; ow < P.OW; ++ow) checked(ow);
  for (int jj = 0; jj < J; ++jj) {
    T* dst = accbuf + (i * P.k + j0 + jj) * Cp + cb;
    Vec<T, VW> cur = Vec<T, VW>::load(dst);
    cur.add(acc[jj]);
    cur.store(dst);
  }
}

template <typename T, int VW>
OFA_INLINE void wgrad_channels_nhwc(const Problem& P, const T* gorow, const T* xrow, int64_t i,
                                    int64_t cb, int64_t olo, int64_t ohi, T* accbuf, int64_t Cp) {
  int64_t j = 0;
  for (; j + 8 <= P.k; j += 8) wgrad_row_nhwc<T, VW, 8>(P, gorow, xrow, i, j, cb, olo, ohi, accbuf, Cp);
  switch (P.k - j) {
    case 7: wgrad_row_nhwc<T, VW, 7>(P, gorow, xrow, i, j, cb, olo, ohi, accbuf, Cp); break;
    case 6: wgrad_row_nhwc<T, VW, 6>(P, gorow, xrow, i, j, cb, olo, ohi, accbuf, Cp); break;
    case 5: wgrad_row_nhwc<T, VW, 5>(P, gorow, xrow, i, j, cb, olo, ohi, accbuf, Cp); break;
    case 4: wgrad_row_nhwc<T, VW, 4>(P, gorow, xrow, i, j, cb, olo, ohi, accbuf, Cp); break;
    case 3: wgrad_row_nhwc<T, VW, 3>(P, gorow, xrow, i, j, cb, olo, ohi, accbuf, Cp); break;
    case 2: wgrad_row_nhwc<T, VW, 2>(P, gorow, xrow, i, j, cb, olo, ohi, accbuf, Cp); break;
    case 1: wgrad_row_nhwc<T, VW, 1>(P, gorow, xrow, i, j, cb, olo, ohi, accbuf, Cp); break;
    default: break;
  }
}

template <typename T>
struct WgradOp {
  const Problem& P;
  const T* gorow;
  const T* xrow;
  int64_t i, olo, ohi;
  T* accbuf;
  int64_t Cp;
  template <int VW>
  OFA_INLINE void run(int64_t cb) {
    wgrad_channels_nhwc<T, VW>(P, gorow, xrow, i, cb, olo, ohi, accbuf, Cp);
  }
};

// Gradient of the filter over output rows [begin, end) of the N * OH rows,
// accumulated into this worker's private buffer accbuf [k * k][Cp] (the caller sums
// the workers').
template <typename T>
OFA_INLINE void bwd_weight_nhwc(const Problem& P, const T* go, const T* x, T* accbuf,
                                int64_t Cp, int64_t begin, int64_t end) {
  int64_t olo, ohi;
  ofa_fast::dwconv::interior_output_range(P.k, P.W, P.OW, P.s, P.d, P.p, &olo, &ohi);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / P.OH, oh = row % P.OH;
    const T* gorow = go + row * P.OW * P.C;
    for (int64_t i = 0; i < P.k; ++i) {
      const int64_t ih = oh * P.s - P.p + i * P.d;
      if (ih < 0 || ih >= P.H) continue;
      WgradOp<T> op{P, gorow, x + (n * P.H + ih) * P.W * P.C, i, olo, ohi, accbuf, Cp};
      run_channels<T>(op, P.C);
    }
  }
}

}  // namespace dw
}  // namespace cpu
}  // namespace ofa_fast

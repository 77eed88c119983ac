// CPU kernels of OFA's kernel-transform chain, vectorised across channels: a block of
// V = kLanes<T> channels runs the chain together, every filter tap one vector of V
// channels, every matrix entry a broadcast scalar (the matrices are read in place,
// in their own layout). Per step: D^4 vector multiply-adds for V channels. Plain C++
// on Vec<T, V>; kernel_transform_cpu.cpp owns tensors, threads and ISA dispatch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/cpu_vec.h"
#include "kernel_transform_index.h"

namespace ofa_fast {
namespace cpu {
namespace kt {

using ofa_fast::kernel_transform::crop_flat_index;

template <typename T>
struct Mat {  // a transform matrix, read in place through its strides
  const T* p;
  int64_t s0, s1;
  OFA_INLINE T at(int64_t r, int64_t e) const { return p[r * s0 + e * s1]; }
};

struct Chain {
  int64_t m;                 // steps
  int64_t size[17];          // kernel sizes, size[0] = K, size[m] = k
};

// Weight of channel c, tap (a, b) of the max kernel: w[c * ws0 + a * ws2 + b * ws3].
template <typename T>
struct Weight {
  const T* p;
  int64_t ws0, ws2, ws3;
};

// Per-block scratch: for each step q, the crop it reads (D^2 vectors) and what it
// writes (D^2 vectors); sized for the largest step.
template <typename T>
struct Scratch {
  AlignedVector<T> buf;  // whole registers on cache-line boundaries
  int64_t per;  // elements per stage array
  explicit Scratch(const Chain& ch) : per(ch.size[0] * ch.size[0] * kLanes<T>) {
    buf.assign(static_cast<size_t>(2 * (ch.m + 1) * per), T(0));
  }
  T* crop(int64_t q) { return buf.data() + 2 * q * per; }
  T* out(int64_t q) { return buf.data() + (2 * q + 1) * per; }
};

// out[r] = sum_e M(r, e) * in[e] for rows [r0, r0 + R) (vectors of V channels, M's
// entries broadcast; M^T instead when `transposed`). R rows at once: R independent
// sums (one sum alone waited out the multiply-add latency at every term).
template <typename T, int R, bool kTransposed>
OFA_INLINE void mat_vec_rows(const Mat<T>& M, const T* in, T* out, int r0, int n) {
  constexpr int V = kLanes<T>;
  Vec<T, V> acc[R];
#pragma GCC unroll 8
  for (int k = 0; k < R; ++k) acc[k] = Vec<T, V>::zero();
  for (int e = 0; e < n; ++e) {
    const Vec<T, V> v = Vec<T, V>::load(in + e * V);
#pragma GCC unroll 8
    for (int k = 0; k < R; ++k) acc[k].fma(v, kTransposed ? M.at(e, r0 + k) : M.at(r0 + k, e));
  }
#pragma GCC unroll 8
  for (int k = 0; k < R; ++k) acc[k].store(out + (r0 + k) * V);
}

template <typename T, bool kTransposed>
OFA_INLINE void mat_vec(const Mat<T>& M, const T* in, T* out, int n) {
  int r = 0;
  for (; r + 8 <= n; r += 8) mat_vec_rows<T, 8, kTransposed>(M, in, out, r, n);
  if (r + 4 <= n) {
    mat_vec_rows<T, 4, kTransposed>(M, in, out, r, n);
    r += 4;
  }
  for (; r < n; ++r) mat_vec_rows<T, 1, kTransposed>(M, in, out, r, n);
}

// Runs the chain for channels [c0, c0 + nc) (nc <= V; lanes past nc are zero).
template <typename T>
OFA_INLINE void chain_forward(const Chain& ch, const Weight<T>& w, const Mat<T>* M, int64_t c0,
                              int64_t nc, Scratch<T>& st) {
  constexpr int V = kLanes<T>;
  for (int64_t q = 0; q < ch.m; ++q) {
    const int S = int(ch.size[q]), D = int(ch.size[q + 1]), n = D * D, o = S / 2 - D / 2;
    T* crop = st.crop(q);
    if (q == 0) {
      for (int a = 0; a < D; ++a)
        for (int b = 0; b < D; ++b) {
          T* dst = crop + (a * D + b) * V;
          for (int l = 0; l < V; ++l)
            dst[l] = l < nc ? w.p[(c0 + l) * w.ws0 + (o + a) * w.ws2 + (o + b) * w.ws3] : T(0);
        }
    } else {
      const T* prev = st.out(q - 1);
      for (int e = 0; e < n; ++e) Vec<T, V>::load(prev + crop_flat_index(e, S, D) * V).store(crop + e * V);
    }
    mat_vec<T, false>(M[q], crop, st.out(q), n);
  }
}

// Forward for channel blocks [b0, b1): filter [C][k * k].
template <typename T>
OFA_INLINE void forward(const Chain& ch, const Weight<T>& w, const Mat<T>* M, int64_t C, T* filter,
                        int64_t b0, int64_t b1) {
  constexpr int V = kLanes<T>;
  Scratch<T> st(ch);
  const int64_t kk = ch.size[ch.m] * ch.size[ch.m];
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t c0 = blk * V, nc = std::min<int64_t>(V, C - c0);
    chain_forward(ch, w, M, c0, nc, st);
    const T* f = st.out(ch.m - 1);
    for (int64_t l = 0; l < nc; ++l)
      for (int64_t i = 0; i < kk; ++i) filter[(c0 + l) * kk + i] = f[i * V + l];
  }
}

// Backward for channel blocks [b0, b1). grad: [C][k * k]. Writes the active window
// of gw (strides gs0, gs2, gs3); adds the matrices' gradients, still per lane, into
// gM (step q at gM + moff[q], [D^2][D^2][V]; the caller sums the lanes).
template <typename T>
OFA_INLINE void backward(const Chain& ch, const Weight<T>& w, const Mat<T>* M, int64_t C,
                         const T* grad, T* gw, int64_t gs0, int64_t gs2, int64_t gs3, T* gM,
                         const int64_t* moff, int64_t b0, int64_t b1) {
  constexpr int V = kLanes<T>;
  Scratch<T> st(ch);
  const int64_t K = ch.size[0], kk = ch.size[ch.m] * ch.size[ch.m];
  AlignedVector<T> gbuf(static_cast<size_t>(2 * K * K * V));
  T* g = gbuf.data();            // gradient of the current step's output
  T* dcrop = g + K * K * V;      // gradient of its crop
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t c0 = blk * V, nc = std::min<int64_t>(V, C - c0);
    chain_forward(ch, w, M, c0, nc, st);
    for (int64_t i = 0; i < kk; ++i)
      for (int64_t l = 0; l < V; ++l) g[i * V + l] = l < nc ? grad[(c0 + l) * kk + i] : T(0);
    for (int64_t q = ch.m - 1; q >= 0; --q) {
      const int S = int(ch.size[q]), D = int(ch.size[q + 1]), n = D * D, o = S / 2 - D / 2;
      const T* crop = st.crop(q);
      T* gm = gM + moff[q];
      // dcrop[e] = sum_r M[r, e] g[r];  gM[r, e] += g[r] * crop[e] (per lane)
      mat_vec<T, true>(M[q], g, dcrop, n);
      for (int r = 0; r < n; ++r) {
        const Vec<T, V> gr = Vec<T, V>::load(g + r * V);
        for (int e = 0; e < n; ++e) {
          Vec<T, V> a = Vec<T, V>::load(gm + (r * n + e) * V);
          a.fma(gr, Vec<T, V>::load(crop + e * V));
          a.store(gm + (r * n + e) * V);
        }
      }
      if (q == 0) {
        for (int a = 0; a < D; ++a)
          for (int b = 0; b < D; ++b)
            for (int64_t l = 0; l < nc; ++l)
              gw[(c0 + l) * gs0 + (o + a) * gs2 + (o + b) * gs3] = dcrop[(a * D + b) * V + l];
      } else {  // the gradient of the previous step's S x S output: dcrop in its window
        for (int i = 0; i < S * S * V; ++i) g[i] = 0;
        for (int e = 0; e < n; ++e)
          Vec<T, V>::load(dcrop + e * V).store(g + crop_flat_index(e, S, D) * V);
      }
    }
  }
}

}  // namespace kt
}  // namespace cpu
}  // namespace ofa_fast

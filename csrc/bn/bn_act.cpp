// Batch norm + activation in one op (CPU): OFA's conv -> DynamicBatchNorm2d -> act
// triple spends more time in the BN and activation passes than in the depthwise conv.
//
//   batch_norm_act(x [N, C, H, W], weight [C]?, bias [C]?, running_mean [C]?,
//                  running_var [C]?, training, eps, activation)
//     -> (y, mean, invstd)      y = act((x - mean) * invstd * weight + bias)
//
// training: mean / invstd are the batch's (biased variance); the caller updates the
// running statistics from them (as F.batch_norm would). Eval: the running ones. The
// forward reads x twice for the statistics (mean, then the centred sum of squares) and
// once more to write y, with the activation applied on the way: one read and one write
// fewer than BN then activation. The backward recomputes the pre-activation from x and
// makes two passes (the per-channel sums of dz and dz * x_hat, then grad_x), against
// the four of PyTorch's activation backward then BN backward. Activations: none, relu,
// relu6, h_swish, with the derivatives PyTorch's own modules use at the kinks.
// The weight and bias are the active slices of the max parameters (views, read in
// place); accumulation is in the tensor's dtype with one vector accumulator per lane.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/cpu_vec.h"
#include "common/memory_format.h"

namespace ofa_fast {
namespace {

using cpu::kLanes;

enum class Act { kNone, kRelu, kRelu6, kHswish };

Act parse_act(c10::string_view s, const char* op) {
  if (s == "none") return Act::kNone;
  if (s == "relu") return Act::kRelu;
  if (s == "relu6") return Act::kRelu6;
  if (s == "h_swish") return Act::kHswish;
  TORCH_CHECK(false, op, ": activation '", s, "' is not allowed; it must be one of none, relu, "
              "relu6, h_swish");
}

// The activation and its derivative, branch-free (selects) so the loops vectorize:
// d act / dz as autograd of nn.ReLU (threshold: z > 0), nn.ReLU6 (hardtanh: 0 < z < 6)
// and F.hardswish (z <= -3: 0; z < 3: z / 3 + 1/2; else 1).
template <Act A, typename T>
OFA_INLINE T act_fwd(T z) {
  if constexpr (A == Act::kRelu) return z > T(0) ? z : T(0);
  else if constexpr (A == Act::kRelu6) return std::min(std::max(z, T(0)), T(6));
  else if constexpr (A == Act::kHswish) return z * std::min(std::max(z + T(3), T(0)), T(6)) / T(6);
  else return z;
}

template <Act A, typename T>
OFA_INLINE T act_grad(T z) {
  if constexpr (A == Act::kRelu) return z > T(0) ? T(1) : T(0);
  else if constexpr (A == Act::kRelu6) return (z > T(0) && z < T(6)) ? T(1) : T(0);
  else if constexpr (A == Act::kHswish)
    return z <= T(-3) ? T(0) : (z < T(3) ? z / T(3) + T(0.5) : T(1));
  else return T(1);
}

// ---- forward -------------------------------------------------------------------------

// ---- kernels ---------------------------------------------------------------------------
// Range kernels (always inlined) do the work of a parallel_for chunk; the entry points
// below are compiled for AVX-512, AVX2 and the baseline (OFA_CPU_MULTIVERSION) and inline
// them, so the loops get the wide instructions. Inner loops over a fixed block of L lanes
// keep one accumulator per lane: independent lanes, vectorized without reassociating.

template <typename T>
struct BnArgs {
  const T* x;
  const T* g;       // grad_output (backward)
  T* out;           // y (forward) or grad_x (backward)
  const T* scale;   // weight * invstd
  const T* shift;   // bias - mean * scale
  const T* mean;
  const T* k1;      // backward: grad_x = dz * k1 - (x - mean) * k2 - k3
  const T* k2;
  const T* k3;
  T* acc;           // per-part partial sums
  int64_t N, C, P, rows_per_part;
};

// NCHW statistics of channels [b, e): mean, then the centred sum of squares
// The sum of f(x) over channel c's N NCHW planes, one accumulator per lane.
template <typename T, typename F>
OFA_INLINE T channel_sum(const BnArgs<T>& a, int64_t c, F f) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  T tail = 0;
  for (int64_t n = 0; n < a.N; ++n) {
    const T* xp = a.x + (n * a.C + c) * a.P;
    int64_t i = 0;
    for (; i + L <= a.P; i += L)
      for (int j = 0; j < L; ++j) acc[j] += f(xp[i + j]);
    for (; i < a.P; ++i) tail += f(xp[i]);
  }
  for (int j = 0; j < L; ++j) tail += acc[j];
  return tail;
}

template <typename T>
OFA_INLINE void channel_stats(const BnArgs<T>& a, int64_t c, T& mean, T& var) {
  const T M = T(a.N * a.P);
  const T m = channel_sum(a, c, [](T v) { return v; }) / M;
  mean = m;
  var = channel_sum(a, c, [m](T v) { return (v - m) * (v - m); }) / M;
}

template <typename T>
OFA_INLINE void stats_nchw_range(const BnArgs<T>& a, T* mean, T* var, int64_t b, int64_t e) {
  for (int64_t c = b; c < e; ++c) channel_stats<T>(a, c, mean[c], var[c]);
}

// channels_last rows (C values each). __restrict: the sums are in memory beside the
// tensors, and without it GCC gave up the alias checks of the backward's row loop (seven
// pointers) and ran it scalar: 5-10x slower than NCHW.
template <typename T>
OFA_INLINE void row_stats(const T* __restrict x, const T* __restrict mean, T* __restrict acc,
                          bool centred, int64_t C) {
  if (centred)
    for (int64_t c = 0; c < C; ++c) acc[c] += (x[c] - mean[c]) * (x[c] - mean[c]);
  else
    for (int64_t c = 0; c < C; ++c) acc[c] += x[c];
}

template <Act A, typename T>
OFA_INLINE void row_fwd(const T* __restrict x, const T* __restrict scale,
                        const T* __restrict shift, T* __restrict y, int64_t C) {
  for (int64_t c = 0; c < C; ++c) y[c] = act_fwd<A>(x[c] * scale[c] + shift[c]);
}

template <Act A, typename T>
OFA_INLINE void row_sums(const T* __restrict g, const T* __restrict x, const T* __restrict scale,
                         const T* __restrict shift, const T* __restrict mean, T* __restrict s1,
                         T* __restrict s2, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    const T dz = g[c] * act_grad<A>(x[c] * scale[c] + shift[c]);
    s1[c] += dz;
    s2[c] += dz * (x[c] - mean[c]);
  }
}

template <Act A, typename T>
OFA_INLINE void row_grad(const T* __restrict g, const T* __restrict x, const T* __restrict scale,
                         const T* __restrict shift, const T* __restrict mean,
                         const T* __restrict k1, const T* __restrict k2, const T* __restrict k3,
                         T* __restrict out, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    const T dz = g[c] * act_grad<A>(x[c] * scale[c] + shift[c]);
    out[c] = dz * k1[c] - (x[c] - mean[c]) * k2[c] - k3[c];
  }
}

// (mean, m2) of count na merged with (bmean, bm2) of count nb (Chan et al.'s update;
// m2: the centred sum of squares)
template <typename T>
OFA_INLINE void merge_moments(T* __restrict mean, T* __restrict m2, const T* __restrict bmean,
                              const T* __restrict bm2, T na, T nb, int64_t C) {
  const T fb = nb / (na + nb), fab = na * fb;
  for (int64_t c = 0; c < C; ++c) {
    const T delta = bmean[c] - mean[c];
    mean[c] += delta * fb;
    m2[c] += bm2[c] + delta * delta * fab;
  }
}

// channels_last statistics of parts [b, e): part t's rows in chunks that stay in the L2
// cache, each chunk's mean and centred sum of squares from two passes over it, merged into
// the part's (mean, m2) at acc[t * 4C ...] (then 2C of chunk scratch). One read of x from
// memory (the two whole-tensor passes read it twice), the centred sums' precision.
template <typename T>
OFA_INLINE void stats_rows_range(const BnArgs<T>& a, int64_t chunk, int64_t b, int64_t e) {
  const int64_t R = a.N * a.P, C = a.C;
  for (int64_t t = b; t < e; ++t) {
    T* pm = a.acc + t * 4 * C;
    T *pm2 = pm + C, *cm = pm2 + C, *cm2 = cm + C;
    const int64_t r0 = t * a.rows_per_part, r1 = std::min(R, r0 + a.rows_per_part);
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
      const int64_t c1 = std::min(r1, c0 + chunk);
      std::fill(cm, cm + 2 * C, T(0));
      for (int64_t r = c0; r < c1; ++r) row_stats<T>(a.x + r * C, nullptr, cm, false, C);
      const T inv = T(1) / T(c1 - c0);
      for (int64_t c = 0; c < C; ++c) cm[c] *= inv;
      for (int64_t r = c0; r < c1; ++r) row_stats<T>(a.x + r * C, cm, cm2, true, C);
      merge_moments<T>(pm, pm2, cm, cm2, T(c0 - r0), T(c1 - c0), C);
    }
  }
}

template <Act A, typename T>
OFA_INLINE void fwd_range(const BnArgs<T>& a, bool rows, int64_t b, int64_t e) {
  const int64_t C = a.C, P = a.P;
  if (rows) {
    for (int64_t r = b; r < e; ++r) row_fwd<A, T>(a.x + r * C, a.scale, a.shift, a.out + r * C, C);
    return;
  }
  for (int64_t q = b; q < e; ++q) {
    const T k = a.scale[q % C], s = a.shift[q % C];
    const T* xp = a.x + q * P;
    T* yp = a.out + q * P;
    for (int64_t i = 0; i < P; ++i) yp[i] = act_fwd<A>(xp[i] * k + s);
  }
}

// NCHW training, each channel of [b, e) at once: its statistics, then its N planes of y
// while they are in cache (the two-pass path reads x from memory a second time).
// weight / bias: nullptr when absent. The same arithmetic as stats_nchw_range, then
// invstd = rsqrt(var + eps) and affine_of, then fwd_range.
template <Act A, typename T>
OFA_INLINE void fused_fwd_range(const BnArgs<T>& a, const T* weight, const T* bias, T eps,
                                T* mean, T* invstd, int64_t b, int64_t e) {
  for (int64_t c = b; c < e; ++c) {
    T m, v;
    channel_stats<T>(a, c, m, v);
    const T is = T(1) / std::sqrt(v + eps);
    const T k = weight != nullptr ? is * weight[c] : is;
    const T s = bias != nullptr ? -m * k + bias[c] : -m * k;
    mean[c] = m;
    invstd[c] = is;
    for (int64_t n = 0; n < a.N; ++n) {
      const T* xp = a.x + (n * a.C + c) * a.P;
      T* yp = a.out + (n * a.C + c) * a.P;
      for (int64_t i = 0; i < a.P; ++i) yp[i] = act_fwd<A>(xp[i] * k + s);
    }
  }
}

// NCHW: the sums of dz and of dz * (x - mean) over channel c's N planes
template <Act A, typename T>
OFA_INLINE void channel_sums(const BnArgs<T>& a, int64_t c, T& sum_dz, T& sum_dzx) {
  constexpr int L = kLanes<T>;
  const int64_t C = a.C, P = a.P;
  const T k = a.scale[c], s = a.shift[c], m = a.mean[c];
  T a1[L] = {}, a2[L] = {};
  T t1 = 0, t2 = 0;
  for (int64_t n = 0; n < a.N; ++n) {
    const T* gp = a.g + (n * C + c) * P;
    const T* xp = a.x + (n * C + c) * P;
    int64_t i = 0;
    for (; i + L <= P; i += L) {
      for (int j = 0; j < L; ++j) {
        const T xv = xp[i + j];
        const T dz = gp[i + j] * act_grad<A>(xv * k + s);
        a1[j] += dz;
        a2[j] += dz * (xv - m);
      }
    }
    for (; i < P; ++i) {
      const T dz = gp[i] * act_grad<A>(xp[i] * k + s);
      t1 += dz;
      t2 += dz * (xp[i] - m);
    }
  }
  for (int j = 0; j < L; ++j) {
    t1 += a1[j];
    t2 += a2[j];
  }
  sum_dz = t1;
  sum_dzx = t2;
}

// grad_x of NCHW plane q (image q / C, channel q % C), given the channel's k1..k3
template <Act A, typename T>
OFA_INLINE void plane_grad(const BnArgs<T>& a, int64_t q, T a1, T a2, T a3) {
  const int64_t c = q % a.C, P = a.P;
  const T k = a.scale[c], s = a.shift[c], m = a.mean[c];
  const T* gp = a.g + q * P;
  const T* xp = a.x + q * P;
  T* out = a.out + q * P;
  for (int64_t i = 0; i < P; ++i) {
    const T dz = gp[i] * act_grad<A>(xp[i] * k + s);
    out[i] = dz * a1 - (xp[i] - m) * a2 - a3;
  }
}

// NCHW, both passes of each channel of [b, e) back to back: its N planes of x and
// grad_output are read again from the L2 cache, not from memory. w_invstd = weight *
// invstd; m: the values per channel (N * P), 0 in eval mode (fixed statistics). The
// same arithmetic as the two-pass path (sums_range, then the k's, then bwd_range).
template <Act A, typename T>
OFA_INLINE void fused_bwd_range(const BnArgs<T>& a, const T* w_invstd, const T* invstd, T m,
                                T* sum_dz, T* sum_dz_xhat, int64_t b, int64_t e) {
  for (int64_t c = b; c < e; ++c) {
    T s1, s2;
    channel_sums<A, T>(a, c, s1, s2);
    const T sxh = s2 * invstd[c];
    sum_dz[c] = s1;
    sum_dz_xhat[c] = sxh;
    if (a.out == nullptr) continue;
    const T k1 = w_invstd[c];
    const T k2 = m > T(0) ? k1 * invstd[c] * sxh / m : T(0);
    const T k3 = m > T(0) ? k1 * s1 / m : T(0);
    for (int64_t n = 0; n < a.N; ++n) plane_grad<A, T>(a, n * a.C + c, k1, k2, k3);
  }
}

// z = x * scale + shift (the pre-activation), dz = g * act'(z): sums of dz and of
// dz * (x - mean) per channel (NCHW: channels [b, e); rows: parts [b, e) into acc)
template <Act A, typename T>
OFA_INLINE void sums_range(const BnArgs<T>& a, bool rows, T* sum_dz, T* sum_dzx, int64_t b,
                           int64_t e) {
  const int64_t C = a.C, P = a.P;
  if (rows) {
    const int64_t R = a.N * P;
    for (int64_t t = b; t < e; ++t) {
      T* s1 = a.acc + t * 2 * C;
      T* s2 = s1 + C;
      for (int64_t r = t * a.rows_per_part; r < std::min(R, (t + 1) * a.rows_per_part); ++r)
        row_sums<A, T>(a.g + r * C, a.x + r * C, a.scale, a.shift, a.mean, s1, s2, C);
    }
    return;
  }
  for (int64_t c = b; c < e; ++c) channel_sums<A, T>(a, c, sum_dz[c], sum_dzx[c]);
}

template <Act A, typename T>
OFA_INLINE void bwd_range(const BnArgs<T>& a, bool rows, int64_t b, int64_t e) {
  const int64_t C = a.C;
  if (rows) {
    for (int64_t r = b; r < e; ++r)
      row_grad<A, T>(a.g + r * C, a.x + r * C, a.scale, a.shift, a.mean, a.k1, a.k2, a.k3,
                     a.out + r * C, C);
    return;
  }
  for (int64_t q = b; q < e; ++q) {
    const int64_t c = q % C;
    plane_grad<A, T>(a, q, a.k1[c], a.k2[c], a.k3[c]);
  }
}

#define OFA_BN_ACT_SWITCH(act, CALL)                                  \
  switch (act) {                                                      \
    case Act::kRelu: { constexpr Act A = Act::kRelu; CALL; } break;   \
    case Act::kRelu6: { constexpr Act A = Act::kRelu6; CALL; } break; \
    case Act::kHswish: { constexpr Act A = Act::kHswish; CALL; } break; \
    default: { constexpr Act A = Act::kNone; CALL; } break;           \
  }

#define OFA_BN_ENTRY_POINTS(T)                                                                  \
  OFA_CPU_MULTIVERSION void stats_nchw_mv(const BnArgs<T>& a, T* mean, T* var, int64_t b,      \
                                          int64_t e) {                                         \
    stats_nchw_range<T>(a, mean, var, b, e);                                                    \
  }                                                                                             \
  OFA_CPU_MULTIVERSION void stats_rows_mv(const BnArgs<T>& a, int64_t chunk, int64_t b, int64_t e) { \
    stats_rows_range<T>(a, chunk, b, e);                                                        \
  }                                                                                             \
  OFA_CPU_MULTIVERSION void fwd_mv(const BnArgs<T>& a, Act act, bool rows, int64_t b, int64_t e) { \
    OFA_BN_ACT_SWITCH(act, (fwd_range<A, T>(a, rows, b, e)))                                    \
  }                                                                                             \
  OFA_CPU_MULTIVERSION void sums_mv(const BnArgs<T>& a, Act act, bool rows, T* s1, T* s2,      \
                                    int64_t b, int64_t e) {                                    \
    OFA_BN_ACT_SWITCH(act, (sums_range<A, T>(a, rows, s1, s2, b, e)))                           \
  }                                                                                             \
  OFA_CPU_MULTIVERSION void bwd_mv(const BnArgs<T>& a, Act act, bool rows, int64_t b, int64_t e) { \
    OFA_BN_ACT_SWITCH(act, (bwd_range<A, T>(a, rows, b, e)))                                    \
  }                                                                                             \
  OFA_CPU_MULTIVERSION void fused_fwd_mv(const BnArgs<T>& a, Act act, const T* w, const T* b_, \
                                         T eps, T* mean, T* invstd, int64_t b, int64_t e) {    \
    OFA_BN_ACT_SWITCH(act, (fused_fwd_range<A, T>(a, w, b_, eps, mean, invstd, b, e)))          \
  }                                                                                             \
  OFA_CPU_MULTIVERSION void fused_bwd_mv(const BnArgs<T>& a, Act act, const T* w_invstd,       \
                                         const T* invstd, T m, T* s1, T* s2, int64_t b,        \
                                         int64_t e) {                                          \
    OFA_BN_ACT_SWITCH(act, (fused_bwd_range<A, T>(a, w_invstd, invstd, m, s1, s2, b, e)))       \
  }

OFA_BN_ENTRY_POINTS(float)
OFA_BN_ENTRY_POINTS(double)

// NCHW training forward (fused_fwd_range) and backward (fused_bwd_range) one channel at
// a time when a channel's x and grad_output (2 * N * P values) stay in the L2 cache
// between its passes, and its
// planes are long enough for the hardware prefetcher (short planes far apart: the
// two-pass path, whose second pass streams the tensor in order, was 1.9x faster at
// 12 x 12; the fused one 1.2x faster at 24 x 24 and 1.3x at 32 x 32, batch 64 / 16).
constexpr int64_t kFusedChannelValues = int64_t{1} << 16;
constexpr int64_t kFusedMinPlane = 256;

// The pointers of an op call (undefined tensors -> nullptr) and its sizes.
template <typename T>
BnArgs<T> args_of(const at::Tensor& x, const at::Tensor& g, const at::Tensor& out,
                  const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& mean) {
  const auto in = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<T>() : nullptr; };
  BnArgs<T> a{};
  a.x = in(x), a.g = in(g), a.scale = in(scale), a.shift = in(shift), a.mean = in(mean);
  a.out = out.defined() ? out.data_ptr<T>() : nullptr;
  a.N = x.size(0), a.C = x.size(1), a.P = x.size(2) * x.size(3);
  return a;
}

// Bytes of channels_last rows the statistics keep in the L2 cache between their passes.
constexpr int64_t kStatsChunkBytes = 64 * 1024;

// parts for the row reductions: one per thread, each of at least 64 rows, or of 4096
// values where the rows are longer than 64
int64_t parts_of(int64_t rows, int64_t cols) {
  const int64_t min_rows = std::max<int64_t>(1, std::min<int64_t>(64, 4096 / std::max<int64_t>(cols, 1)));
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / min_rows));
}

template <typename T>
void stats(BnArgs<T> a, bool rows, T* mean, T* var) {
  if (!rows) {
    at::parallel_for(0, a.C, 1, [&](int64_t b, int64_t e) { stats_nchw_mv(a, mean, var, b, e); });
    return;
  }
  const int64_t R = a.N * a.P, parts = parts_of(R, a.C);
  a.rows_per_part = (R + parts - 1) / parts;
  std::vector<T> part(parts * 4 * a.C, T(0));
  a.acc = part.data();
  const int64_t chunk = std::max<int64_t>(1, kStatsChunkBytes / (a.C * int64_t(sizeof(T))));
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) { stats_rows_mv(a, chunk, b, e); });
  std::fill(mean, mean + a.C, T(0));
  std::fill(var, var + a.C, T(0));  // the centred sum of squares until the end
  for (int64_t t = 0; t < parts; ++t) {
    const int64_t r0 = t * a.rows_per_part, nt = std::min(R, r0 + a.rows_per_part) - r0;
    if (nt > 0)
      merge_moments<T>(mean, var, part.data() + t * 4 * a.C, part.data() + t * 4 * a.C + a.C,
                       T(r0), T(nt), a.C);
  }
  for (int64_t c = 0; c < a.C; ++c) var[c] /= T(R);
}

template <typename T>
void apply_fwd(const BnArgs<T>& a, Act act, bool rows) {
  const int64_t count = rows ? a.N * a.P : a.N * a.C;
  const int64_t per = rows ? a.C : a.P;
  at::parallel_for(0, count, std::max<int64_t>(1, 8192 / std::max<int64_t>(per, 1)),
                   [&](int64_t b, int64_t e) { fwd_mv(a, act, rows, b, e); });
}

template <typename T>
void sums_bwd(BnArgs<T> a, Act act, bool rows, T* sum_dz, T* sum_dzx) {
  if (!rows) {
    at::parallel_for(0, a.C, 1, [&](int64_t b, int64_t e) {
      sums_mv(a, act, rows, sum_dz, sum_dzx, b, e);
    });
    return;
  }
  const int64_t R = a.N * a.P, parts = parts_of(R, a.C);
  a.rows_per_part = (R + parts - 1) / parts;
  std::vector<T> part(parts * 2 * a.C, T(0));
  a.acc = part.data();
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    sums_mv(a, act, rows, nullptr, nullptr, b, e);
  });
  for (int64_t c = 0; c < a.C; ++c) {
    T s1 = 0, s2 = 0;
    for (int64_t t = 0; t < parts; ++t) {
      s1 += part[t * 2 * a.C + c];
      s2 += part[t * 2 * a.C + a.C + c];
    }
    sum_dz[c] = s1;
    sum_dzx[c] = s2;
  }
}

template <typename T>
void apply_bwd(const BnArgs<T>& a, Act act, bool rows) {
  const int64_t count = rows ? a.N * a.P : a.N * a.C;
  const int64_t per = rows ? a.C : a.P;
  at::parallel_for(0, count, std::max<int64_t>(1, 8192 / std::max<int64_t>(per, 1)),
                   [&](int64_t b, int64_t e) { bwd_mv(a, act, rows, b, e); });
}

void check_vec(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* name,
               const char* op) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), op, ": ", name, " has shape ", t->sizes(),
              "; expected [", x.size(1), "] (the input's channels)");
  TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op, ": ", name,
              " (", t->scalar_type(), " on ", t->device(), ") must match the input (",
              x.scalar_type(), " on ", x.device(), ")");
}

// per-channel scale = weight * invstd, shift = bias - mean * scale
std::pair<at::Tensor, at::Tensor> affine_of(const at::Tensor& mean, const at::Tensor& invstd,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& bias) {
  at::Tensor scale = weight.has_value() ? invstd * *weight : invstd.clone();
  at::Tensor shift = -mean * scale;
  if (bias.has_value()) shift = shift + *bias;
  return {scale.contiguous(), shift.contiguous()};
}

// Small NCHW planes (under kWidePlane pixels) leave the per-channel loops too short to
// vectorize: such a tensor is walked as N rows of C * P columns ("wide rows"; column
// c * P + p is channel c), with the per-channel vectors repeated P times (per_column),
// and the per-column sums folded back to channels.
constexpr int64_t kWidePlane = 64;

at::Tensor per_column(const at::Tensor& v, int64_t P) {  // [C] -> [C * P]
  return v.unsqueeze(1).expand({v.size(0), P}).contiguous().view({-1});
}

template <typename T>
void as_wide_rows(BnArgs<T>& a) {
  a.C *= a.P;
  a.P = 1;
}

// channel statistics from the wide rows' column ones: the mean of the column means, and
// (all columns have N values) the mean of the column variances plus the variance of the
// column means
template <typename T>
void stats_wide(BnArgs<T> a, int64_t C, int64_t P, T* mean, T* var) {
  std::vector<T> col_mean(C * P), col_var(C * P);
  as_wide_rows(a);
  stats<T>(a, true, col_mean.data(), col_var.data());
  for (int64_t c = 0; c < C; ++c) {
    const T* cm = col_mean.data() + c * P;
    const T* cv = col_var.data() + c * P;
    T m = 0;
    for (int64_t p = 0; p < P; ++p) m += cm[p];
    m /= T(P);
    T v = 0;
    for (int64_t p = 0; p < P; ++p) v += cv[p] + (cm[p] - m) * (cm[p] - m);
    mean[c] = m;
    var[c] = v / T(P);
  }
}

// per-channel sums of the backward from the wide rows' per-column ones
template <typename T>
void sums_wide(BnArgs<T> a, Act act, int64_t C, int64_t P, T* sum_dz, T* sum_dzx) {
  std::vector<T> s1(C * P), s2(C * P);
  as_wide_rows(a);
  sums_bwd<T>(a, act, true, s1.data(), s2.data());
  for (int64_t c = 0; c < C; ++c) {
    T t1 = 0, t2 = 0;
    for (int64_t p = 0; p < P; ++p) {
      t1 += s1[c * P + p];
      t2 += s2[c * P + p];
    }
    sum_dz[c] = t1;
    sum_dzx[c] = t2;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double eps,
    c10::string_view activation) {
  const char* op = "ofa_fast.batch_norm_act";
  const Act a = parse_act(activation, op);
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got shape ", input.sizes());
  TORCH_CHECK(input.device().is_cpu(), op, ": this kernel takes CPU tensors, got ", input.device());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": dtype ", input.scalar_type(), " is not allowed; use float32 or float64");
  for (auto [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"},
                         std::pair{&running_mean, "running_mean"}, std::pair{&running_var, "running_var"}})
    check_vec(*t, input, name, op);
  TORCH_CHECK(training || (running_mean.has_value() && running_var.has_value()), op,
              ": eval mode needs running_mean and running_var");
  const int64_t N = input.size(0), C = input.size(1), P = input.size(2) * input.size(3);
  TORCH_CHECK(!training || N * P > 1, op, ": training needs more than one value per channel, got "
              "input of shape ", input.sizes());
  const at::MemoryFormat fmt = kept_memory_format(input);
  const bool rows = fmt == at::MemoryFormat::ChannelsLast;
  const bool wide = !rows && P < kWidePlane;
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor mean, invstd;
  if (training && !rows && P >= kFusedMinPlane && N * P <= kFusedChannelValues) {
    // statistics and output one channel at a time, while its planes are in cache
    mean = at::empty({C}, x.options());
    invstd = at::empty({C}, x.options());
    const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
    const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_fused", [&] {
      const auto args = args_of<scalar_t>(x, {}, y, {}, {}, {});
      const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, C, 1, [&](int64_t lo, int64_t hi) {
        fused_fwd_mv(args, a, wp, bp, scalar_t(eps), mean.data_ptr<scalar_t>(),
                     invstd.data_ptr<scalar_t>(), lo, hi);
      });
    });
    return {y, mean, invstd};
  }
  if (training) {
    mean = at::empty({C}, x.options());
    at::Tensor var = at::empty({C}, x.options());
    if (N * P > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_stats", [&] {
        const auto a = args_of<scalar_t>(x, {}, {}, {}, {}, {});
        if (wide)
          stats_wide<scalar_t>(a, C, P, mean.data_ptr<scalar_t>(), var.data_ptr<scalar_t>());
        else
          stats<scalar_t>(a, rows, mean.data_ptr<scalar_t>(), var.data_ptr<scalar_t>());
      });
    }
    invstd = (var + eps).rsqrt();
  } else {
    mean = running_mean->clone();  // an output never aliases an input
    invstd = (*running_var + eps).rsqrt();
  }
  if (y.numel() == 0) return {y, mean, invstd};
  auto [scale, shift] = affine_of(mean, invstd, weight, bias);
  if (wide) {
    scale = per_column(scale, P);
    shift = per_column(shift, P);
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act", [&] {
    auto args = args_of<scalar_t>(x, {}, y, scale, shift, {});
    if (wide) as_wide_rows(args);
    apply_fwd<scalar_t>(args, a, rows || wide);
  });
  return {y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
    bool training, c10::string_view activation, std::array<bool, 3> output_mask) {
  const char* op = "ofa_fast.batch_norm_act_backward";
  const Act a = parse_act(activation, op);
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(),
              op, ": grad_output (", grad_output.scalar_type(), ", ", grad_output.sizes(),
              ") must match the input (", input.scalar_type(), ", ", input.sizes(), ")");
  check_vec(weight, input, "weight", op);
  check_vec(bias, input, "bias", op);
  check_vec(mean, input, "mean", op);
  check_vec(invstd, input, "invstd", op);
  const int64_t N = input.size(0), C = input.size(1), P = input.size(2) * input.size(3);
  const at::MemoryFormat fmt = kept_memory_format(input);
  const bool rows = fmt == at::MemoryFormat::ChannelsLast;
  const bool wide = !rows && P < kWidePlane;
  const auto cols = [&](const at::Tensor& v) { return wide ? per_column(v, P) : v; };
  const at::Tensor x = input.contiguous(fmt), g = grad_output.contiguous(fmt);
  auto [scale_c, shift_c] = affine_of(mean, invstd, weight, bias);
  const at::Tensor scale = cols(scale_c), shift = cols(shift_c);
  const at::Tensor m = cols(mean.contiguous()), is = invstd.contiguous();
  at::Tensor sum_dz = at::zeros({C}, x.options()), sum_dz_xhat = at::zeros({C}, x.options());
  if (!rows && P >= kFusedMinPlane && N * P <= kFusedChannelValues) {
    // one pass per channel (both reductions and grad_x) while its planes are in cache
    at::Tensor gx = output_mask[0] ? at::empty(x.sizes(), x.options().memory_format(fmt))
                                   : input.new_empty({0});
    const at::Tensor w_invstd = weight.has_value() ? (*weight * is).contiguous() : is;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_backward_fused", [&] {
      const auto args = args_of<scalar_t>(x, g, output_mask[0] ? gx : at::Tensor(), scale, shift, m);
      const scalar_t values = training ? scalar_t(N * P) : scalar_t(0);
      at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
        fused_bwd_mv(args, a, w_invstd.const_data_ptr<scalar_t>(), is.const_data_ptr<scalar_t>(),
                     values, sum_dz.data_ptr<scalar_t>(), sum_dz_xhat.data_ptr<scalar_t>(), b, e);
      });
    });
    return {gx, output_mask[1] ? sum_dz_xhat : input.new_empty({0}),
            output_mask[2] ? sum_dz : input.new_empty({0})};
  }
  if (N * P > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_sums", [&] {
      const auto args = args_of<scalar_t>(x, g, {}, scale, shift, m);
      if (wide)
        sums_wide<scalar_t>(args, a, C, P, sum_dz.data_ptr<scalar_t>(),
                            sum_dz_xhat.data_ptr<scalar_t>());
      else
        sums_bwd<scalar_t>(args, a, rows, sum_dz.data_ptr<scalar_t>(),
                           sum_dz_xhat.data_ptr<scalar_t>());
    });
    sum_dz_xhat.mul_(is);  // sum of dz * x_hat
  }
  at::Tensor gx = input.new_empty({0});
  if (output_mask[0]) {
    gx = at::empty(x.sizes(), x.options().memory_format(fmt));
    at::Tensor w_invstd = weight.has_value() ? (*weight * is).contiguous() : is;
    at::Tensor k2, k3;
    if (training) {  // the batch statistics depend on x too
      const double M = double(N * P);
      k2 = (w_invstd * is * sum_dz_xhat / M).contiguous();     // times (x - mean)
      k3 = (w_invstd * sum_dz / M).contiguous();
    } else {
      k2 = at::zeros({C}, x.options());
      k3 = at::zeros({C}, x.options());
    }
    w_invstd = cols(w_invstd), k2 = cols(k2), k3 = cols(k3);
    if (gx.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_grad_input", [&] {
        auto args = args_of<scalar_t>(x, g, gx, scale, shift, m);
        if (wide) as_wide_rows(args);
        args.k1 = w_invstd.const_data_ptr<scalar_t>();
        args.k2 = k2.const_data_ptr<scalar_t>();
        args.k3 = k3.const_data_ptr<scalar_t>();
        apply_bwd<scalar_t>(args, a, rows || wide);
      });
    }
  }
  at::Tensor gw = output_mask[1] ? sum_dz_xhat : input.new_empty({0});
  at::Tensor gb = output_mask[2] ? sum_dz : input.new_empty({0});
  return {gx, gw, gb};
}

void register_bn_schemas(torch::Library& m) {
  m.def("batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
        "Tensor? running_var, bool training, float eps, str activation) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_act_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
        "Tensor mean, Tensor invstd, bool training, str activation, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
}

}  // namespace ofa_fast

TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("batch_norm_act", &ofa_fast::batch_norm_act);
  m.impl("batch_norm_act_backward", &ofa_fast::batch_norm_act_backward);
}

// CPU implementation of the elastic depthwise convolution: tensors, threads and
// instruction-set dispatch around the kernels of dwconv_cpu_kernel.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dwconv.h"
#include "dwconv_cpu_kernel.h"

namespace ofa_fast {
namespace {

namespace dw = ofa_fast::cpu::dw;
using cpu::kLanes;

// ---- instruction-set entry points --------------------------------------------
// Each is compiled for AVX-512, AVX2+FMA and the baseline (OFA_CPU_MULTIVERSION) and
// picked at load time; the overloads let the templated glue call them by dtype.

#define OFA_DW_ENTRY_POINTS(T, SUFFIX)                                                         \
  OFA_CPU_MULTIVERSION void fwd_##SUFFIX(const dw::Problem& P, const T* x, const dw::Layout& Lx, \
                                         const T* wp, T* y, const dw::Layout& Ly, int64_t grp, \
                                         int64_t b, int64_t e) {                               \
    dw::fwd<T>(P, x, Lx, wp, y, Ly, grp, b, e);                                                \
  }                                                                                            \
  OFA_CPU_MULTIVERSION void bwd_##SUFFIX(const dw::Problem& P, const T* go,                    \
                                         const dw::Layout& Lg, const T* x, const dw::Layout& Lx, \
                                         const T* wp, const T* wpf, T* gx, T* acc, bool ngx,     \
                                         bool ngw, int64_t grp, int64_t b, int64_t e) {          \
    dw::bwd<T>(P, go, Lg, x, Lx, wp, wpf, gx, acc, ngx, ngw, grp, b, e);                         \
  }                                                                                            \
  void fwd(const dw::Problem& P, const T* x, const dw::Layout& Lx, const T* wp, T* y,          \
           const dw::Layout& Ly, int64_t grp, int64_t b, int64_t e) {                          \
    fwd_##SUFFIX(P, x, Lx, wp, y, Ly, grp, b, e);                                              \
  }                                                                                            \
  void bwd(const dw::Problem& P, const T* go, const dw::Layout& Lg, const T* x,                \
           const dw::Layout& Lx, const T* wp, const T* wpf, T* gx, T* acc, bool ngx, bool ngw, \
           int64_t grp, int64_t b, int64_t e) {                                                \
    bwd_##SUFFIX(P, go, Lg, x, Lx, wp, wpf, gx, acc, ngx, ngw, grp, b, e);                     \
  }

OFA_DW_ENTRY_POINTS(float, f32)
OFA_DW_ENTRY_POINTS(double, f64)
#undef OFA_DW_ENTRY_POINTS

// The forward and backward read in place (dw::direct_fwd, dw::direct_bwd): float32 on
// AVX-512.
#if OFA_CPU_HAS_AVX512_TARGET
OFA_CPU_AVX512 void fwd_direct_f32(const dw::Problem& P, const float* x, const dw::Layout& Lx,
                                   const float* wp, float* y, const dw::Layout& Ly, int64_t grp,
                                   int64_t b, int64_t e) {
  dw::fwd_direct<float>(P, x, Lx, wp, y, Ly, grp, b, e);
}
OFA_CPU_AVX512 void bwd_direct_f32(const dw::Problem& P, const float* go, const dw::Layout& Lg,
                                   const float* x, const dw::Layout& Lx, const float* wp,
                                   const float* wpf, float* gx, float* acc, bool ngx, bool ngw,
                                   int64_t grp, int64_t b, int64_t e) {
  dw::bwd_direct<float>(P, go, Lg, x, Lx, wp, wpf, gx, acc, ngx, ngw, grp, b, e);
}
// The tiles' backward with its AVX-512-only filter gradient (dw::BwdTiles, kPin).
OFA_CPU_AVX512 void bwd_tiles_f32(const dw::Problem& P, const float* go, const dw::Layout& Lg,
                                  const float* x, const dw::Layout& Lx, const float* wp,
                                  const float* wpf, float* gx, float* acc, bool ngx, bool ngw,
                                  int64_t grp, int64_t b, int64_t e) {
  dw::bwd<float, true>(P, go, Lg, x, Lx, wp, wpf, gx, acc, ngx, ngw, grp, b, e);
}
#endif

// Whether the forward of this problem runs fwd_direct_f32.
template <typename T>
bool use_direct(const dw::Problem& P, const dw::Layout& Lx, const dw::Layout& Ly) {
  return OFA_CPU_HAS_AVX512_TARGET && std::is_same_v<T, float> && cpu::has_avx512() &&
         dw::direct_fwd(P, Lx, Ly);
}

// Whether the backward of this problem runs bwd_direct_f32.
template <typename T>
bool use_direct_bwd(const dw::Problem& P, const dw::Layout& Lx, const dw::Layout& Lg) {
  return OFA_CPU_HAS_AVX512_TARGET && std::is_same_v<T, float> && cpu::has_avx512() &&
         dw::direct_bwd(P, Lx, Lg);
}

// The forward of units [b, e): in place when `direct` (use_direct), else through tiles.
void fwd_units(bool direct, const dw::Problem& P, const float* x, const dw::Layout& Lx,
               const float* wp, float* y, const dw::Layout& Ly, int64_t grp, int64_t b, int64_t e) {
#if OFA_CPU_HAS_AVX512_TARGET
  if (direct) return fwd_direct_f32(P, x, Lx, wp, y, Ly, grp, b, e);
#endif
  fwd(P, x, Lx, wp, y, Ly, grp, b, e);
}
void fwd_units(bool /*direct: never for float64*/, const dw::Problem& P, const double* x,
               const dw::Layout& Lx, const double* wp, double* y, const dw::Layout& Ly, int64_t grp,
               int64_t b, int64_t e) {
  fwd(P, x, Lx, wp, y, Ly, grp, b, e);
}

// The backward of units [b, e): in place when `direct` (use_direct_bwd), else through
// tiles.
void bwd_units(bool direct, const dw::Problem& P, const float* go, const dw::Layout& Lg,
               const float* x, const dw::Layout& Lx, const float* wp, const float* wpf, float* gx,
               float* acc, bool ngx, bool ngw, int64_t grp, int64_t b, int64_t e) {
#if OFA_CPU_HAS_AVX512_TARGET
  if (direct) return bwd_direct_f32(P, go, Lg, x, Lx, wp, wpf, gx, acc, ngx, ngw, grp, b, e);
  if (cpu::has_avx512()) return bwd_tiles_f32(P, go, Lg, x, Lx, wp, wpf, gx, acc, ngx, ngw, grp, b, e);
#endif
  bwd(P, go, Lg, x, Lx, wp, wpf, gx, acc, ngx, ngw, grp, b, e);
}
void bwd_units(bool /*direct: never for float64*/, const dw::Problem& P, const double* go,
               const dw::Layout& Lg, const double* x, const dw::Layout& Lx, const double* wp,
               const double* wpf, double* gx, double* acc, bool ngx, bool ngw, int64_t grp,
               int64_t b, int64_t e) {
  bwd(P, go, Lg, x, Lx, wp, wpf, gx, acc, ngx, ngw, grp, b, e);
}

// ---- glue -------------------------------------------------------------------

dw::Problem problem_of(const DwGeometry& g) {
  return dw::Problem{g.N, g.C, g.H, g.W, g.OH, g.OW, g.k, g.s, g.d, g.p};
}

at::MemoryFormat format_of(const DwGeometry& g) {
  return g.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The active filter as a strided view into the max weight (no copy).
template <typename T>
dw::Filter<T> active_filter(const at::Tensor& weight, const DwGeometry& g) {
  const T* base = weight.const_data_ptr<T>() + g.crop * weight.stride(2) + g.crop * weight.stride(3);
  return dw::Filter<T>{base, weight.stride(0), weight.stride(2), weight.stride(3)};
}

// The active filter as the kernels load it: [channel block][k * k][lanes], zero past C.
// C * k * k values, read once through the weight's strides.
// flipped: taps reversed in both dims (the gradient of the input correlates with it).
template <typename T>
cpu::AlignedVector<T> pack_filter(const at::Tensor& weight, const DwGeometry& g, bool flipped = false) {
  constexpr int V = kLanes<T>;
  const dw::Filter<T> f = active_filter<T>(weight, g);
  const int64_t nb = dw::channel_blocks<T>(g.C), kk = g.k * g.k, last = g.k - 1;
  cpu::AlignedVector<T> wp(static_cast<size_t>(nb * kk * V), T(0));
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.k; ++i)
      for (int64_t j = 0; j < g.k; ++j)
        wp[((c / V) * kk + i * g.k + j) * V + c % V] =
            flipped ? f.at(c, last - i, last - j) : f.at(c, i, j);
  return wp;
}

// Element strides of a [n, c, h, w] tensor contiguous in the kernels' memory format.
dw::Layout layout_of(int64_t C, int64_t H, int64_t W, bool channels_last) {
  return channels_last ? dw::Layout{H * W * C, 1, W * C, C} : dw::Layout{C * H * W, H * W, W, 1};
}

// Channel blocks per work unit. NCHW: one (its 16 planes are one contiguous stretch).
// channels_last: a whole image's when the batch alone gives every thread a few units
// (its tiles then stage in one sequential pass over the pixels), fewer for small
// batches so the threads still share the work.
struct Units {
  int64_t group, count;
};
Units units_of(const DwGeometry& g, int64_t nb) {
  if (!g.channels_last) return Units{1, g.N * nb};
  const int64_t want = 2 * at::get_num_threads();
  const int64_t per_image = std::max<int64_t>(1, std::min<int64_t>(nb, (want + g.N - 1) / std::max<int64_t>(1, g.N)));
  const int64_t group = (nb + per_image - 1) / per_image;
  return Units{group, g.N * ((nb + group - 1) / group)};
}

// Work items of roughly this many multiply-adds keep thread start-up negligible.
constexpr int64_t kGrainMacs = 1 << 15;

int64_t grain(int64_t macs_per_item) {
  return std::max<int64_t>(1, kGrainMacs / std::max<int64_t>(1, macs_per_item));
}

void check_cpu_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": dtype ", t.scalar_type(), " is not supported on the CPU; use float32 or float64");
}

}  // namespace

at::Tensor dwconv2d_cpu(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                        int64_t stride, int64_t dilation, int64_t padding) {
  const char* op = "ofa_fast.dwconv2d";
  const DwGeometry g = dwconv_geometry(input, weight, kernel_size, stride, dilation, padding, op);
  check_cpu_dtype(input, op);
  const at::Tensor x = input.contiguous(format_of(g));
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, input.options().memory_format(format_of(g)));
  if (y.numel() == 0) return y;
  const dw::Problem P = problem_of(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ofa_fast_dwconv2d_cpu", [&] {
    const cpu::AlignedVector<scalar_t> wp = pack_filter<scalar_t>(weight, g);
    const dw::Layout Lx = layout_of(g.C, g.H, g.W, g.channels_last);
    const dw::Layout Ly = layout_of(g.C, g.OH, g.OW, g.channels_last);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const Units u = units_of(g, dw::channel_blocks<scalar_t>(g.C));
    const bool direct = use_direct<scalar_t>(P, Lx, Ly);
    at::parallel_for(0, u.count, grain(u.group * g.OH * g.OW * kLanes<scalar_t> * g.k * g.k),
                     [&](int64_t b, int64_t e) {
                       fwd_units(direct, P, xp, Lx, wp.data(), yp, Ly, u.group, b, e);
                     });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> dwconv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    int64_t kernel_size, int64_t stride, int64_t dilation, int64_t padding,
    std::array<bool, 2> output_mask) {
  const char* op = "ofa_fast.dwconv2d_backward";
  const DwGeometry g = dwconv_geometry(input, weight, kernel_size, stride, dilation, padding, op);
  dwconv_check_grad_output(grad_output, input, g, op);
  check_cpu_dtype(input, op);
  const bool need_gx = output_mask[0], need_gw = output_mask[1];
  // masked-off gradients come back as empty tensors
  at::Tensor gx = need_gx ? at::empty({g.N, g.C, g.H, g.W}, input.options().memory_format(format_of(g)))
                          : at::empty({0}, input.options());
  // full-size gradient of the max weight: zero outside the active crop of weight[:C]
  at::Tensor gw = need_gw ? at::zeros(weight.sizes(), weight.options()) : at::empty({0}, weight.options());
  if ((!need_gx && !need_gw) || g.N * g.C * g.H * g.W == 0) return {gx, gw};
  const at::Tensor go = grad_output.contiguous(format_of(g));
  const at::Tensor x = need_gw ? input.contiguous(format_of(g)) : input;
  const dw::Problem P = problem_of(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ofa_fast_dwconv2d_backward_cpu", [&] {
    constexpr int V = kLanes<scalar_t>;
    const cpu::AlignedVector<scalar_t> wp = pack_filter<scalar_t>(weight, g);
    const cpu::AlignedVector<scalar_t> wpf = pack_filter<scalar_t>(weight, g, /*flipped=*/true);
    const dw::Layout Lg = layout_of(g.C, g.OH, g.OW, g.channels_last);
    const dw::Layout Lx = layout_of(g.C, g.H, g.W, g.channels_last);
    const bool direct = use_direct_bwd<scalar_t>(P, Lx, Lg);
    const bool spread = direct && dw::direct_bwd_spreads_lanes(Lx);
    const int64_t nb = dw::channel_blocks<scalar_t>(g.C), kk = g.k * g.k;
    const int64_t per = (spread ? g.C : nb) * kk * V;
    // Units are split between threads, each summing the filter gradient into its own
    // accumulator, [blocks][k * k][lanes] (or [C][k * k][lanes] when `spread`); they are
    // added up at the end.
    const int nthreads = at::get_num_threads();
    cpu::AlignedVector<scalar_t> acc(static_cast<size_t>(need_gw ? per * nthreads : 0), scalar_t(0));
    std::vector<char> used(static_cast<size_t>(nthreads), 0);
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    const scalar_t* xp = need_gw ? x.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = need_gx ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    const Units u = units_of(g, nb);
    const int64_t macs = u.group * g.OH * g.OW * V * kk * (int64_t(need_gx) + int64_t(need_gw));
    at::parallel_for(0, u.count, grain(macs), [&](int64_t b, int64_t e) {
      const int t = at::get_thread_num();
      used[t] = 1;
      bwd_units(direct, P, gop, Lg, xp, Lx, wp.data(), wpf.data(), gxp,
                need_gw ? acc.data() + t * per : nullptr, need_gx, need_gw, u.group, b, e);
    });
    if (need_gw) {
      scalar_t* base = gw.mutable_data_ptr<scalar_t>() + g.crop * gw.stride(2) + g.crop * gw.stride(3);
      const dw::FilterGrad<scalar_t> out{base, gw.stride(0), gw.stride(2), gw.stride(3)};
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t i = 0; i < g.k; ++i)
          for (int64_t j = 0; j < g.k; ++j) {
            scalar_t sum = 0;
            for (int t = 0; t < nthreads; ++t) {
              if (!used[t]) continue;
              if (spread)
                for (int l = 0; l < V; ++l) sum += acc[t * per + (c * kk + i * g.k + j) * V + l];
              else
                sum += acc[t * per + ((c / V) * kk + i * g.k + j) * V + c % V];
            }
            out.at(c, i, j) = sum;
          }
    }
  });
  return {gx, gw};
}

at::Tensor dwconv2d_backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight, int64_t kernel_size,
                                       int64_t stride, int64_t dilation, int64_t padding) {
  return std::get<0>(dwconv2d_backward_cpu(grad_output, input, weight, kernel_size, stride,
                                           dilation, padding, {true, false}));
}

at::Tensor dwconv2d_backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, int64_t kernel_size,
                                        int64_t stride, int64_t dilation, int64_t padding) {
  return std::get<1>(dwconv2d_backward_cpu(grad_output, input, weight, kernel_size, stride,
                                           dilation, padding, {false, true}));
}

TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("dwconv2d", &dwconv2d_cpu);
  m.impl("dwconv2d_backward_input", &dwconv2d_backward_input_cpu);
  m.impl("dwconv2d_backward_weight", &dwconv2d_backward_weight_cpu);
  m.impl("dwconv2d_backward", &dwconv2d_backward_cpu);
}

}  // namespace ofa_fast

// CPU implementation of the elastic depthwise convolution: tensors, threads and
// instruction-set dispatch around the kernels of dwconv_cpu_kernel.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "dwconv.h"
#include "dwconv_cpu_kernel.h"

namespace ofa_fast {
namespace {

namespace dw = ofa_fast::cpu::dw;
using cpu::kLanes;

// ---- instruction-set entry points --------------------------------------------
// Each is compiled for AVX-512, AVX2+FMA and the baseline (OFA_CPU_MULTIVERSION);
// the vector width of the NCHW kernels follows the output width, so narrow planes
// (8x8 and below) do not waste most of every vector.

template <typename T>
OFA_INLINE void fwd_nchw_any(const dw::Problem& P, const T* x, dw::Filter<T> f, T* y,
                             int64_t b, int64_t e) {
  constexpr int V = kLanes<T>;
  if (P.OW <= V / 4) dw::fwd_nchw<T, V / 4>(P, x, f, y, b, e);
  else if (P.OW <= V / 2) dw::fwd_nchw<T, V / 2>(P, x, f, y, b, e);
  else dw::fwd_nchw<T, V>(P, x, f, y, b, e);
}
template <typename T>
OFA_INLINE void bwd_input_nchw_any(const dw::Problem& P, const T* go, dw::Filter<T> f, T* gx,
                                   int64_t b, int64_t e) {
  constexpr int V = kLanes<T>;
  const int64_t nu = (P.W + P.s - 1) / P.s;
  if (nu <= V / 4) dw::bwd_input_nchw<T, V / 4>(P, go, f, gx, b, e);
  else if (nu <= V / 2) dw::bwd_input_nchw<T, V / 2>(P, go, f, gx, b, e);
  else dw::bwd_input_nchw<T, V>(P, go, f, gx, b, e);
}
template <typename T>
OFA_INLINE void bwd_weight_nchw_any(const dw::Problem& P, const T* go, const T* x,
                                    dw::FilterGrad<T> gw, int64_t b, int64_t e) {
  constexpr int V = kLanes<T>;
  if (P.OW <= V / 4) dw::bwd_weight_nchw<T, V / 4>(P, go, x, gw, b, e);
  else if (P.OW <= V / 2) dw::bwd_weight_nchw<T, V / 2>(P, go, x, gw, b, e);
  else dw::bwd_weight_nchw<T, V>(P, go, x, gw, b, e);
}

#define OFA_DW_ENTRY_POINTS(T, SUFFIX)                                                         \
  OFA_CPU_MULTIVERSION void fwd_nchw_##SUFFIX(const dw::Problem& P, const T* x,                \
                                              dw::Filter<T> f, T* y, int64_t b, int64_t e) {   \
    fwd_nchw_any<T>(P, x, f, y, b, e);                                                         \
  }                                                                                            \
  OFA_CPU_MULTIVERSION void bwd_input_nchw_##SUFFIX(const dw::Problem& P, const T* go,         \
                                                    dw::Filter<T> f, T* gx, int64_t b,         \
                                                    int64_t e) {                               \
    bwd_input_nchw_any<T>(P, go, f, gx, b, e);                                                 \
  }                                                                                            \
  OFA_CPU_MULTIVERSION void bwd_weight_nchw_##SUFFIX(const dw::Problem& P, const T* go,        \
                                                     const T* x, dw::FilterGrad<T> gw,         \
                                                     int64_t b, int64_t e) {                   \
    bwd_weight_nchw_any<T>(P, go, x, gw, b, e);                                                \
  }                                                                                            \
  OFA_CPU_MULTIVERSION void fwd_nhwc_##SUFFIX(const dw::Problem& P, const T* x, const T* wp,   \
                                              int64_t Cp, T* y, int64_t b, int64_t e) {        \
    dw::fwd_nhwc<T>(P, x, wp, Cp, y, b, e);                                                    \
  }                                                                                            \
  OFA_CPU_MULTIVERSION void bwd_input_nhwc_##SUFFIX(const dw::Problem& P, const T* go,         \
                                                    const T* wp, int64_t Cp, T* gx, int64_t b, \
                                                    int64_t e) {                               \
    dw::bwd_input_nhwc<T>(P, go, wp, Cp, gx, b, e);                                            \
  }                                                                                            \
  OFA_CPU_MULTIVERSION void bwd_weight_nhwc_##SUFFIX(const dw::Problem& P, const T* go,        \
                                                     const T* x, T* acc, int64_t Cp,           \
                                                     int64_t b, int64_t e) {                   \
    dw::bwd_weight_nhwc<T>(P, go, x, acc, Cp, b, e);                                           \
  }

OFA_DW_ENTRY_POINTS(float, f32)
OFA_DW_ENTRY_POINTS(double, f64)
#undef OFA_DW_ENTRY_POINTS

// Overloads so the templated glue below can call the entry points by dtype.
#define OFA_DW_OVERLOADS(T, SUFFIX)                                                            \
  void fwd_nchw(const dw::Problem& P, const T* x, dw::Filter<T> f, T* y, int64_t b,            \
                int64_t e) {                                                                   \
    fwd_nchw_##SUFFIX(P, x, f, y, b, e);                                                       \
  }                                                                                            \
  void bwd_input_nchw(const dw::Problem& P, const T* go, dw::Filter<T> f, T* gx, int64_t b,    \
                      int64_t e) {                                                             \
    bwd_input_nchw_##SUFFIX(P, go, f, gx, b, e);                                               \
  }                                                                                            \
  void bwd_weight_nchw(const dw::Problem& P, const T* go, const T* x, dw::FilterGrad<T> gw,    \
                       int64_t b, int64_t e) {                                                 \
    bwd_weight_nchw_##SUFFIX(P, go, x, gw, b, e);                                              \
  }                                                                                            \
  void fwd_nhwc(const dw::Problem& P, const T* x, const T* wp, int64_t Cp, T* y, int64_t b,    \
                int64_t e) {                                                                   \
    fwd_nhwc_##SUFFIX(P, x, wp, Cp, y, b, e);                                                  \
  }                                                                                            \
  void bwd_input_nhwc(const dw::Problem& P, const T* go, const T* wp, int64_t Cp, T* gx,       \
                      int64_t b, int64_t e) {                                                  \
    bwd_input_nhwc_##SUFFIX(P, go, wp, Cp, gx, b, e);                                          \
  }                                                                                            \
  void bwd_weight_nhwc(const dw::Problem& P, const T* go, const T* x, T* acc, int64_t Cp,      \
                       int64_t b, int64_t e) {                                                 \
    bwd_weight_nhwc_##SUFFIX(P, go, x, acc, Cp, b, e);                                         \
  }

OFA_DW_OVERLOADS(float, f32)
OFA_DW_OVERLOADS(double, f64)
#undef OFA_DW_OVERLOADS

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

// The active filter as the [k * k][C] tile the channels-last kernels load from:
// C * k * k values, read once through the weight's strides.
template <typename T>
std::vector<T> pack_filter(const at::Tensor& weight, const DwGeometry& g) {
  const dw::Filter<T> f = active_filter<T>(weight, g);
  std::vector<T> wp(static_cast<size_t>(g.k * g.k * g.C));
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.k; ++i)
      for (int64_t j = 0; j < g.k; ++j) wp[(i * g.k + j) * g.C + c] = f.at(c, i, j);
  return wp;
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
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (g.channels_last) {
      const std::vector<scalar_t> wp = pack_filter<scalar_t>(weight, g);
      at::parallel_for(0, g.N * g.OH, grain(g.OW * g.C * g.k * g.k), [&](int64_t b, int64_t e) {
        fwd_nhwc(P, xp, wp.data(), g.C, yp, b, e);
      });
    } else {
      const dw::Filter<scalar_t> f = active_filter<scalar_t>(weight, g);
      at::parallel_for(0, g.N * g.C, grain(g.OH * g.OW * g.k * g.k), [&](int64_t b, int64_t e) {
        fwd_nchw(P, xp, f, yp, b, e);
      });
    }
  });
  return y;
}

at::Tensor dwconv2d_backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight, int64_t kernel_size,
                                       int64_t stride, int64_t dilation, int64_t padding) {
  const char* op = "ofa_fast.dwconv2d_backward_input";
  const DwGeometry g = dwconv_geometry(input, weight, kernel_size, stride, dilation, padding, op);
  dwconv_check_grad_output(grad_output, g, op);
  check_cpu_dtype(input, op);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype ",
              grad_output.scalar_type(), " differs from input dtype ", input.scalar_type());
  const at::Tensor go = grad_output.contiguous(format_of(g));
  at::Tensor gx = at::empty({g.N, g.C, g.H, g.W}, input.options().memory_format(format_of(g)));
  if (gx.numel() == 0) return gx;
  const dw::Problem P = problem_of(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ofa_fast_dwconv2d_backward_input_cpu", [&] {
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const int64_t macs = g.k * g.k / (g.s * g.s) + 1;
    if (g.channels_last) {
      const std::vector<scalar_t> wp = pack_filter<scalar_t>(weight, g);
      at::parallel_for(0, g.N * g.H, grain(g.W * g.C * macs), [&](int64_t b, int64_t e) {
        bwd_input_nhwc(P, gop, wp.data(), g.C, gxp, b, e);
      });
    } else {
      const dw::Filter<scalar_t> f = active_filter<scalar_t>(weight, g);
      at::parallel_for(0, g.N * g.C, grain(g.H * g.W * macs), [&](int64_t b, int64_t e) {
        bwd_input_nchw(P, gop, f, gxp, b, e);
      });
    }
  });
  return gx;
}

at::Tensor dwconv2d_backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, int64_t kernel_size,
                                        int64_t stride, int64_t dilation, int64_t padding) {
  const char* op = "ofa_fast.dwconv2d_backward_weight";
  const DwGeometry g = dwconv_geometry(input, weight, kernel_size, stride, dilation, padding, op);
  dwconv_check_grad_output(grad_output, g, op);
  check_cpu_dtype(input, op);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype ",
              grad_output.scalar_type(), " differs from input dtype ", input.scalar_type());
  // Full-size gradient of the max weight: zero outside the active crop of weight[:C].
  at::Tensor gw = at::zeros(weight.sizes(), weight.options());
  if (g.N * g.OH * g.OW == 0) return gw;
  const at::Tensor x = input.contiguous(format_of(g));
  const at::Tensor go = grad_output.contiguous(format_of(g));
  const dw::Problem P = problem_of(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ofa_fast_dwconv2d_backward_weight_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    scalar_t* base = gw.mutable_data_ptr<scalar_t>() + g.crop * gw.stride(2) + g.crop * gw.stride(3);
    const dw::FilterGrad<scalar_t> out{base, gw.stride(0), gw.stride(2), gw.stride(3)};
    if (g.channels_last) {
      // Rows of the batch are split between threads, each summing into its own
      // [k * k][C] buffer; the buffers are added at the end.
      const int64_t kkC = g.k * g.k * g.C;
      const int nthreads = at::get_num_threads();
      std::vector<scalar_t> acc(static_cast<size_t>(kkC * nthreads), scalar_t(0));
      std::vector<char> used(static_cast<size_t>(nthreads), 0);
      at::parallel_for(0, g.N * g.OH, grain(g.OW * g.C * g.k * g.k), [&](int64_t b, int64_t e) {
        const int t = at::get_thread_num();
        used[t] = 1;
        bwd_weight_nhwc(P, gop, xp, acc.data() + t * kkC, g.C, b, e);
      });
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t i = 0; i < g.k; ++i)
          for (int64_t j = 0; j < g.k; ++j) {
            scalar_t sum = 0;
            for (int t = 0; t < nthreads; ++t)
              if (used[t]) sum += acc[t * kkC + (i * g.k + j) * g.C + c];
            out.at(c, i, j) = sum;
          }
    } else {
      at::parallel_for(0, g.C, grain(g.N * g.OH * g.OW * g.k * g.k), [&](int64_t b, int64_t e) {
        bwd_weight_nchw(P, gop, xp, out, b, e);
      });
    }
  });
  return gw;
}

TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("dwconv2d", &dwconv2d_cpu);
  m.impl("dwconv2d_backward_input", &dwconv2d_backward_input_cpu);
  m.impl("dwconv2d_backward_weight", &dwconv2d_backward_weight_cpu);
}

}  // namespace ofa_fast

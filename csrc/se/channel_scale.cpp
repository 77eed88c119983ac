// The squeeze-and-excitation scaling y = x * s[n, c] (x [N, C, H, W], s [N, C]) and its
// fused backward: one pass over (grad, x) gives both grad_x = grad * s and
// grad_s[n, c] = sum over pixels of grad * x (PyTorch's broadcast multiply takes a
// second full-size product and a reduction for the latter). The output keeps the
// input's memory format. CPU kernels here; on CUDA the same math through ATen ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "common/cpu_vec.h"
#include "common/memory_format.h"

namespace ofa_fast {
namespace {

using cpu::Vec;
using cpu::kLanes;

void check_args(const at::Tensor& x, const at::Tensor& s, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": input must be 4-D [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK(s.dim() == 2 && s.size(0) == x.size(0) && s.size(1) == x.size(1), op,
              ": scale must be [N, C] = [", x.size(0), ", ", x.size(1), "], got shape ", s.sizes());
  TORCH_CHECK(s.device() == x.device() && s.scalar_type() == x.scalar_type(), op, ": scale (",
              s.scalar_type(), " on ", s.device(), ") must match the input (", x.scalar_type(),
              " on ", x.device(), ")");
}

// ---- CPU kernels ----------------------------------------------------------------------

// NCHW: plane (n, c) of P pixels, scaled by one number
template <typename T>
OFA_CPU_MULTIVERSION void scale_planes(const T* x, const T* s, T* y, int64_t planes, int64_t P) {
  at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(P, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const T k = s[q];
      const T* xp = x + q * P;
      T* yp = y + q * P;
      for (int64_t i = 0; i < P; ++i) yp[i] = xp[i] * k;
    }
  });
}

// channels_last: row (n, pixel) of C channels, scaled by s[n, :]
template <typename T>
OFA_CPU_MULTIVERSION void scale_rows(const T* x, const T* s, T* y, int64_t N, int64_t P, int64_t C) {
  at::parallel_for(0, N * P, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* k = s + (r / P) * C;
      const T* xp = x + r * C;
      T* yp = y + r * C;
      for (int64_t c = 0; c < C; ++c) yp[c] = xp[c] * k[c];
    }
  });
}

template <typename T>
OFA_CPU_MULTIVERSION void backward_planes(const T* g, const T* x, const T* s, T* gx, T* gs,
                                          int64_t planes, int64_t P) {
  constexpr int L = kLanes<T>;
  at::parallel_for(0, planes, std::max<int64_t>(1, 8192 / std::max<int64_t>(P, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const T* gp = g + q * P;
      const T* xp = x + q * P;
      if (gx != nullptr) {
        const T k = s[q];
        T* out = gx + q * P;
        for (int64_t i = 0; i < P; ++i) out[i] = gp[i] * k;
      }
      if (gs != nullptr) {
        Vec<T, L> acc = Vec<T, L>::zero();
        int64_t i = 0;
        for (; i + L <= P; i += L) acc.fma(Vec<T, L>::load(gp + i), Vec<T, L>::load(xp + i));
        T tail = 0;
        for (; i < P; ++i) tail += gp[i] * xp[i];
        gs[q] = acc.sum() + tail;
      }
    }
  });
}

template <typename T>
OFA_CPU_MULTIVERSION void backward_rows(const T* g, const T* x, const T* s, T* gx, T* gs,
                                        int64_t N, int64_t P, int64_t C) {
  // images in parallel; each sums its pixels' products into gs[n, :]
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const T* k = s + n * C;
      T* acc = gs != nullptr ? gs + n * C : nullptr;
      if (acc != nullptr) std::fill(acc, acc + C, T(0));
      for (int64_t p = 0; p < P; ++p) {
        const int64_t off = (n * P + p) * C;
        const T* gp = g + off;
        const T* xp = x + off;
        if (gx != nullptr) {
          T* out = gx + off;
          for (int64_t c = 0; c < C; ++c) out[c] = gp[c] * k[c];
        }
        if (acc != nullptr)
          for (int64_t c = 0; c < C; ++c) acc[c] += gp[c] * xp[c];
      }
    }
  });
}

}  // namespace

at::Tensor channel_scale(const at::Tensor& input, const at::Tensor& scale) {
  const char* op = "ofa_fast.channel_scale";
  check_args(input, scale, op);
  const at::MemoryFormat fmt = kept_memory_format(input);
  if (!input.device().is_cpu()) return input * scale.view({scale.size(0), scale.size(1), 1, 1});
  const at::Tensor x = input.contiguous(fmt), s = scale.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_scale", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      scale_rows<scalar_t>(x.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, P, C);
    else
      scale_planes<scalar_t>(x.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N * C, P);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> channel_scale_backward(const at::Tensor& grad_output,
                                                          const at::Tensor& input,
                                                          const at::Tensor& scale,
                                                          std::array<bool, 2> output_mask) {
  const char* op = "ofa_fast.channel_scale_backward";
  check_args(input, scale, op);
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.device() == input.device() &&
                  grad_output.scalar_type() == input.scalar_type(),
              op, ": grad_output (", grad_output.scalar_type(), ", shape ", grad_output.sizes(),
              ") must match the input (", input.scalar_type(), ", shape ", input.sizes(), ")");
  const int64_t N = input.size(0), C = input.size(1);
  if (!input.device().is_cpu()) {
    at::Tensor gx = output_mask[0] ? grad_output * scale.view({N, C, 1, 1}) : input.new_empty({0});
    at::Tensor gs = output_mask[1] ? (grad_output * input).sum({2, 3}) : scale.new_empty({0});
    return {gx, gs};
  }
  const at::MemoryFormat fmt = kept_memory_format(input);
  const at::Tensor x = input.contiguous(fmt), g = grad_output.contiguous(fmt), s = scale.contiguous();
  at::Tensor gx = output_mask[0] ? at::empty(x.sizes(), x.options().memory_format(fmt))
                                 : input.new_empty({0});
  at::Tensor gs = output_mask[1] ? at::zeros({N, C}, scale.options()) : scale.new_empty({0});
  const int64_t P = x.size(2) * x.size(3);
  if (N * C * P == 0) return {gx, gs};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_scale_backward", [&] {
    scalar_t* gxp = output_mask[0] ? gx.data_ptr<scalar_t>() : nullptr;
    scalar_t* gsp = output_mask[1] ? gs.data_ptr<scalar_t>() : nullptr;
    if (fmt == at::MemoryFormat::ChannelsLast)
      backward_rows<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                              gxp, gsp, N, P, C);
    else
      backward_planes<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                                gxp, gsp, N * C, P);
  });
  return {gx, gs};
}

void register_se_schemas(torch::Library& m) {
  m.def("channel_scale(Tensor input, Tensor scale) -> Tensor");
  m.def("channel_scale_backward(Tensor grad_output, Tensor input, Tensor scale, bool[2] output_mask) "
        "-> (Tensor, Tensor)");
}

}  // namespace ofa_fast

TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("channel_scale", &ofa_fast::channel_scale);
  m.impl("channel_scale_backward", &ofa_fast::channel_scale_backward);
}

#ifdef OFA_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(ofa_fast, CUDA, m) {
  m.impl("channel_scale", &ofa_fast::channel_scale);
  m.impl("channel_scale_backward", &ofa_fast::channel_scale_backward);
}
#endif

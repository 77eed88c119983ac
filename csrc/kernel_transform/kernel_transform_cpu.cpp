// CPU implementation of OFA's kernel-transform chain: tensors, threads and
// instruction-set dispatch around kernel_transform_cpu_kernel.h (blocks of channels
// vectorised together; the max weight and the matrices read in place).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "kernel_transform.h"
#include "kernel_transform_cpu_kernel.h"

namespace ofa_fast {
namespace {

namespace kt = ofa_fast::cpu::kt;
using cpu::kLanes;

#define OFA_KT_ENTRY_POINTS(T, SUFFIX)                                                         \
  OFA_CPU_MULTIVERSION void forward_##SUFFIX(const kt::Chain& ch, const kt::Weight<T>& w,      \
                                             const kt::Mat<T>* M, int64_t C, T* f, int64_t b,  \
                                             int64_t e) {                                      \
    kt::forward<T>(ch, w, M, C, f, b, e);                                                      \
  }                                                                                            \
  OFA_CPU_MULTIVERSION void backward_##SUFFIX(                                                 \
      const kt::Chain& ch, const kt::Weight<T>& w, const kt::Mat<T>* M, int64_t C,             \
      const T* grad, T* gw, int64_t gs0, int64_t gs2, int64_t gs3, T* gM, const int64_t* moff, \
      int64_t b, int64_t e) {                                                                  \
    kt::backward<T>(ch, w, M, C, grad, gw, gs0, gs2, gs3, gM, moff, b, e);                     \
  }                                                                                            \
  void forward(const kt::Chain& ch, const kt::Weight<T>& w, const kt::Mat<T>* M, int64_t C,    \
               T* f, int64_t b, int64_t e) {                                                   \
    forward_##SUFFIX(ch, w, M, C, f, b, e);                                                    \
  }                                                                                            \
  void backward(const kt::Chain& ch, const kt::Weight<T>& w, const kt::Mat<T>* M, int64_t C,   \
                const T* grad, T* gw, int64_t gs0, int64_t gs2, int64_t gs3, T* gM,            \
                const int64_t* moff, int64_t b, int64_t e) {                                   \
    backward_##SUFFIX(ch, w, M, C, grad, gw, gs0, gs2, gs3, gM, moff, b, e);                   \
  }

OFA_KT_ENTRY_POINTS(float, f32)
OFA_KT_ENTRY_POINTS(double, f64)
#undef OFA_KT_ENTRY_POINTS

kt::Chain chain_of(const KtGeometry& g) {
  kt::Chain ch;
  ch.m = int64_t(g.chain.size()) - 1;
  for (size_t q = 0; q < g.chain.size(); ++q) ch.size[q] = g.chain[q];
  return ch;
}

template <typename T>
std::vector<kt::Mat<T>> mats_of(at::TensorList matrices) {
  std::vector<kt::Mat<T>> out;
  for (const at::Tensor& M : matrices) out.push_back(kt::Mat<T>{M.const_data_ptr<T>(), M.stride(0), M.stride(1)});
  return out;
}

template <typename T>
kt::Weight<T> weight_of(const at::Tensor& w) {
  return kt::Weight<T>{w.const_data_ptr<T>(), w.stride(0), w.stride(2), w.stride(3)};
}

void check_cpu_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": dtype ",
              t.scalar_type(), " is not supported on the CPU; use float32 or float64");
}

// Channel blocks per parallel work item (a block is ~V * 700 multiply-adds).
constexpr int64_t kGrain = 4;

}  // namespace

at::Tensor kernel_transform_cpu(const at::Tensor& weight, at::TensorList matrices,
                                at::IntArrayRef ks_chain, int64_t channels) {
  const char* op = "ofa_fast.kernel_transform";
  const KtGeometry g = kernel_transform_geometry(weight, matrices, ks_chain, channels, op);
  check_cpu_dtype(weight, op);
  const int64_t k = g.chain.back();
  at::Tensor out = at::empty({g.C, 1, k, k}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "ofa_fast_kernel_transform_cpu", [&] {
    const std::vector<kt::Mat<scalar_t>> M = mats_of<scalar_t>(matrices);
    const kt::Chain ch = chain_of(g);
    const kt::Weight<scalar_t> w = weight_of<scalar_t>(weight);
    scalar_t* f = out.mutable_data_ptr<scalar_t>();
    const int64_t nb = (g.C + kLanes<scalar_t> - 1) / kLanes<scalar_t>;
    at::parallel_for(0, nb, kGrain, [&](int64_t b, int64_t e) { forward(ch, w, M.data(), g.C, f, b, e); });
  });
  return out;
}

std::vector<at::Tensor> kernel_transform_backward_cpu(const at::Tensor& grad,
                                                      const at::Tensor& weight,
                                                      at::TensorList matrices,
                                                      at::IntArrayRef ks_chain,
                                                      int64_t channels) {
  const char* op = "ofa_fast.kernel_transform_backward";
  const KtGeometry g = kernel_transform_geometry(weight, matrices, ks_chain, channels, op);
  const int64_t m = int64_t(g.chain.size()) - 1;
  kernel_transform_check_grad(grad, weight, g, op);
  check_cpu_dtype(weight, op);
  at::Tensor gw = at::zeros(weight.sizes(), weight.options());
  std::vector<at::Tensor> result{gw};
  for (const at::Tensor& M : matrices) result.push_back(at::zeros(M.sizes(), M.options()));
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "ofa_fast_kernel_transform_backward_cpu", [&] {
    using T = scalar_t;
    constexpr int V = kLanes<T>;
    const std::vector<kt::Mat<T>> M = mats_of<T>(matrices);
    const kt::Chain ch = chain_of(g);
    const kt::Weight<T> w = weight_of<T>(weight);
    const at::Tensor gc = grad.contiguous();
    // per-lane matrix gradients [D^2][D^2][V] of every step, one set per thread
    std::vector<int64_t> moff(static_cast<size_t>(m + 1), 0);
    for (int64_t q = 0; q < m; ++q) moff[q + 1] = moff[q] + result[q + 1].numel() * V;
    const int nthreads = at::get_num_threads();
    std::vector<T> gM(static_cast<size_t>(moff[m] * nthreads), T(0));
    std::vector<char> used(static_cast<size_t>(nthreads), 0);
    const int64_t nb = (g.C + V - 1) / V;
    at::parallel_for(0, nb, kGrain, [&](int64_t b, int64_t e) {
      const int t = at::get_thread_num();
      used[t] = 1;
      backward(ch, w, M.data(), g.C, gc.const_data_ptr<T>(), gw.mutable_data_ptr<T>(), gw.stride(0),
               gw.stride(2), gw.stride(3), gM.data() + t * moff[m], moff.data(), b, e);
    });
    for (int64_t q = 0; q < m; ++q) {
      T* out = result[q + 1].mutable_data_ptr<T>();
      const int64_t n2 = result[q + 1].numel();
      for (int t = 0; t < nthreads; ++t) {
        if (!used[t]) continue;
        const T* src = gM.data() + t * moff[m] + moff[q];
        for (int64_t i = 0; i < n2; ++i)
          for (int l = 0; l < V; ++l) out[i] += src[i * V + l];
      }
    }
  });
  return result;
}

TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("kernel_transform", &kernel_transform_cpu);
  m.impl("kernel_transform_backward", &kernel_transform_backward_cpu);
}

}  // namespace ofa_fast

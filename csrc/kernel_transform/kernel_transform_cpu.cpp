// CPU implementation of OFA's kernel-transform chain, as small GEMMs on strided views.
//
// Step q maps the [C, S, S] filter F to [C, D * D] (D = the next size, o = S/2 - D/2):
//   F'[c, r] = sum_{a, b < D} F[c, o + a, o + b] * M[r, a * D + b]
//            = sum_a (F[:, o + a, o : o + D] @ M[:, a * D : (a + 1) * D]^T)[c, r],
// and each F[:, o + a, o : o + D] is a [C, D] view with row stride S * S (for step 0,
// of the max weight itself, row stride K * K): BLAS reads it in place through its
// leading dimension, so the max weight is never sliced into a copy. The gradients
// are the same products transposed, written through strided views of the results.
#include <ATen/Dispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "kernel_transform.h"

namespace ofa_fast {
namespace {

// Row a of the centre D x D window of every channel of F viewed as [C, S, S]:
// a [C, D] view (no copy).
at::Tensor window_row(const at::Tensor& F, int64_t S, int64_t D, int64_t a) {
  const int64_t o = S / 2 - D / 2;
  return F.select(1, o + a).narrow(1, o, D);
}

// The stages of the chain: f[0] = weight[:C, 0] as [C, K, K] (a view), then each
// step's [C, D, D] result.
std::vector<at::Tensor> chain_stages(const KtGeometry& g, const at::Tensor& weight,
                                     at::TensorList matrices) {
  std::vector<at::Tensor> f{weight.narrow(0, 0, g.C).select(1, 0)};
  for (size_t q = 0; q + 1 < g.chain.size(); ++q) {
    const int64_t S = g.chain[q], D = g.chain[q + 1];
    at::Tensor out = at::zeros({g.C, D * D}, weight.options());
    for (int64_t a = 0; a < D; ++a)
      out.addmm_(window_row(f[q], S, D, a), matrices[q].narrow(1, a * D, D).t());
    f.push_back(out.view({g.C, D, D}));
  }
  return f;
}

void check_cpu_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": dtype ",
              t.scalar_type(), " is not supported on the CPU; use float32 or float64");
}

}  // namespace

at::Tensor kernel_transform_cpu(const at::Tensor& weight, at::TensorList matrices,
                                at::IntArrayRef ks_chain, int64_t channels) {
  const char* op = "ofa_fast.kernel_transform";
  const KtGeometry g = kernel_transform_geometry(weight, matrices, ks_chain, channels, op);
  check_cpu_dtype(weight, op);
  return chain_stages(g, weight, matrices).back().unsqueeze(1);
}

std::vector<at::Tensor> kernel_transform_backward_cpu(const at::Tensor& grad,
                                                      const at::Tensor& weight,
                                                      at::TensorList matrices,
                                                      at::IntArrayRef ks_chain,
                                                      int64_t channels) {
  const char* op = "ofa_fast.kernel_transform_backward";
  const KtGeometry g = kernel_transform_geometry(weight, matrices, ks_chain, channels, op);
  const int64_t k = g.chain.back(), m = int64_t(g.chain.size()) - 1;
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == g.C && grad.size(1) == 1 && grad.size(2) == k &&
                  grad.size(3) == k,
              op, ": grad has shape ", grad.sizes(), "; expected [", g.C, ", 1, ", k, ", ", k, "]");
  TORCH_CHECK(grad.scalar_type() == weight.scalar_type(), op, ": grad dtype ", grad.scalar_type(),
              " differs from weight dtype ", weight.scalar_type());
  check_cpu_dtype(weight, op);
  const std::vector<at::Tensor> f = chain_stages(g, weight, matrices);
  at::Tensor gw = at::zeros(weight.sizes(), weight.options());
  std::vector<at::Tensor> result(static_cast<size_t>(m + 1));
  result[0] = gw;
  // gradient w.r.t. the output of step q, as [C, D * D]
  at::Tensor gout = grad.reshape({g.C, k * k});
  for (int64_t q = m - 1; q >= 0; --q) {
    const int64_t S = g.chain[q], D = g.chain[q + 1];
    const at::Tensor& M = matrices[q];
    at::Tensor gM = at::empty({D * D, D * D}, M.options());
    // gradient w.r.t. step q's input, [C, S, S]: the max weight's crop for q == 0
    at::Tensor gin = q == 0 ? gw.narrow(0, 0, g.C).select(1, 0) : at::zeros({g.C, S, S}, weight.options());
    for (int64_t a = 0; a < D; ++a) {
      // dM[:, aD:(a+1)D] = gout^T @ F_window_row(a);  dF_window_row(a) = gout @ M[:, aD:(a+1)D]
      at::Tensor gm = gM.narrow(1, a * D, D);
      at::mm_out(gm, gout.t(), window_row(f[q], S, D, a));
      at::Tensor dst = window_row(gin, S, D, a);
      at::mm_out(dst, gout, M.narrow(1, a * D, D));
    }
    result[q + 1] = gM;
    gout = gin.reshape({g.C, S * S});
  }
  return result;
}

TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("kernel_transform", &kernel_transform_cpu);
  m.impl("kernel_transform_backward", &kernel_transform_backward_cpu);
}

}  // namespace ofa_fast

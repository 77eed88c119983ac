// Argument checks and schemas of the kernel-transform chain, shared by the CPU and
// CUDA implementations.
#include "kernel_transform.h"

#include <torch/library.h>

#include "kernel_transform_index.h"

namespace ofa_fast {

KtGeometry kernel_transform_geometry(const at::Tensor& weight, at::TensorList matrices,
                                     at::IntArrayRef ks_chain, int64_t channels, const char* op) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == weight.size(3), op,
              ": weight must be [C_max, 1, K, K] (a depthwise max kernel), got shape ",
              weight.sizes());
  KtGeometry g;
  g.Cw = weight.size(0);
  g.K = weight.size(2);
  g.C = channels;
  g.chain.assign(ks_chain.begin(), ks_chain.end());
  const int64_t m = static_cast<int64_t>(g.chain.size()) - 1;
  TORCH_CHECK(m >= 1 && m <= kernel_transform::kMaxChain, op, ": ks_chain ", ks_chain,
              " must hold between 2 and ", kernel_transform::kMaxChain + 1,
              " kernel sizes, from the max kernel size down to the active one");
  TORCH_CHECK(g.chain[0] == g.K, op, ": ks_chain ", ks_chain,
              " must start at the weight's kernel size K = ", g.K);
  for (int64_t q = 0; q <= m; ++q) {
    TORCH_CHECK(g.chain[q] >= 1 && g.chain[q] % 2 == 1 && (q == 0 || g.chain[q] < g.chain[q - 1]),
                op, ": ks_chain ", ks_chain,
                " must be strictly decreasing odd kernel sizes; ", g.chain[q], " at position ", q,
                " is not");
  }
  TORCH_CHECK(static_cast<int64_t>(matrices.size()) == m, op, ": ks_chain ", ks_chain, " has ", m,
              " steps but ", matrices.size(), " transform matrices were given");
  for (int64_t q = 0; q < m; ++q) {
    const at::Tensor& M = matrices[q];
    const int64_t n = g.chain[q + 1] * g.chain[q + 1];
    TORCH_CHECK(M.dim() == 2 && M.size(0) == n && M.size(1) == n, op, ": the ", g.chain[q], "to",
                g.chain[q + 1], " transform matrix must be [", n, ", ", n, "], got shape ",
                M.sizes());
    TORCH_CHECK(M.device() == weight.device(), op, ": the ", g.chain[q], "to", g.chain[q + 1],
                " transform matrix is on ", M.device(), " but weight is on ", weight.device());
    TORCH_CHECK(M.scalar_type() == weight.scalar_type(), op, ": the ", g.chain[q], "to",
                g.chain[q + 1], " transform matrix has dtype ", M.scalar_type(),
                " but weight has ", weight.scalar_type());
  }
  TORCH_CHECK(channels >= 1 && channels <= g.Cw, op, ": channels = ", channels,
              " must be between 1 and ", g.Cw, " (the weight's max channels)");
  return g;
}

void kernel_transform_check_grad(const at::Tensor& grad, const at::Tensor& weight,
                                 const KtGeometry& g, const char* op) {
  const int64_t k = g.chain.back();
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == g.C && grad.size(1) == 1 && grad.size(2) == k &&
                  grad.size(3) == k,
              op, ": grad has shape ", grad.sizes(), "; expected [", g.C, ", 1, ", k, ", ", k, "]");
  TORCH_CHECK(grad.scalar_type() == weight.scalar_type(), op, ": grad dtype ", grad.scalar_type(),
              " differs from weight dtype ", weight.scalar_type());
  TORCH_CHECK(grad.device() == weight.device(), op, ": grad is on ", grad.device(),
              " but weight is on ", weight.device());
}

// Schemas: next to their kernels; TORCH_LIBRARY(ofa_fast) in csrc/ofa_fast.cpp calls this.
void register_kernel_transform_schemas(torch::Library& m) {
  // The transformed filter [channels, 1, k, k] of the first `channels` channels.
  m.def("kernel_transform(Tensor weight, Tensor[] matrices, int[] ks_chain, int channels) "
        "-> Tensor");
  // [grad of the full max weight (zero outside the active crop), grad of each matrix].
  m.def("kernel_transform_backward(Tensor grad, Tensor weight, Tensor[] matrices, "
        "int[] ks_chain, int channels) -> Tensor[]");
}

}  // namespace ofa_fast

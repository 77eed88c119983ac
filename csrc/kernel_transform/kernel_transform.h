// OFA's kernel-transform chain (see kernel_transform_index.h):
//
//   kernel_transform(weight [C_max, 1, K, K], matrices, ks_chain, channels)
//     -> filter [channels, 1, k, k]   (k = ks_chain[-1])
//
// ks_chain = [K, ..., k] strictly decreasing odd sizes; matrices[q] is the
// [ks_chain[q+1]^2, ks_chain[q+1]^2] matrix of step q. The max weight and the matrices
// are read in place; the small transformed filter is the only thing written.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace ofa_fast {

struct KtGeometry {
  int64_t C;                   // channels to transform
  int64_t Cw, K;               // weight's max channels and kernel size
  std::vector<int64_t> chain;  // [K, ..., k]
};

KtGeometry kernel_transform_geometry(const at::Tensor& weight, at::TensorList matrices,
                                     at::IntArrayRef ks_chain, int64_t channels, const char* op);

// Checks the backward's incoming gradient: [C, 1, k, k] in the weight's dtype.
void kernel_transform_check_grad(const at::Tensor& grad, const at::Tensor& weight,
                                 const KtGeometry& g, const char* op);

at::Tensor kernel_transform_cpu(const at::Tensor& weight, at::TensorList matrices,
                                at::IntArrayRef ks_chain, int64_t channels);
std::vector<at::Tensor> kernel_transform_backward_cpu(const at::Tensor& grad,
                                                      const at::Tensor& weight,
                                                      at::TensorList matrices,
                                                      at::IntArrayRef ks_chain,
                                                      int64_t channels);

}  // namespace ofa_fast

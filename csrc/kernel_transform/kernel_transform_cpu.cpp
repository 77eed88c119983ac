// CPU implementation of OFA's kernel-transform chain. The work is tiny (at most
// C * 25 * 25 multiply-adds for 7 -> 5 -> 3), so plain loops over channels do.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "kernel_transform.h"
#include "kernel_transform_index.h"

namespace ofa_fast {
namespace {

using kernel_transform::crop_flat_index;

template <typename T>
struct Mat {  // a transform matrix read in place through its strides
  const T* p;
  int64_t s0, s1;
  T at(int64_t r, int64_t e) const { return p[r * s0 + e * s1]; }
};

template <typename T>
std::vector<Mat<T>> mats_of(at::TensorList matrices) {
  std::vector<Mat<T>> out;
  for (const at::Tensor& M : matrices)
    out.push_back(Mat<T>{M.const_data_ptr<T>(), M.stride(0), M.stride(1)});
  return out;
}

// Runs the chain for channel c, keeping every stage: f[q] holds the flattened
// ks_chain[q] x ks_chain[q] filter after step q (f[0]: the max weight's channel).
template <typename T>
void chain_forward(const KtGeometry& g, const T* w, int64_t ws0, int64_t ws2, int64_t ws3,
                   const std::vector<Mat<T>>& M, int64_t c, std::vector<std::vector<T>>& f) {
  const int64_t K = g.K;
  f[0].resize(K * K);
  for (int64_t a = 0; a < K; ++a)
    for (int64_t b = 0; b < K; ++b) f[0][a * K + b] = w[c * ws0 + a * ws2 + b * ws3];
  for (size_t q = 0; q + 1 < g.chain.size(); ++q) {
    const int src = int(g.chain[q]), dst = int(g.chain[q + 1]), n = dst * dst;
    f[q + 1].assign(n, T(0));
    for (int r = 0; r < n; ++r) {
      T acc = 0;
      for (int e = 0; e < n; ++e) acc += f[q][crop_flat_index(e, src, dst)] * M[q].at(r, e);
      f[q + 1][r] = acc;
    }
  }
}

}  // namespace

at::Tensor kernel_transform_cpu(const at::Tensor& weight, at::TensorList matrices,
                                at::IntArrayRef ks_chain, int64_t channels) {
  const char* op = "ofa_fast.kernel_transform";
  const KtGeometry g = kernel_transform_geometry(weight, matrices, ks_chain, channels, op);
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, op,
              ": dtype ", weight.scalar_type(), " is not supported on the CPU; use float32 or float64");
  const int64_t k = g.chain.back();
  at::Tensor out = at::empty({g.C, 1, k, k}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "ofa_fast_kernel_transform_cpu", [&] {
    const std::vector<Mat<scalar_t>> M = mats_of<scalar_t>(matrices);
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.C, 64, [&](int64_t b, int64_t e) {
      std::vector<std::vector<scalar_t>> f(g.chain.size());
      for (int64_t c = b; c < e; ++c) {
        chain_forward(g, w, weight.stride(0), weight.stride(2), weight.stride(3), M, c, f);
        std::copy(f.back().begin(), f.back().end(), o + c * k * k);
      }
    });
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
  const int64_t k = g.chain.back(), m = int64_t(g.chain.size()) - 1;
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == g.C && grad.size(1) == 1 && grad.size(2) == k &&
                  grad.size(3) == k,
              op, ": grad has shape ", grad.sizes(), "; expected [", g.C, ", 1, ", k, ", ", k, "]");
  TORCH_CHECK(grad.scalar_type() == weight.scalar_type(), op, ": grad dtype ", grad.scalar_type(),
              " differs from weight dtype ", weight.scalar_type());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, op,
              ": dtype ", weight.scalar_type(), " is not supported on the CPU; use float32 or float64");
  at::Tensor gw = at::zeros(weight.sizes(), weight.options());
  std::vector<at::Tensor> result{gw};
  for (const at::Tensor& M : matrices) result.push_back(at::zeros(M.sizes(), M.options()));
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "ofa_fast_kernel_transform_backward_cpu", [&] {
    const std::vector<Mat<scalar_t>> M = mats_of<scalar_t>(matrices);
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const at::Tensor gc = grad.contiguous();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    // Matrix gradients sum over channels: one private set per thread, added at the end.
    const int nthreads = at::get_num_threads();
    std::vector<std::vector<std::vector<scalar_t>>> gM(nthreads);
    at::parallel_for(0, g.C, 64, [&](int64_t b, int64_t e) {
      std::vector<std::vector<scalar_t>>& mine = gM[at::get_thread_num()];
      if (mine.empty())
        for (int64_t q = 0; q < m; ++q) mine.emplace_back(g.chain[q + 1] * g.chain[q + 1] * g.chain[q + 1] * g.chain[q + 1], scalar_t(0));
      std::vector<std::vector<scalar_t>> f(g.chain.size());
      std::vector<scalar_t> cur, prev;
      for (int64_t c = b; c < e; ++c) {
        chain_forward(g, w, weight.stride(0), weight.stride(2), weight.stride(3), M, c, f);
        cur.assign(gp + c * k * k, gp + (c + 1) * k * k);
        for (int64_t q = m - 1; q >= 0; --q) {
          const int src = int(g.chain[q]), dst = int(g.chain[q + 1]), n = dst * dst;
          prev.assign(src * src, scalar_t(0));
          for (int e2 = 0; e2 < n; ++e2) {
            const int fe = crop_flat_index(e2, src, dst);
            scalar_t acc = 0;
            for (int r = 0; r < n; ++r) {
              acc += cur[r] * M[q].at(r, e2);
              mine[q][r * n + e2] += cur[r] * f[q][fe];
            }
            prev[fe] = acc;
          }
          cur.swap(prev);
        }
        for (int64_t a = 0; a < g.K; ++a)
          for (int64_t bb = 0; bb < g.K; ++bb)
            gwp[c * gw.stride(0) + a * gw.stride(2) + bb * gw.stride(3)] = cur[a * g.K + bb];
      }
    });
    for (int64_t q = 0; q < m; ++q) {
      scalar_t* out = result[q + 1].mutable_data_ptr<scalar_t>();
      const int64_t n2 = result[q + 1].numel();
      for (const auto& mine : gM)
        if (!mine.empty())
          for (int64_t e2 = 0; e2 < n2; ++e2) out[e2] += mine[q][e2];
    }
  });
  return result;
}

TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("kernel_transform", &kernel_transform_cpu);
  m.impl("kernel_transform_backward", &kernel_transform_backward_cpu);
}

}  // namespace ofa_fast

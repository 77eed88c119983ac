// CUDA implementation of OFA's kernel-transform chain (schemas and checks:
// kernel_transform_common.cpp; semantics: kernel_transform_cpu.cpp). The work is tiny
// (C * 625 multiply-adds for 7 -> 5 -> 3), so the kernels are plain:
//   kt_forward         one block per channel walks the chain; thread r computes entry r
//                      of the next stage. Intermediate stages live in a global scratch
//                      [C][2][n_max] (ping-pong), so any kernel size fits.
//   kt_backward_chain  one block per channel: recomputes the stages, keeping the crop
//                      of every stage's input (F_q) and the gradient of every stage's
//                      output (G_q) in scratch; writes the weight gradient of the channel.
//   kt_matrix_grad     one block per matrix entry: grad M_q[r, e] = sum over channels of
//                      G_q[c, r] * F_q[c, e], reduced in a fixed order (deterministic,
//                      no atomics).
// The max weight, the matrices and grad are read in place through their strides.
// The runtime is reached only through common/gpu.h, so this file also builds as C++
// against the CPU emulator the tests run it on (tests/test_cuda_emulated.py).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "../common/gpu.h"
#include "kernel_transform.h"
#include "kernel_transform_index.h"

namespace ofa_fast {
namespace {

using kernel_transform::crop_flat_index;
using kernel_transform::kMaxChain;

constexpr int kThreads = 128;

// The chain as kernels see it: sizes, the matrices read in place, and where each
// step's [C][n_q] block sits in the backward scratch (n_q = size[q + 1]^2).
template <typename T>
struct Chain {
  int m;                      // steps
  int size[kMaxChain + 1];    // ks_chain
  const T* mat[kMaxChain];
  int64_t ms0[kMaxChain], ms1[kMaxChain];
  int64_t off[kMaxChain];     // scratch offset of step q (elements)
  int64_t first[kMaxChain + 1];  // first matrix-gradient entry of step q (prefix sums of n_q^2)
  __device__ __forceinline__ T M(int q, int64_t r, int64_t e) const {
    return mat[q][r * ms0[q] + e * ms1[q]];
  }
};

// A [*, 1, s, s] tensor read or written through its strides.
template <typename P>
struct Planes {
  P* p;
  int64_t s0, s2, s3;
  __device__ __forceinline__ P& at(int64_t c, int flat, int side) const {
    return p[c * s0 + (flat / side) * s2 + (flat % side) * s3];
  }
};

// The stages f_1 .. f_{m-1} of channel c live in the ping-pong pair stage[c][2][n_max]:
// f_q in half q & 1. Step q reads f_q (the weight for q = 0) through the crop.
template <typename T>
__device__ __forceinline__ at::opmath_type<T> stage_input(const Planes<const T>& w,
                                                          const at::opmath_type<T>* stage_c,
                                                          int64_t n_max, int64_t c, int q,
                                                          int fe, int src) {
  using acc_t = at::opmath_type<T>;
  return q == 0 ? acc_t(w.at(c, fe, src)) : stage_c[(q & 1) * n_max + fe];
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    kt_forward_kernel(Planes<const T> w, Chain<T> ch, at::opmath_type<T>* stage, int64_t n_max,
                      T* __restrict__ out) {
  using acc_t = at::opmath_type<T>;
  const int64_t c = blockIdx.x;
  acc_t* stage_c = stage + c * 2 * n_max;  // written and read back by this block only
  const int k = ch.size[ch.m];
  for (int q = 0; q < ch.m; ++q) {
    const int src = ch.size[q], dst = ch.size[q + 1], n = dst * dst;
    for (int r = threadIdx.x; r < n; r += blockDim.x) {
      acc_t a = acc_t(0);
      for (int e = 0; e < n; ++e)
        a += stage_input<T>(w, stage_c, n_max, c, q, crop_flat_index(e, src, dst), src) *
             acc_t(ch.M(q, r, e));
      if (q + 1 == ch.m) out[c * k * k + r] = T(a);
      else stage_c[((q + 1) & 1) * n_max + r] = a;
    }
    __syncthreads();  // f_{q+1} complete before step q + 1 reads it
  }
}

// F_q[c][e] = f_q[crop(e)] and G_q[c][r] = d loss / d f_{q+1}[r], both [C][n_q] at
// ch.off[q]; the weight gradient of channel c (all K x K entries) into gw.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    kt_backward_chain_kernel(Planes<const T> grad, Planes<const T> w, Chain<T> ch,
                             at::opmath_type<T>* F, at::opmath_type<T>* G,
                             at::opmath_type<T>* stage, int64_t n_max, Planes<T> gw) {
  using acc_t = at::opmath_type<T>;
  const int64_t c = blockIdx.x;
  acc_t* stage_c = stage + c * 2 * n_max;
  const int m = ch.m, K = ch.size[0], k = ch.size[m];
  // Forward again, keeping each step's cropped input.
  for (int q = 0; q < m; ++q) {
    const int src = ch.size[q], dst = ch.size[q + 1], n = dst * dst;
    acc_t* Fq = F + ch.off[q] + c * n;
    for (int e = threadIdx.x; e < n; e += blockDim.x)
      Fq[e] = stage_input<T>(w, stage_c, n_max, c, q, crop_flat_index(e, src, dst), src);
    __syncthreads();
    if (q + 1 < m) {
      for (int r = threadIdx.x; r < n; r += blockDim.x) {
        acc_t a = acc_t(0);
        for (int e = 0; e < n; ++e) a += Fq[e] * acc_t(ch.M(q, r, e));
        stage_c[((q + 1) & 1) * n_max + r] = a;
      }
      __syncthreads();
    }
  }
  // Backward: G_{m-1} = grad; the gradient of f_q is zero outside the crop of step q
  // and sum_r G_q[r] * M_q[r, e] at crop(e).
  acc_t* Glast = G + ch.off[m - 1] + c * k * k;
  for (int r = threadIdx.x; r < k * k; r += blockDim.x) Glast[r] = acc_t(grad.at(c, r, k));
  __syncthreads();
  for (int q = m - 1; q >= 0; --q) {
    const int src = ch.size[q], dst = ch.size[q + 1], n = dst * dst;
    const acc_t* Gq = G + ch.off[q] + c * n;
    acc_t* Gprev = q > 0 ? G + ch.off[q - 1] + c * src * src : nullptr;  // n_{q-1} = src^2
    if (Gprev != nullptr) {
      for (int fe = threadIdx.x; fe < src * src; fe += blockDim.x) Gprev[fe] = acc_t(0);
      __syncthreads();
    }
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      acc_t a = acc_t(0);
      for (int r = 0; r < n; ++r) a += Gq[r] * acc_t(ch.M(q, r, e));
      const int fe = crop_flat_index(e, src, dst);
      if (Gprev != nullptr) Gprev[fe] = a;
      else gw.at(c, fe, K) = T(a);
    }
    __syncthreads();
  }
}

// The matrices' gradients, written through their strides.
template <typename T>
struct MatrixGrads {
  T* mat[kMaxChain];
  int64_t ms0[kMaxChain], ms1[kMaxChain];
};

// Matrices' gradients, one block per entry (q, r, e) over all steps.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    kt_matrix_grad_kernel(const at::opmath_type<T>* __restrict__ F,
                          const at::opmath_type<T>* __restrict__ G, Chain<T> ch, int64_t C,
                          MatrixGrads<T> grads) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t red[kThreads];
  const int64_t entry = blockIdx.x;
  int q = 0;
  while (entry >= ch.first[q + 1]) ++q;
  const int64_t n = int64_t(ch.size[q + 1]) * ch.size[q + 1];
  const int64_t local = entry - ch.first[q], r = local / n, e = local % n;
  const acc_t* Fq = F + ch.off[q];
  const acc_t* Gq = G + ch.off[q];
  acc_t sum = acc_t(0);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sum += Gq[c * n + r] * Fq[c * n + e];
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) grads.mat[q][r * grads.ms0[q] + e * grads.ms1[q]] = T(red[0]);
}

template <typename T>
Chain<T> chain_of(const KtGeometry& g, at::TensorList matrices, int64_t C) {
  Chain<T> ch{};
  ch.m = int(g.chain.size()) - 1;
  int64_t off = 0, first = 0;
  for (int q = 0; q <= ch.m; ++q) ch.size[q] = int(g.chain[q]);
  for (int q = 0; q < ch.m; ++q) {
    const int64_t n = g.chain[q + 1] * g.chain[q + 1];
    ch.mat[q] = matrices[q].const_data_ptr<T>();
    ch.ms0[q] = matrices[q].stride(0);
    ch.ms1[q] = matrices[q].stride(1);
    ch.off[q] = off;
    ch.first[q] = first;
    off += C * n;
    first += n * n;
  }
  ch.first[ch.m] = first;
  return ch;
}

// Largest intermediate stage f_1 .. f_{m-1} (at least 1, so the scratch is never empty).
int64_t max_stage(const KtGeometry& g) {
  int64_t n = 1;
  for (size_t q = 1; q + 1 < g.chain.size(); ++q) n = std::max(n, g.chain[q] * g.chain[q]);
  return n;
}

void check_cuda(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(gpu::on_device(t.device()), op, ": ", name, " is on ", t.device(), "; this kernel takes CUDA tensors");
}

}  // namespace

at::Tensor kernel_transform_cuda(const at::Tensor& weight, at::TensorList matrices,
                                 at::IntArrayRef ks_chain, int64_t channels) {
  const char* op = "ofa_fast.kernel_transform";
  const KtGeometry g = kernel_transform_geometry(weight, matrices, ks_chain, channels, op);
  check_cuda(op, weight, "weight");
  const gpu::DeviceGuard guard(weight.device());
  const int64_t k = g.chain.back(), n_max = max_stage(g);
  at::Tensor out = at::empty({g.C, 1, k, k}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "ofa_fast_kernel_transform_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Chain<scalar_t> ch = chain_of<scalar_t>(g, matrices, g.C);
    at::Tensor stage = at::empty({g.C, 2, n_max}, weight.options().dtype(at::toOpMathType(weight.scalar_type())));
    const Planes<const scalar_t> w{weight.const_data_ptr<scalar_t>(), weight.stride(0), weight.stride(2), weight.stride(3)};
    OFA_CUDA_LAUNCH(unsigned(g.C), kThreads, 0, gpu::current_stream(), kt_forward_kernel<scalar_t>)(
        w, ch, stage.mutable_data_ptr<acc_t>(), n_max, out.mutable_data_ptr<scalar_t>());
    OFA_CUDA_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> kernel_transform_backward_cuda(const at::Tensor& grad,
                                                       const at::Tensor& weight,
                                                       at::TensorList matrices,
                                                       at::IntArrayRef ks_chain,
                                                       int64_t channels) {
  const char* op = "ofa_fast.kernel_transform_backward";
  const KtGeometry g = kernel_transform_geometry(weight, matrices, ks_chain, channels, op);
  const int64_t m = int64_t(g.chain.size()) - 1;
  kernel_transform_check_grad(grad, weight, g, op);
  check_cuda(op, weight, "weight");
  check_cuda(op, grad, "grad");
  TORCH_CHECK(grad.device() == weight.device(), op, ": grad is on ", grad.device(),
              " but weight is on ", weight.device(), "; both must be on the same device");
  const gpu::DeviceGuard guard(weight.device());
  at::Tensor gw = at::zeros(weight.sizes(), weight.options());
  std::vector<at::Tensor> result{gw};
  for (const at::Tensor& M : matrices) result.push_back(at::zeros(M.sizes(), M.options()));
  int64_t scratch = 0, entries = 0;
  for (int64_t q = 0; q < m; ++q) {
    const int64_t n = g.chain[q + 1] * g.chain[q + 1];
    scratch += g.C * n;
    entries += n * n;
  }
  TORCH_CHECK(entries <= INT_MAX, op, ": the transform matrices have ", entries,
              " entries in all; at most ", INT_MAX, " are supported");
  const int64_t n_max = max_stage(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "ofa_fast_kernel_transform_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const cudaStream_t stream = gpu::current_stream();
    const Chain<scalar_t> ch = chain_of<scalar_t>(g, matrices, g.C);
    const auto acc_options = weight.options().dtype(at::toOpMathType(weight.scalar_type()));
    at::Tensor F = at::empty({scratch}, acc_options);
    at::Tensor G = at::empty({scratch}, acc_options);
    at::Tensor stage = at::empty({g.C, 2, n_max}, acc_options);
    const Planes<const scalar_t> gp{grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(2), grad.stride(3)};
    const Planes<const scalar_t> w{weight.const_data_ptr<scalar_t>(), weight.stride(0), weight.stride(2), weight.stride(3)};
    const Planes<scalar_t> gwp{gw.mutable_data_ptr<scalar_t>(), gw.stride(0), gw.stride(2), gw.stride(3)};
    OFA_CUDA_LAUNCH(unsigned(g.C), kThreads, 0, stream, kt_backward_chain_kernel<scalar_t>)(
        gp, w, ch, F.mutable_data_ptr<acc_t>(), G.mutable_data_ptr<acc_t>(),
        stage.mutable_data_ptr<acc_t>(), n_max, gwp);
    OFA_CUDA_LAUNCH_CHECK();
    MatrixGrads<scalar_t> outs{};
    for (int64_t q = 0; q < m; ++q) {
      outs.mat[q] = result[q + 1].mutable_data_ptr<scalar_t>();
      outs.ms0[q] = result[q + 1].stride(0);
      outs.ms1[q] = result[q + 1].stride(1);
    }
    OFA_CUDA_LAUNCH(unsigned(entries), kThreads, 0, stream, kt_matrix_grad_kernel<scalar_t>)(
        F.const_data_ptr<acc_t>(), G.const_data_ptr<acc_t>(), ch, g.C, outs);
    OFA_CUDA_LAUNCH_CHECK();
  });
  return result;
}

#ifndef OFA_FAST_CUDA_EMULATION  // the emulator's tests call the functions directly
TORCH_LIBRARY_IMPL(ofa_fast, CUDA, m) {
  m.impl("kernel_transform", &kernel_transform_cuda);
  m.impl("kernel_transform_backward", &kernel_transform_backward_cuda);
}
#endif

}  // namespace ofa_fast

// Python bindings of the CUDA ops' host functions (csrc/*/*.cu), built against the CPU
// emulator (cuda_emulator.h) for tests/test_cuda_emulated.py: the ops take CPU tensors
// and run the CUDA kernels' device code on the CPU.
#include <dlfcn.h>
#include <torch/extension.h>

#include <array>
#include <tuple>
#include <vector>

#include "cuda_emulator.h"

#if OFA_FAST_EMU_ASM_SWITCH
// ofa_fast_emu_switch(save, to) (System V x86-64): push the callee-saved registers and
// the MXCSR / x87 control words, *save = rsp; rsp = to, pop them, return into `to`'s
// context.
asm(R"(
  .text
  .globl ofa_fast_emu_switch
  .hidden ofa_fast_emu_switch
  .type ofa_fast_emu_switch, @function
ofa_fast_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ofa_fast_emu_switch, .-ofa_fast_emu_switch
)");
#endif

namespace ofa_fast {
at::Tensor dwconv2d_cuda(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                         int64_t stride, int64_t dilation, int64_t padding);
at::Tensor dwconv2d_backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, int64_t kernel_size,
                                        int64_t stride, int64_t dilation, int64_t padding);
at::Tensor dwconv2d_backward_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& weight, int64_t kernel_size,
                                         int64_t stride, int64_t dilation, int64_t padding);
std::tuple<at::Tensor, at::Tensor> dwconv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    int64_t kernel_size, int64_t stride, int64_t dilation, int64_t padding,
    std::array<bool, 2> output_mask);
at::Tensor kernel_transform_cuda(const at::Tensor& weight, at::TensorList matrices,
                                 at::IntArrayRef ks_chain, int64_t channels);
std::vector<at::Tensor> kernel_transform_backward_cuda(const at::Tensor& grad,
                                                       const at::Tensor& weight,
                                                       at::TensorList matrices,
                                                       at::IntArrayRef ks_chain, int64_t channels);
}  // namespace ofa_fast

namespace {

// Kernels that break CUDA's rules, to show the emulator catches them.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x % 2 == 0) __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void early_exit_barrier_kernel(int* out) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void partial_warp_shuffle_kernel(float* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, float(threadIdx.x), 1);
}
// ... and one that keeps them: a block sum over shuffles and a barrier.
__global__ void block_sum_kernel(const float* in, float* out) {
  OFA_DYNAMIC_SHARED(float, red);
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += red[w];
    out[blockIdx.x] = s;
  }
}

void run_bad_kernel(const std::string& which, int threads) {
  std::vector<float> f(size_t(threads), 0.f);
  std::vector<int> i(size_t(threads), 0);
  if (which == "divergent_barrier")
    OFA_CUDA_LAUNCH(1, threads, 0, nullptr, divergent_barrier_kernel)(i.data());
  else if (which == "early_exit_barrier")
    OFA_CUDA_LAUNCH(1, threads, 0, nullptr, early_exit_barrier_kernel)(i.data());
  else if (which == "partial_warp_shuffle")
    OFA_CUDA_LAUNCH(1, threads, 0, nullptr, partial_warp_shuffle_kernel)(f.data());
  else if (which == "too_much_shared_memory")
    OFA_CUDA_LAUNCH(1, threads, 48 * 1024 + 4, nullptr, block_sum_kernel)(f.data(), f.data());
  else
    TORCH_CHECK(false, "no bad kernel named ", which);
}

at::Tensor block_sums(const at::Tensor& in, int64_t threads) {
  TORCH_CHECK(in.dtype() == at::kFloat && in.is_contiguous() && in.numel() % threads == 0);
  at::Tensor out = at::empty({in.numel() / threads}, in.options());
  OFA_CUDA_LAUNCH(unsigned(out.numel()), unsigned(threads), size_t(threads / 32) * sizeof(float),
                  nullptr, block_sum_kernel)(in.const_data_ptr<float>(), out.mutable_data_ptr<float>());
  return out;
}

// The launches since the last call: (kernel's offset in this library, grid, block,
// dynamic shared memory bytes). The tests name the kernels from the library's symbols.
std::vector<std::tuple<int64_t, std::array<int64_t, 3>, std::array<int64_t, 3>, int64_t>> take_launches() {
  std::vector<std::tuple<int64_t, std::array<int64_t, 3>, std::array<int64_t, 3>, int64_t>> out;
  auto& log = ofa_fast_emu::state().log;
  for (const auto& r : log) {
    Dl_info info{};
    TORCH_CHECK(dladdr(r.fn, &info) != 0, "dladdr found no library for a kernel");
    out.emplace_back(int64_t(reinterpret_cast<uintptr_t>(r.fn) - reinterpret_cast<uintptr_t>(info.dli_fbase)),
                     std::array<int64_t, 3>{r.grid.x, r.grid.y, r.grid.z},
                     std::array<int64_t, 3>{r.block.x, r.block.y, r.block.z}, int64_t(r.smem));
  }
  log.clear();
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dwconv2d", &ofa_fast::dwconv2d_cuda);
  m.def("dwconv2d_backward_input", &ofa_fast::dwconv2d_backward_input_cuda);
  m.def("dwconv2d_backward_weight", &ofa_fast::dwconv2d_backward_weight_cuda);
  m.def("dwconv2d_backward", &ofa_fast::dwconv2d_backward_cuda);
  m.def("kernel_transform", [](const at::Tensor& weight, const std::vector<at::Tensor>& matrices,
                               const std::vector<int64_t>& ks_chain, int64_t channels) {
    return ofa_fast::kernel_transform_cuda(weight, matrices, ks_chain, channels);
  });
  m.def("kernel_transform_backward",
        [](const at::Tensor& grad, const at::Tensor& weight, const std::vector<at::Tensor>& matrices,
           const std::vector<int64_t>& ks_chain, int64_t channels) {
          return ofa_fast::kernel_transform_backward_cuda(grad, weight, matrices, ks_chain, channels);
        });
  m.def("set_sm_count", [](int64_t n) {
    TORCH_CHECK(n >= 1 && n <= 1024, "sm count ", n, " (1..1024)");
    ofa_fast_emu::state().sm_count = int(n);
  });
  m.def("set_reverse", [](bool reverse) { ofa_fast_emu::state().reverse = reverse; });
  m.def("take_launches", &take_launches);
  m.def("block_sums", &block_sums);
  m.def("run_bad_kernel", &run_bad_kernel);
}

// The CUDA runtime as ofa_fast's .cu sources use it, behind one small surface: the
// current stream, the SM count, the device guard, kernel launches and dynamic shared
// memory. Written this way (OFA_CUDA_LAUNCH(grid, block, smem, stream, kernel)(args)
// for kernel<<<grid, block, smem, stream>>>(args)), the same sources also build as plain
// C++ against the CPU emulator in tests/cuda_emulation/, which defines
// OFA_FAST_CUDA_EMULATION, is included first and runs their device code in the tests
// on machines without a GPU.
#pragma once

#if defined(OFA_FAST_CUDA_EMULATION)
#ifndef OFA_FAST_CUDA_EMULATOR_INCLUDED
#error "OFA_FAST_CUDA_EMULATION: include tests/cuda_emulation/cuda_emulator.h before the .cu source"
#endif
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace ofa_fast {
namespace gpu {
inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
inline bool on_device(const c10::Device& d) { return d.is_cuda(); }
using DeviceGuard = c10::cuda::CUDAGuard;
}  // namespace gpu
}  // namespace ofa_fast

#define OFA_CUDA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define OFA_CUDA_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define OFA_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

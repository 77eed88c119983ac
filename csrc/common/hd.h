// Host/device qualifiers for index math shared by the CPU (C++) and CUDA kernels.
// Everything written with OFA_HD compiles for both, so the CPU tests exercise the
// very arithmetic the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define OFA_HD __host__ __device__ __forceinline__
#else
#define OFA_HD inline
#endif

namespace ofa_fast {

// Floor and ceiling division for a positive divisor and any sign of the dividend
// (C++ '/' truncates towards zero, which is wrong for negative coordinates).
OFA_HD int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (q * b > a) ? q - 1 : q;
}
OFA_HD int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

}  // namespace ofa_fast

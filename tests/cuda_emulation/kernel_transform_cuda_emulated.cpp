// csrc/kernel_transform/kernel_transform_cuda.cu compiled as C++ against the CPU emulator.
#include "cuda_emulator.h"
#include "kernel_transform/kernel_transform_cuda.cu"

// csrc/dwconv/dwconv_cuda.cu compiled as C++ against the CPU emulator.
#include "cuda_emulator.h"
#include "dwconv/dwconv_cuda.cu"

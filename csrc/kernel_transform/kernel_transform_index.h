// Index math of OFA's kernel-transform chain, shared by the CPU and CUDA kernels.
//
// The chain walks down the sorted kernel-size list from the max size K to the
// active size k: sizes ks[0] = K > ks[1] > ... > ks[m] = k. Step q crops the
// ks[q] x ks[q] filter of every channel to its centre ks[q+1] x ks[q+1] window,
// flattens it to ks[q+1]^2 values and multiplies by the transposed matrix M_q
// (OFA's "<ks[q]>to<ks[q+1]>_matrix", shape [ks[q+1]^2, ks[q+1]^2]):
//   f_{q+1}[c, r] = sum_e crop(f_q)[c, e] * M_q[r, e].
// f_0 is the max weight itself, read in place through its strides.
#pragma once

#include "../common/hd.h"

namespace ofa_fast {
namespace kernel_transform {

// The chain never has more steps than this (kernel sizes 3, 5, 7, ... up to 31
// give at most 14 steps); bounds the host and device scratch arrays.
constexpr int kMaxChain = 16;

// Row-major position inside the src x src grid of element e of its centre
// dst x dst crop (e in [0, dst^2)).
OFA_HD int crop_flat_index(int e, int src, int dst) {
  const int off = src / 2 - dst / 2;
  return (e / dst + off) * src + (e % dst + off);
}

}  // namespace kernel_transform
}  // namespace ofa_fast

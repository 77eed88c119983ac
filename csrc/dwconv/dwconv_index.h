// Index math of the elastic depthwise convolution, shared by every kernel
// (CPU C++, CUDA). Conventions:
//   input  x[N, C, H, W], output y[N, C, OH, OW], filter taps (i, j) in [0, k)^2;
//   the active k x k filter is the centre crop of the max K x K kernel, starting at
//   crop_start(K, k) in both spatial dims;
//   output o reads input o * s - p + t * d through tap t (per spatial dim).
#pragma once

#include "../common/hd.h"

namespace ofa_fast {
namespace dwconv {

// Largest active kernel size the kernels take (they keep per-tap tables of
// kMaxKernelSize^2 entries); OFA's largest is 7.
constexpr int kMaxKernelSize = 31;

// Output extent of one spatial dim; callers check that it is >= 1 first
// (conv_out_size_valid), since C's truncating division hides empty outputs.
OFA_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p) {
  return floor_div(in + 2 * p - d * (k - 1) - 1, s) + 1;
}
OFA_HD bool conv_out_size_valid(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p) {
  return in + 2 * p - d * (k - 1) - 1 >= 0;
}

// First row/column of the active k x k window inside the max K x K kernel
// (OFA's sub_filter_start_end).
OFA_HD int64_t crop_start(int64_t K, int64_t k) { return K / 2 - k / 2; }

// Offset of tap t's input coordinate from o * s.
OFA_HD int64_t tap_offset(int64_t t, int64_t d, int64_t p) { return t * d - p; }

// Input coordinate that output coordinate o reads through tap t.
OFA_HD int64_t tap_input(int64_t o, int64_t t, int64_t s, int64_t d, int64_t p) {
  return o * s + tap_offset(t, d, p);
}

// Input coordinates (padding included) that out_size outputs read: [0, this).
OFA_HD int64_t input_extent(int64_t out_size, int64_t k, int64_t s, int64_t d) {
  return (out_size - 1) * s + (k - 1) * d + 1;
}

// Backward to the input: the output coordinate whose tap t reads input coordinate i,
// or -1 when there is none (i + p - t * d not a multiple of s, or out of range).
OFA_HD int64_t tap_output(int64_t i, int64_t t, int64_t s, int64_t d, int64_t p,
                          int64_t out_size) {
  const int64_t q = i - tap_offset(t, d, p);
  if (q < 0 || q % s != 0) return -1;
  const int64_t o = q / s;
  return o < out_size ? o : -1;
}

// Input coordinates of one phase b (i = b + s * u) all share the same set of taps:
// those t with (b + p - t * d) divisible by s. For such a tap, output = u + this.
// Only meaningful when tap_matches_phase(b, t, ...) is true.
OFA_HD bool tap_matches_phase(int64_t b, int64_t t, int64_t s, int64_t d, int64_t p) {
  const int64_t q = b - tap_offset(t, d, p);
  return q - floor_div(q, s) * s == 0;
}
OFA_HD int64_t phase_tap_output_offset(int64_t b, int64_t t, int64_t s, int64_t d, int64_t p) {
  return floor_div(b - tap_offset(t, d, p), s);
}

// Number of input coordinates of phase b in an extent of n: b, b + s, ... < n.
OFA_HD int64_t phase_count(int64_t n, int64_t b, int64_t s) {
  return n > b ? (n - b + s - 1) / s : 0;
}

// Stride 1 only: the gradient of the input is the correlation of grad_out (extent
// out_size) with the flipped filter (tap t -> k - 1 - t) at this padding, which gives
// back the input extent; negative when p > (k - 1) * d.
OFA_HD int64_t flipped_padding(int64_t k, int64_t d, int64_t p) { return (k - 1) * d - p; }

}  // namespace dwconv
}  // namespace ofa_fast

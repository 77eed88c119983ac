// Elastic depthwise convolution: argument checks shared by every device, and the
// per-device implementations registered with the dispatcher.
//
//   dwconv2d(input [N, C, H, W], weight [C_max, 1, K, K], k, s, d, p) -> [N, C, OH, OW]
//
// The filter of channel c is the centre k x k crop of weight[c] (c < C <= C_max),
// read in place. The output keeps the input's memory format (NCHW or channels_last).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

namespace ofa_fast {

// Everything a kernel needs to know about one call, validated.
struct DwGeometry {
  int64_t N, C, H, W;  // input, active channels
  int64_t OH, OW;      // output
  int64_t Cw, K;       // max channels and max kernel size of the weight
  int64_t k, s, d, p;  // active kernel size, stride, dilation, padding
  int64_t crop;        // first row/column of the active window in the K x K kernel
  bool channels_last;  // memory format the kernels work in (the input's)
};

// Checks every argument and raises a clear error naming the bad value and what is
// allowed. `op` names the calling op in the messages.
DwGeometry dwconv_geometry(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                           int64_t stride, int64_t dilation, int64_t padding, const char* op);

// The memory format the op computes in: the input's (channels_last when the input
// is channels_last contiguous and not plain contiguous; otherwise what torch
// suggests for a non-contiguous input).
bool dwconv_use_channels_last(const at::Tensor& input);

// Checks grad_output against the forward's input (device, dtype) and geometry (shape).
void dwconv_check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                              const DwGeometry& g, const char* op);

at::Tensor dwconv2d_cpu(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                        int64_t stride, int64_t dilation, int64_t padding);
at::Tensor dwconv2d_backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight, int64_t kernel_size,
                                       int64_t stride, int64_t dilation, int64_t padding);
std::tuple<at::Tensor, at::Tensor> dwconv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    int64_t kernel_size, int64_t stride, int64_t dilation, int64_t padding,
    std::array<bool, 2> output_mask);
at::Tensor dwconv2d_backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, int64_t kernel_size,
                                        int64_t stride, int64_t dilation, int64_t padding);

}  // namespace ofa_fast

// Channel-sliced GEMM ops: OFA's DynamicLinear and 1x1 DynamicConv2d without the copy.
//
//   sliced_linear(input [M, in], weight [out_max, in_max], bias [out_max]?, out)
//       = input @ weight[:out, :in]^T + bias[:out]                        -> [M, out]
//   pointwise_conv2d(input [N, in, H, W], weight [out_max, in_max, 1, 1], bias?, out)
//       = the same product per pixel                                     -> [N, out, H, W]
//
// The active block weight[:out, :in] is a strided view of the max weight: a GEMM reads
// it with the max weight's row stride as its leading dimension, so no sliced copy is
// ever made. Backward ops return the gradient of the FULL max weight (and bias), zero
// outside the active block, as autograd through OFA's slice would. The GEMMs are ATen's
// (MKL/oneDNN on the CPU, cuBLAS on CUDA), so one implementation serves both devices.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace ofa_fast {

at::Tensor sliced_linear(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t out_features);

// output_mask: (grad_input, grad_weight, grad_bias); a masked-off gradient is empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sliced_linear_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask);

at::Tensor pointwise_conv2d(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t out_channels);

std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask);

// Inference: act(conv + bias) with the activation ("none", "relu", "relu6", "h_swish")
// applied block by block right after each GEMM, while the block is in cache.
at::Tensor pointwise_conv2d_act(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t out_channels,
                                c10::string_view activation);

}  // namespace ofa_fast

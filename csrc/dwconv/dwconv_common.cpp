// Argument checks and schemas of the elastic depthwise convolution, shared by the
// CPU and CUDA implementations.
#include "dwconv.h"

#include <torch/library.h>

#include <algorithm>

#include "common/memory_format.h"
#include "dwconv_index.h"

namespace ofa_fast {

bool dwconv_use_channels_last(const at::Tensor& input) {
  return kept_memory_format(input) == at::MemoryFormat::ChannelsLast;
}

DwGeometry dwconv_geometry(const at::Tensor& input, const at::Tensor& weight, int64_t k,
                           int64_t s, int64_t d, int64_t p, const char* op) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got a ", input.dim(),
              "-D tensor of shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == weight.size(3),
              op, ": weight must be [C_max, 1, K, K] (a depthwise max kernel), got shape ",
              weight.sizes());
  TORCH_CHECK(input.device() == weight.device(), op, ": input is on ", input.device(),
              " but weight is on ", weight.device(), "; both must be on the same device");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), op, ": input dtype ",
              input.scalar_type(), " differs from weight dtype ", weight.scalar_type(),
              "; both must have the same dtype");
  DwGeometry g;
  g.N = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  g.Cw = weight.size(0);
  g.K = weight.size(2);
  g.k = k;
  g.s = s;
  g.d = d;
  g.p = p;
  TORCH_CHECK(g.K % 2 == 1, op, ": the max kernel size K = ", g.K, " is even; it must be odd");
  const int64_t kmax = std::min<int64_t>(g.K, dwconv::kMaxKernelSize);
  TORCH_CHECK(k >= 1 && k % 2 == 1 && k <= kmax, op, ": kernel_size = ", k,
              " is not allowed; it must be odd and in [1, ", kmax,
              "] (at most the weight's K = ", g.K, ", and at most ", dwconv::kMaxKernelSize, ")");
  TORCH_CHECK(g.C >= 1 && g.C <= g.Cw, op, ": input has ", g.C,
              " channels; it must have between 1 and ", g.Cw, " (the weight's max channels)");
  TORCH_CHECK(s >= 1, op, ": stride = ", s, " is not allowed; it must be >= 1");
  TORCH_CHECK(d >= 1, op, ": dilation = ", d, " is not allowed; it must be >= 1");
  TORCH_CHECK(p >= 0, op, ": padding = ", p, " is not allowed; it must be >= 0");
  TORCH_CHECK(dwconv::conv_out_size_valid(g.H, k, s, d, p) &&
                  dwconv::conv_out_size_valid(g.W, k, s, d, p),
              op, ": input of ", g.H, "x", g.W, " is too small for kernel_size ", k,
              " with dilation ", d, " and padding ", p, ": it must be at least ",
              d * (k - 1) + 1 - 2 * p, " in each spatial dim");
  g.OH = dwconv::conv_out_size(g.H, k, s, d, p);
  g.OW = dwconv::conv_out_size(g.W, k, s, d, p);
  g.crop = dwconv::crop_start(g.K, k);
  g.channels_last = dwconv_use_channels_last(input);
  return g;
}

void dwconv_check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                              const DwGeometry& g, const char* op) {
  TORCH_CHECK(grad_output.device() == input.device(), op, ": grad_output is on ",
              grad_output.device(), " but input is on ", input.device(),
              "; both must be on the same device");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype ",
              grad_output.scalar_type(), " differs from input dtype ", input.scalar_type());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.N && grad_output.size(1) == g.C &&
                  grad_output.size(2) == g.OH && grad_output.size(3) == g.OW,
              op, ": grad_output has shape ", grad_output.sizes(), "; expected [", g.N, ", ", g.C,
              ", ", g.OH, ", ", g.OW, "]");
}

// Schemas: next to their kernels; TORCH_LIBRARY(ofa_fast) in csrc/ofa_fast.cpp calls this.
void register_dwconv_schemas(torch::Library& m) {
  // Forward: depthwise conv of input with the centre kernel_size crop of weight[:C].
  m.def("dwconv2d(Tensor input, Tensor weight, int kernel_size, int stride, int dilation, "
        "int padding) -> Tensor");
  // Gradient of the input (input is read for its shape and memory format only).
  m.def("dwconv2d_backward_input(Tensor grad_output, Tensor input, Tensor weight, "
        "int kernel_size, int stride, int dilation, int padding) -> Tensor");
  // Gradient of the full max weight: zero outside the active crop of weight[:C].
  m.def("dwconv2d_backward_weight(Tensor grad_output, Tensor input, Tensor weight, "
        "int kernel_size, int stride, int dilation, int padding) -> Tensor");
  // Both gradients (on the CPU in one pass over grad_output); a masked-off one comes back
  // as an empty tensor.
  m.def("dwconv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int kernel_size, "
        "int stride, int dilation, int padding, bool[2] output_mask) -> (Tensor, Tensor)");
}

}  // namespace ofa_fast

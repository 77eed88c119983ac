// Channel-sliced linear and pointwise conv (see sliced.h): argument checks, schemas and
// the kernels, which are GEMMs on strided views (ATen's, so CPU and CUDA share them).
#include "sliced/sliced.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace ofa_fast {
namespace {

// weight[:out, :in] of a [out_max, in_max] matrix (or the [.., .., 1, 1] conv weight):
// a view, strides untouched.
at::Tensor active_block(const at::Tensor& weight, int64_t out, int64_t in) {
  at::Tensor w = weight.dim() == 4 ? weight.select(3, 0).select(2, 0) : weight;
  return w.narrow(0, 0, out).narrow(1, 0, in);
}

void check_common(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, int64_t in, int64_t out,
                  const char* op) {
  TORCH_CHECK(input.device() == weight.device(), op, ": input is on ", input.device(),
              " but weight is on ", weight.device(), "; both must be on the same device");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), op, ": input dtype ",
              input.scalar_type(), " differs from weight dtype ", weight.scalar_type());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": dtype ", input.scalar_type(),
              " is not allowed; use a floating-point dtype");
  const int64_t out_max = weight.size(0), in_max = weight.size(1);
  TORCH_CHECK(in >= 1 && in <= in_max, op, ": input has ", in, " features/channels; it must have "
              "between 1 and ", in_max, " (the weight's max)");
  TORCH_CHECK(out >= 1 && out <= out_max, op, ": out = ", out, " is not allowed; it must be "
              "between 1 and ", out_max, " (the weight's max)");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_max, op, ": bias has shape ",
                bias->sizes(), "; expected [", out_max, "]");
    TORCH_CHECK(bias->device() == weight.device() && bias->scalar_type() == weight.scalar_type(),
                op, ": bias (", bias->scalar_type(), " on ", bias->device(),
                ") must match the weight (", weight.scalar_type(), " on ", weight.device(), ")");
  }
}

void check_linear(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, int64_t out, const char* op) {
  TORCH_CHECK(input.dim() == 2, op, ": input must be 2-D [M, in], got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out_max, in_max], got shape ",
              weight.sizes());
  check_common(input, weight, bias, input.size(1), out, op);
}

void check_pointwise(const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias, int64_t out, const char* op) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1, op,
              ": weight must be [out_max, in_max, 1, 1] (a 1x1 conv weight), got shape ",
              weight.sizes());
  check_common(input, weight, bias, input.size(1), out, op);
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                       at::IntArrayRef expected, const char* op) {
  TORCH_CHECK(grad_output.sizes() == expected, op, ": grad_output has shape ",
              grad_output.sizes(), "; expected ", expected);
  TORCH_CHECK(grad_output.device() == input.device() &&
                  grad_output.scalar_type() == input.scalar_type(),
              op, ": grad_output (", grad_output.scalar_type(), " on ", grad_output.device(),
              ") must match the input (", input.scalar_type(), " on ", input.device(), ")");
}

// The max-shaped gradient, zero outside [:out, :in]; `block` is its active view, which
// the GEMMs write through its strides.
// Only the complement of the block is zeroed (the GEMM writes the block): for a full-size
// block nothing is, which saves a pass over the largest gradients.
std::pair<at::Tensor, at::Tensor> full_weight_grad(const at::Tensor& weight, int64_t out,
                                                   int64_t in) {
  at::Tensor gw = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor rows = gw.dim() == 4 ? gw.select(3, 0).select(2, 0) : gw;
  if (out < rows.size(0)) rows.narrow(0, out, rows.size(0) - out).zero_();
  if (in < rows.size(1)) rows.narrow(0, 0, out).narrow(1, in, rows.size(1) - in).zero_();
  return {gw, active_block(gw, out, in)};
}

at::Tensor full_bias_grad(const at::Tensor& weight, const at::Tensor& rows_or_reduced) {
  at::Tensor gb = at::zeros({weight.size(0)}, weight.options());
  gb.narrow(0, 0, rows_or_reduced.size(0)).copy_(rows_or_reduced);
  return gb;
}

// ---- pointwise conv layouts --------------------------------------------------------
// channels_last (or 1x1 images): pixels are the rows of one [N*H*W, C] matrix, so the
// conv is one GEMM. NCHW: image n is a [C, H*W] matrix, one GEMM per image.

// The output keeps the input's format; a strided view (say every other pixel) counts as
// channels_last when its channel stride is the smallest. ofa_fast/ops/linear.py
// (pointwise_memory_format) mirrors this for the fake kernels.
at::MemoryFormat format_of(const at::Tensor& x) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return x.stride(1) <= std::min(x.stride(2), x.stride(3)) ? at::MemoryFormat::ChannelsLast
                                                           : at::MemoryFormat::Contiguous;
}

bool rows_layout(const at::Tensor& x, at::MemoryFormat fmt) {
  return fmt == at::MemoryFormat::ChannelsLast || x.size(2) * x.size(3) == 1;
}

// NCHW batches of tiny images (2x2, 3x3: the last stages of a supernet on small inputs)
// run as one GEMM over the batch in rows layout, between two transposing copies, instead
// of one thin GEMM ([C, H*W] with a handful of columns) per image, whose call overhead
// dominates. From 4x4 on, one batched GEMM on the NCHW images themselves (batched_nchw)
// beats the copies (at batch 64, 6x6: 2.3x forward).
constexpr int64_t kSmallImagePixels = 16;

// Outputs per image below which the NCHW GEMMs run as one batched GEMM (one call, the
// weight shared by every image: a stride-0 batch) rather than one call per image; above
// it the per-image GEMMs run the bias / activation epilogue while the image is in cache.
constexpr int64_t kBlock = int64_t{1} << 16;

bool batched_nchw(int64_t channels, int64_t pixels) { return channels * pixels < kBlock; }

// [N, C, H, W] NCHW-contiguous -> [N, C, H*W] (a view)
at::Tensor images_of(const at::Tensor& t) {
  return t.view({t.size(0), t.size(1), t.size(2) * t.size(3)});
}

bool small_nchw_batch(const at::Tensor& x, at::MemoryFormat fmt) {
  // (one channel: both layouts are the same strides, nothing to gain)
  return fmt == at::MemoryFormat::Contiguous && x.size(0) > 1 && x.size(1) > 1 &&
         x.size(2) * x.size(3) < kSmallImagePixels;
}

// [N, C, H, W] in rows layout -> its [N*H*W, C] matrix (a view)
at::Tensor rows_of(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).view({t.size(0) * t.size(2) * t.size(3), t.size(1)});
}

// image n of an NCHW-contiguous [N, C, H, W] -> its [C, H*W] matrix (a view)
at::Tensor image_of(const at::Tensor& t, int64_t n) {
  return t.select(0, n).view({t.size(1), t.size(2) * t.size(3)});
}

}  // namespace

at::Tensor sliced_linear(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t out_features) {
  check_linear(input, weight, bias, out_features, "ofa_fast.sliced_linear");
  const at::Tensor w = active_block(weight, out_features, input.size(1));
  if (bias.has_value()) return at::addmm(bias->narrow(0, 0, out_features), input, w.t());
  return at::mm(input, w.t());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sliced_linear_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  const char* op = "ofa_fast.sliced_linear_backward";
  TORCH_CHECK(grad_output.dim() == 2, op, ": grad_output must be 2-D, got shape ",
              grad_output.sizes());
  const int64_t out = grad_output.size(1), in = input.size(1);
  check_linear(input, weight, std::nullopt, out, op);
  check_grad_output(grad_output, input, {input.size(0), out}, op);
  const at::Tensor w = active_block(weight, out, in);
  at::Tensor gx, gw, gb;
  if (output_mask[0]) gx = at::mm(grad_output, w);
  else gx = input.new_empty({0});
  if (output_mask[1]) {
    at::Tensor block;
    std::tie(gw, block) = full_weight_grad(weight, out, in);
    at::mm_out(block, grad_output.t(), input);
  } else {
    gw = weight.new_empty({0});
  }
  gb = output_mask[2] ? full_bias_grad(weight, grad_output.sum(0)) : weight.new_empty({0});
  return {gx, gw, gb};
}

namespace {

void apply_activation_(at::Tensor& t, c10::string_view act) {
  if (act == "relu") at::relu_(t);
  else if (act == "relu6") at::clamp_(t, 0, 6);
  else if (act == "h_swish") at::hardswish_(t);
}

template <typename T>
inline T activate(int kind, T z) {
  if (kind == 1) return z > T(0) ? z : T(0);
  if (kind == 2) return std::min(std::max(z, T(0)), T(6));
  if (kind == 3) return z * std::min(std::max(z + T(3), T(0)), T(6)) / T(6);
  return z;
}

// y[n, c, :] = act(y[n, c, :] + bias[c]) over NCHW planes [b, e), one loop per kind so the
// inner loop vectorizes
template <typename T, int Kind>
void bias_act_planes(T* y, const T* bias, int64_t C, int64_t P, int64_t b, int64_t e) {
  for (int64_t q = b; q < e; ++q) {
    const T add = bias != nullptr ? bias[q % C] : T(0);
    T* yp = y + q * P;
    for (int64_t i = 0; i < P; ++i) yp[i] = activate<T>(Kind, yp[i] + add);
  }
}

// The epilogue of the NCHW GEMMs on the CPU: bias and activation in one pass over y
// (instead of copying the broadcast bias into every image before its GEMM, then an
// activation pass). Elsewhere: the same math with ATen ops.
void bias_act_(at::Tensor& y, const std::optional<at::Tensor>& bias, int64_t out,
               c10::string_view act) {
  const int kind = act == "relu" ? 1 : act == "relu6" ? 2 : act == "h_swish" ? 3 : 0;
  if (!y.device().is_cpu() || !y.is_contiguous()) {
    if (bias.has_value()) y.add_(bias->narrow(0, 0, out).view({1, out, 1, 1}));
    apply_activation_(y, act);
    return;
  }
  const at::Tensor b = bias.has_value() ? bias->narrow(0, 0, out).contiguous() : at::Tensor();
  const int64_t P = y.size(2) * y.size(3), planes = y.size(0) * out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "bias_act", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(P, 1)),
                     [&](int64_t lo, int64_t hi) {
      switch (kind) {
        case 1: bias_act_planes<scalar_t, 1>(yp, bp, out, P, lo, hi); break;
        case 2: bias_act_planes<scalar_t, 2>(yp, bp, out, P, lo, hi); break;
        case 3: bias_act_planes<scalar_t, 3>(yp, bp, out, P, lo, hi); break;
        default: bias_act_planes<scalar_t, 0>(yp, bp, out, P, lo, hi); break;
      }
    });
  });
}

// The forward of both ops: with an activation, it runs on each GEMM's output block
// (an image, or a chunk of pixel rows) while the block is still in cache.
at::Tensor pointwise_forward(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t out_channels,
                             c10::string_view activation, const char* op) {
  TORCH_CHECK(activation == "none" || activation == "relu" || activation == "relu6" ||
                  activation == "h_swish",
              op, ": activation '", activation, "' is not allowed; it must be one of none, relu, "
              "relu6, h_swish");
  check_pointwise(input, weight, bias, out_channels, op);
  const at::MemoryFormat fmt = format_of(input);
  if (small_nchw_batch(input, fmt) && !rows_layout(input, fmt))
    return pointwise_forward(input.contiguous(at::MemoryFormat::ChannelsLast), weight, bias,
                             out_channels, activation, op)
        .contiguous(at::MemoryFormat::Contiguous);
  const at::Tensor x = input.contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor w = active_block(weight, out_channels, C);
  at::Tensor y = at::empty({N, out_channels, H, W}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  // Blocks of at least ~64K values: below that the whole output stays in cache anyway,
  // and one activation pass costs fewer thread launches than one per block.
  const bool blocked = activation != "none" && y.numel() > 2 * kBlock;
  if (rows_layout(x, fmt)) {
    const at::Tensor x2 = rows_of(x);
    at::Tensor y2 = rows_of(y);
    const int64_t rows = x2.size(0);
    const int64_t chunk = blocked ? std::max<int64_t>(64, kBlock / std::max<int64_t>(1, out_channels))
                                  : rows;
    for (int64_t r = 0; r < rows; r += chunk) {
      const int64_t n = std::min(chunk, rows - r);
      at::Tensor yc = y2.narrow(0, r, n);
      if (bias.has_value()) at::addmm_out(yc, bias->narrow(0, 0, out_channels), x2.narrow(0, r, n), w.t());
      else at::mm_out(yc, x2.narrow(0, r, n), w.t());
      apply_activation_(yc, activation);
    }
    return y;
  }
  // NCHW: the GEMMs, then bias + activation in one pass (per image while it is in cache
  // when images are big)
  const bool epilogue = bias.has_value() || activation != "none";
  if (batched_nchw(out_channels, H * W)) {
    at::Tensor y3 = images_of(y);
    at::bmm_out(y3, w.unsqueeze(0).expand({N, out_channels, C}), images_of(x));
    if (epilogue) bias_act_(y, bias, out_channels, activation);
    return y;
  }
  for (int64_t n = 0; n < N; ++n) {
    at::Tensor yn = image_of(y, n);
    at::mm_out(yn, w, image_of(x, n));
    if (epilogue) {
      at::Tensor y4 = y.narrow(0, n, 1);
      bias_act_(y4, bias, out_channels, activation);
    }
  }
  return y;
}

}  // namespace

at::Tensor pointwise_conv2d_act(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t out_channels,
                                c10::string_view activation) {
  return pointwise_forward(input, weight, bias, out_channels, activation,
                           "ofa_fast.pointwise_conv2d_act");
}

at::Tensor pointwise_conv2d(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t out_channels) {
  return pointwise_forward(input, weight, bias, out_channels, "none", "ofa_fast.pointwise_conv2d");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  const char* op = "ofa_fast.pointwise_conv2d_backward";
  TORCH_CHECK(grad_output.dim() == 4, op, ": grad_output must be 4-D, got shape ",
              grad_output.sizes());
  const int64_t out = grad_output.size(1);
  check_pointwise(input, weight, std::nullopt, out, op);
  check_grad_output(grad_output, input,
                    {input.size(0), out, input.size(2), input.size(3)}, op);
  const at::MemoryFormat fmt = format_of(input);
  if (small_nchw_batch(input, fmt) && !rows_layout(input, fmt)) {
    constexpr auto cl = at::MemoryFormat::ChannelsLast;
    auto grads = pointwise_conv2d_backward(grad_output.contiguous(cl), input.contiguous(cl),
                                           weight, output_mask);
    if (output_mask[0])
      std::get<0>(grads) = std::get<0>(grads).contiguous(at::MemoryFormat::Contiguous);
    return grads;
  }
  const at::Tensor x = input.contiguous(fmt);
  const at::Tensor gy = grad_output.contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor w = active_block(weight, out, C);
  at::Tensor gx = output_mask[0] ? at::empty(x.sizes(), x.options().memory_format(fmt))
                                 : input.new_empty({0});
  at::Tensor gw = weight.new_empty({0}), block;
  if (output_mask[1]) std::tie(gw, block) = full_weight_grad(weight, out, C);
  at::Tensor gb = weight.new_empty({0});
  if (output_mask[2]) gb = full_bias_grad(weight, gy.sum({0, 2, 3}));
  if (N * H * W == 0) {
    if (output_mask[0]) gx.zero_();
    return {gx, gw, gb};
  }
  if (rows_layout(x, fmt)) {
    const at::Tensor gy2 = rows_of(gy), x2 = rows_of(x);
    if (output_mask[0]) {
      at::Tensor gx2 = rows_of(gx);
      at::mm_out(gx2, gy2, w);
    }
    if (output_mask[1]) at::mm_out(block, gy2.t(), x2);
    return {gx, gw, gb};
  }
  // NCHW. Small images: the input gradient as one batched GEMM; the weight gradient as
  // the sum of a batched GEMM's per-image products while those are no bigger than the
  // tensors they come from (batch 64: 1.4x at 6x6 and 12x12); else one call per image.
  const int64_t P = H * W;
  const bool batched_gx = output_mask[0] && batched_nchw(C, P);
  const bool batched_gw = output_mask[1] && out * C <= P * (out + C);
  if (batched_gx) {
    at::Tensor gx3 = images_of(gx);
    at::bmm_out(gx3, w.t().unsqueeze(0).expand({N, C, out}), images_of(gy));
  }
  if (batched_gw) at::sum_out(block, at::bmm(images_of(gy), images_of(x).transpose(1, 2)), 0);
  for (int64_t n = 0; n < N; ++n) {
    const at::Tensor gyn = image_of(gy, n);
    if (output_mask[0] && !batched_gx) {
      at::Tensor gxn = image_of(gx, n);
      at::mm_out(gxn, w.t(), gyn);
    }
    if (output_mask[1] && !batched_gw) {
      if (n == 0) at::mm_out(block, gyn, image_of(x, n).t());
      else block.addmm_(gyn, image_of(x, n).t());
    }
  }
  return {gx, gw, gb};
}

// Schemas: next to their kernels; TORCH_LIBRARY(ofa_fast) in csrc/ofa_fast.cpp calls this.
void register_sliced_schemas(torch::Library& m) {
  m.def("sliced_linear(Tensor input, Tensor weight, Tensor? bias, SymInt out_features) -> Tensor");
  m.def("sliced_linear_backward(Tensor grad_output, Tensor input, Tensor weight, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("pointwise_conv2d(Tensor input, Tensor weight, Tensor? bias, SymInt out_channels) -> Tensor");
  m.def("pointwise_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // inference only (no autograd): the eval-mode conv + folded BN + activation
  m.def("pointwise_conv2d_act(Tensor input, Tensor weight, Tensor? bias, SymInt out_channels, "
        "str activation) -> Tensor");
}

}  // namespace ofa_fast

// The same device-generic GEMM code serves both keys.
TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("sliced_linear", &ofa_fast::sliced_linear);
  m.impl("sliced_linear_backward", &ofa_fast::sliced_linear_backward);
  m.impl("pointwise_conv2d", &ofa_fast::pointwise_conv2d);
  m.impl("pointwise_conv2d_backward", &ofa_fast::pointwise_conv2d_backward);
  m.impl("pointwise_conv2d_act", &ofa_fast::pointwise_conv2d_act);
}

#ifdef OFA_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(ofa_fast, CUDA, m) {
  m.impl("sliced_linear", &ofa_fast::sliced_linear);
  m.impl("sliced_linear_backward", &ofa_fast::sliced_linear_backward);
  m.impl("pointwise_conv2d", &ofa_fast::pointwise_conv2d);
  m.impl("pointwise_conv2d_backward", &ofa_fast::pointwise_conv2d_backward);
  m.impl("pointwise_conv2d_act", &ofa_fast::pointwise_conv2d_act);
}
#endif

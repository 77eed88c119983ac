// Autograd of the compiled ops, in C++ (the Autograd dispatch key): a backward through
// Python costs ~0.1 ms per op call, a noticeable share of a small layer's step. Each
// forward redispatches below autograd to the CPU/CUDA kernel and saves what its
// backward op needs; each backward calls the op's (fused) backward op with the mask of
// gradients autograd asks for. The Triton ops keep their Python autograd
// (ofa_fast/ops/*.py), as torch.library.triton_op requires.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <vector>

namespace ofa_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

at::Tensor grad_or_undefined(bool needed, const at::Tensor& g) {
  return needed ? g : at::Tensor();
}

// ---- sliced linear / pointwise conv: (x, weight, bias?, out) ------------------------

// `out` is a SymInt in the schema: under torch.compile an elastic width stays symbolic
// through this autograd kernel (an int64_t here would specialise it to its value)
using SlicedFwd = at::Tensor(const at::Tensor&, const at::Tensor&,
                             const std::optional<at::Tensor>&, c10::SymInt);
using SlicedBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 3>);

template <const char* Fwd, const char* Bwd>
struct SlicedFunction : public torch::autograd::Function<SlicedFunction<Fwd, Bwd>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::SymInt out) {
    static const auto op = op_handle<SlicedFwd>(Fwd);
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->saved_data["has_bias"] = has_bias;
    ctx->save_for_backward({x, weight});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, weight, bias, std::move(out));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<SlicedBwd>(Bwd);
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // edges: x, weight, then bias when given
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    if (!mask[0] && !mask[1] && !mask[2]) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    auto [gx, gw, gb] = op.call(grads[0], saved[0], saved[1], mask);
    return {grad_or_undefined(mask[0], gx), grad_or_undefined(mask[1], gw),
            grad_or_undefined(mask[2], gb), at::Tensor()};
  }
};

constexpr char kLinear[] = "ofa_fast::sliced_linear";
constexpr char kLinearBwd[] = "ofa_fast::sliced_linear_backward";
constexpr char kPointwise[] = "ofa_fast::pointwise_conv2d";
constexpr char kPointwiseBwd[] = "ofa_fast::pointwise_conv2d_backward";

at::Tensor sliced_linear_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, c10::SymInt out) {
  return SlicedFunction<kLinear, kLinearBwd>::apply(x, weight, bias, std::move(out));
}

at::Tensor pointwise_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, c10::SymInt out) {
  return SlicedFunction<kPointwise, kPointwiseBwd>::apply(x, weight, bias, std::move(out));
}

// ---- depthwise conv: (x, weight, k, stride, dilation, padding) ----------------------

using DwFwd = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, int64_t);
using DwBwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                 const at::Tensor&, int64_t, int64_t, int64_t,
                                                 int64_t, std::array<bool, 2>);

struct DwconvFunction : public torch::autograd::Function<DwconvFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            int64_t k, int64_t stride, int64_t dilation, int64_t padding) {
    static const auto op = op_handle<DwFwd>("ofa_fast::dwconv2d");
    ctx->saved_data["conf"] = std::vector<int64_t>{k, stride, dilation, padding};
    ctx->save_for_backward({x, weight});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, weight, k, stride, dilation, padding);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<DwBwd>("ofa_fast::dwconv2d_backward");
    const auto saved = ctx->get_saved_variables();
    const auto conf = ctx->saved_data["conf"].toIntVector();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    variable_list out(6);
    if (!mask[0] && !mask[1]) return out;
    auto [gx, gw] = op.call(grads[0], saved[0], saved[1], conf[0], conf[1], conf[2], conf[3], mask);
    out[0] = grad_or_undefined(mask[0], gx);
    out[1] = grad_or_undefined(mask[1], gw);
    return out;
  }
};

at::Tensor dwconv2d_autograd(const at::Tensor& x, const at::Tensor& weight, int64_t k,
                             int64_t stride, int64_t dilation, int64_t padding) {
  return DwconvFunction::apply(x, weight, k, stride, dilation, padding);
}

// ---- kernel transform: (weight, matrices, ks_chain, channels) ------------------------

using KtFwd = at::Tensor(const at::Tensor&, at::TensorList, at::IntArrayRef, int64_t);
using KtBwd = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, at::TensorList,
                                      at::IntArrayRef, int64_t);

// Every matrix of the list is an input of its own: the gradient comes back as
// [grad weight, grad of each matrix, (none for ks_chain), (none for channels)].
struct KernelTransformFunction : public torch::autograd::Function<KernelTransformFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight,
                            at::TensorList matrices, at::IntArrayRef ks_chain, int64_t channels) {
    static const auto op = op_handle<KtFwd>("ofa_fast::kernel_transform");
    ctx->saved_data["chain"] = ks_chain.vec();
    ctx->saved_data["channels"] = channels;
    std::vector<at::Tensor> saved{weight};
    saved.insert(saved.end(), matrices.begin(), matrices.end());
    ctx->save_for_backward(saved);
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(weight, matrices, ks_chain, channels);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<KtBwd>("ofa_fast::kernel_transform_backward");
    const auto saved = ctx->get_saved_variables();
    const std::vector<at::Tensor> matrices(saved.begin() + 1, saved.end());
    variable_list out = op.call(grads[0].contiguous(), saved[0], matrices,
                                ctx->saved_data["chain"].toIntVector(),
                                ctx->saved_data["channels"].toInt());
    out.resize(out.size() + 2);  // ks_chain, channels
    return out;
  }
};

at::Tensor kernel_transform_autograd(const at::Tensor& weight, at::TensorList matrices,
                                     at::IntArrayRef ks_chain, int64_t channels) {
  return KernelTransformFunction::apply(weight, matrices, ks_chain, channels);
}

// ---- SE scaling: (x, scale [N, C]) ----------------------------------------------------

using ScaleFwd = at::Tensor(const at::Tensor&, const at::Tensor&);
using ScaleBwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, std::array<bool, 2>);

struct ChannelScaleFunction : public torch::autograd::Function<ChannelScaleFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale) {
    static const auto op = op_handle<ScaleFwd>("ofa_fast::channel_scale");
    ctx->save_for_backward({x, scale});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<ScaleBwd>("ofa_fast::channel_scale_backward");
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    if (!mask[0] && !mask[1]) return {at::Tensor(), at::Tensor()};
    auto [gx, gs] = op.call(grads[0], saved[0], saved[1], mask);
    return {grad_or_undefined(mask[0], gx), grad_or_undefined(mask[1], gs)};
  }
};

at::Tensor channel_scale_autograd(const at::Tensor& x, const at::Tensor& scale) {
  return ChannelScaleFunction::apply(x, scale);
}

// ---- batch norm + activation (CPU): (x, weight?, bias?, running_mean?, running_var?,
//      training, eps, activation) -> (y, mean, invstd) ------------------------------------

using BnFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool, double,
    c10::string_view);
using BnBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, bool, c10::string_view,
    std::array<bool, 3>);

std::optional<at::Tensor> present(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t : std::nullopt;
}

struct BatchNormActFunction : public torch::autograd::Function<BatchNormActFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool training,
                               double eps, c10::string_view activation) {
    static const auto op = op_handle<BnFwd>("ofa_fast::batch_norm_act");
    at::Tensor y, mean, invstd;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, mean, invstd) = op.call(x, weight, bias, running_mean, running_var, training,
                                          eps, activation);
    }
    const bool has_w = present(weight).has_value(), has_b = present(bias).has_value();
    ctx->saved_data["has_weight"] = has_w;
    ctx->saved_data["has_bias"] = has_b;
    ctx->saved_data["training"] = training;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->save_for_backward({x, has_w ? *weight : at::Tensor(), has_b ? *bias : at::Tensor(), mean,
                            invstd});
    ctx->mark_non_differentiable({mean, invstd});
    return {y, mean, invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<BnBwd>("ofa_fast::batch_norm_act_backward");
    const auto saved = ctx->get_saved_variables();
    const bool has_w = ctx->saved_data["has_weight"].toBool();
    const bool has_b = ctx->saved_data["has_bias"].toBool();
    // edges: x, then weight and bias when given (running statistics follow, never needed)
    const size_t w_edge = 1, b_edge = has_w ? 2 : 1;
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0),
                                      has_w && ctx->needs_input_grad(w_edge),
                                      has_b && ctx->needs_input_grad(b_edge)};
    variable_list out(8);
    if (!mask[0] && !mask[1] && !mask[2]) return out;
    const auto opt = [](const at::Tensor& t) {
      return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
    };
    const std::string act = ctx->saved_data["activation"].toStringRef();
    auto [gx, gw, gb] = op.call(grads[0], saved[0], opt(saved[1]), opt(saved[2]), saved[3], saved[4],
                                ctx->saved_data["training"].toBool(), act, mask);
    out[0] = grad_or_undefined(mask[0], gx);
    out[1] = grad_or_undefined(mask[1], gw);
    out[2] = grad_or_undefined(mask[2], gb);
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_autograd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double eps,
    c10::string_view activation) {
  auto out = BatchNormActFunction::apply(x, weight, bias, running_mean, running_var, training, eps,
                                         activation);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace ofa_fast

TORCH_LIBRARY_IMPL(ofa_fast, Autograd, m) {
  m.impl("batch_norm_act", &ofa_fast::batch_norm_act_autograd);
  m.impl("channel_scale", &ofa_fast::channel_scale_autograd);
  m.impl("sliced_linear", &ofa_fast::sliced_linear_autograd);
  m.impl("pointwise_conv2d", &ofa_fast::pointwise_conv2d_autograd);
  m.impl("dwconv2d", &ofa_fast::dwconv2d_autograd);
  m.impl("kernel_transform", &ofa_fast::kernel_transform_autograd);
}

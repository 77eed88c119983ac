// Batch norm + activation in one op (CPU): OFA's conv -> DynamicBatchNorm2d -> act
// triple spends more time in the BN and activation passes than in the depthwise conv.
//
//   batch_norm_act(x [N, C, H, W], weight [C]?, bias [C]?, running_mean [C]?,
//                  running_var [C]?, training, eps, activation)
//     -> (y, mean, invstd)      y = act((x - mean) * invstd * weight + bias)
//
// training: mean / invstd are the batch's (biased variance); the caller updates the
// running statistics from them (as F.batch_norm would). Eval: the running ones. The
// forward reads x twice for the statistics (mean, then the centred sum of squares) and
// once more to write y, with the activation applied on the way: one read and one write
// fewer than BN then activation. The backward recomputes the pre-activation from x and
// makes two passes (the per-channel sums of dz and dz * x_hat, then grad_x), against
// the four of PyTorch's activation backward then BN backward. Activations: none, relu,
// relu6, h_swish, with the derivatives PyTorch's own modules use at the kinks.
// The weight and bias are the active slices of the max parameters (views, read in
// place); accumulation is in the tensor's dtype with one vector accumulator per lane.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <vector>

#include "common/cpu_vec.h"

namespace ofa_fast {
namespace {

using cpu::Vec;
using cpu::kLanes;

enum class Act { kNone, kRelu, kRelu6, kHswish };

Act parse_act(c10::string_view s, const char* op) {
  if (s == "none") return Act::kNone;
  if (s == "relu") return Act::kRelu;
  if (s == "relu6") return Act::kRelu6;
  if (s == "h_swish") return Act::kHswish;
  TORCH_CHECK(false, op, ": activation '", s, "' is not allowed; it must be one of none, relu, "
              "relu6, h_swish");
}

template <typename T>
OFA_INLINE T act_fwd(Act a, T z) {
  switch (a) {
    case Act::kRelu: return z > T(0) ? z : T(0);
    case Act::kRelu6: return std::min(std::max(z, T(0)), T(6));
    case Act::kHswish: return z * std::min(std::max(z + T(3), T(0)), T(6)) / T(6);
    default: return z;
  }
}

// d act / dz, as autograd of nn.ReLU (threshold: z > 0), nn.ReLU6 (hardtanh: 0 < z < 6)
// and F.hardswish (z <= -3: 0; z < 3: z / 3 + 1/2; else 1)
template <typename T>
OFA_INLINE T act_grad(Act a, T z) {
  switch (a) {
    case Act::kRelu: return z > T(0) ? T(1) : T(0);
    case Act::kRelu6: return (z > T(0) && z < T(6)) ? T(1) : T(0);
    case Act::kHswish: return z <= T(-3) ? T(0) : (z < T(3) ? z / T(3) + T(0.5) : T(1));
    default: return T(1);
  }
}

at::MemoryFormat format_of(const at::Tensor& x) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return x.suggest_memory_format();
}

// Sum over the pixels of channel c of f(pixel value(s)), NCHW: N planes of P values.
template <typename T, typename F>
OFA_INLINE T plane_sum(int64_t N, int64_t P, int64_t C, int64_t c, F&& f) {
  constexpr int L = kLanes<T>;
  T total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t base = (n * C + c) * P;
    Vec<T, L> acc = Vec<T, L>::zero();
    int64_t i = 0;
    for (; i + L <= P; i += L) acc.add(f.vec(base + i));
    T tail = 0;
    for (; i < P; ++i) tail += f(base + i);
    total += acc.sum() + tail;
  }
  return total;
}

// ---- forward -------------------------------------------------------------------------

template <typename T>
OFA_CPU_MULTIVERSION void stats_nchw(const T* x, int64_t N, int64_t C, int64_t P, T* mean, T* var) {
  constexpr int L = kLanes<T>;
  const T M = T(N * P);
  at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      struct Sum {
        const T* x;
        Vec<T, L> vec(int64_t i) const { return Vec<T, L>::load(x + i); }
        T operator()(int64_t i) const { return x[i]; }
      };
      const T m = plane_sum<T>(N, P, C, c, Sum{x}) / M;
      struct Sq {
        const T* x; T m;
        Vec<T, L> vec(int64_t i) const {
          Vec<T, L> d = Vec<T, L>::load(x + i);
          d.v -= m;
          d.v *= d.v;
          return d;
        }
        T operator()(int64_t i) const { return (x[i] - m) * (x[i] - m); }
      };
      mean[c] = m;
      var[c] = plane_sum<T>(N, P, C, c, Sq{x, m}) / M;
    }
  });
}

template <typename T>
OFA_CPU_MULTIVERSION void stats_rows(const T* x, int64_t R, int64_t C, T* mean, T* var) {
  // rows split over threads, each with its own per-channel sums, combined in order
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), R / 64));
  const int64_t per = (R + threads - 1) / threads;
  std::vector<T> part(threads * C, T(0));
  auto pass = [&](bool centred) {
    std::fill(part.begin(), part.end(), T(0));
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        T* acc = part.data() + t * C;
        for (int64_t r = t * per; r < std::min(R, (t + 1) * per); ++r) {
          const T* xr = x + r * C;
          if (centred)
            for (int64_t c = 0; c < C; ++c) acc[c] += (xr[c] - mean[c]) * (xr[c] - mean[c]);
          else
            for (int64_t c = 0; c < C; ++c) acc[c] += xr[c];
        }
      }
    });
    T* out = centred ? var : mean;
    for (int64_t c = 0; c < C; ++c) {
      T s = 0;
      for (int64_t t = 0; t < threads; ++t) s += part[t * C + c];
      out[c] = s / T(R);
    }
  };
  pass(false);
  pass(true);
}

template <typename T>
OFA_CPU_MULTIVERSION void apply_fwd(const T* x, T* y, const T* scale, const T* shift, int64_t N,
                                    int64_t C, int64_t P, bool rows, Act a) {
  if (rows) {
    at::parallel_for(0, N * P, std::max<int64_t>(1, 8192 / C), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t c = 0; c < C; ++c) y[r * C + c] = act_fwd(a, x[r * C + c] * scale[c] + shift[c]);
    });
    return;
  }
  at::parallel_for(0, N * C, std::max<int64_t>(1, 8192 / std::max<int64_t>(P, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const T k = scale[q % C], s = shift[q % C];
      const T* xp = x + q * P;
      T* yp = y + q * P;
      for (int64_t i = 0; i < P; ++i) yp[i] = act_fwd(a, xp[i] * k + s);
    }
  });
}

// ---- backward ------------------------------------------------------------------------
// z = x * scale + shift (the pre-activation), dz = g * act'(z), x_hat = (x - mean) * invstd

template <typename T>
OFA_CPU_MULTIVERSION void sums_bwd(const T* g, const T* x, const T* scale, const T* shift,
                                   const T* mean, const T* invstd, int64_t N, int64_t C, int64_t P,
                                   bool rows, Act a, T* sum_dz, T* sum_dz_xhat) {
  if (rows) {
    const int64_t R = N * P;
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), R / 64));
    const int64_t per = (R + threads - 1) / threads;
    std::vector<T> part(threads * 2 * C, T(0));
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        T* s1 = part.data() + t * 2 * C;
        T* s2 = s1 + C;
        for (int64_t r = t * per; r < std::min(R, (t + 1) * per); ++r) {
          const T* gr = g + r * C;
          const T* xr = x + r * C;
          for (int64_t c = 0; c < C; ++c) {
            const T dz = gr[c] * act_grad(a, xr[c] * scale[c] + shift[c]);
            s1[c] += dz;
            s2[c] += dz * (xr[c] - mean[c]);
          }
        }
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      T s1 = 0, s2 = 0;
      for (int64_t t = 0; t < threads; ++t) {
        s1 += part[t * 2 * C + c];
        s2 += part[t * 2 * C + C + c];
      }
      sum_dz[c] = s1;
      sum_dz_xhat[c] = s2 * invstd[c];
    }
    return;
  }
  at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const T k = scale[c], s = shift[c], m = mean[c];
      T s1 = 0, s2 = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t base = (n * C + c) * P;
        for (int64_t i = 0; i < P; ++i) {
          const T xv = x[base + i];
          const T dz = g[base + i] * act_grad(a, xv * k + s);
          s1 += dz;
          s2 += dz * (xv - m);
        }
      }
      sum_dz[c] = s1;
      sum_dz_xhat[c] = s2 * invstd[c];
    }
  });
}

// gx = dz * w_invstd - (x - mean) * coef - offset, per channel constants precomputed
template <typename T>
OFA_CPU_MULTIVERSION void apply_bwd(const T* g, const T* x, const T* scale, const T* shift,
                                    const T* mean, const T* k1, const T* k2, const T* k3,
                                    int64_t N, int64_t C, int64_t P, bool rows, Act a, T* gx) {
  if (rows) {
    at::parallel_for(0, N * P, std::max<int64_t>(1, 8192 / C), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* gr = g + r * C;
        const T* xr = x + r * C;
        T* out = gx + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const T dz = gr[c] * act_grad(a, xr[c] * scale[c] + shift[c]);
          out[c] = dz * k1[c] - (xr[c] - mean[c]) * k2[c] - k3[c];
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * C, std::max<int64_t>(1, 8192 / std::max<int64_t>(P, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const int64_t c = q % C;
      const T k = scale[c], s = shift[c], m = mean[c], a1 = k1[c], a2 = k2[c], a3 = k3[c];
      const T* gp = g + q * P;
      const T* xp = x + q * P;
      T* out = gx + q * P;
      for (int64_t i = 0; i < P; ++i) {
        const T dz = gp[i] * act_grad(a, xp[i] * k + s);
        out[i] = dz * a1 - (xp[i] - m) * a2 - a3;
      }
    }
  });
}

void check_vec(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* name,
               const char* op) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), op, ": ", name, " has shape ", t->sizes(),
              "; expected [", x.size(1), "] (the input's channels)");
  TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op, ": ", name,
              " (", t->scalar_type(), " on ", t->device(), ") must match the input (",
              x.scalar_type(), " on ", x.device(), ")");
}

// per-channel scale = weight * invstd, shift = bias - mean * scale
std::pair<at::Tensor, at::Tensor> affine_of(const at::Tensor& mean, const at::Tensor& invstd,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& bias) {
  at::Tensor scale = weight.has_value() ? invstd * *weight : invstd.clone();
  at::Tensor shift = -mean * scale;
  if (bias.has_value()) shift = shift + *bias;
  return {scale.contiguous(), shift.contiguous()};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double eps,
    c10::string_view activation) {
  const char* op = "ofa_fast.batch_norm_act";
  const Act a = parse_act(activation, op);
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got shape ", input.sizes());
  TORCH_CHECK(input.device().is_cpu(), op, ": this kernel takes CPU tensors, got ", input.device());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": dtype ", input.scalar_type(), " is not allowed; use float32 or float64");
  for (auto [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"},
                         std::pair{&running_mean, "running_mean"}, std::pair{&running_var, "running_var"}})
    check_vec(*t, input, name, op);
  TORCH_CHECK(training || (running_mean.has_value() && running_var.has_value()), op,
              ": eval mode needs running_mean and running_var");
  const int64_t N = input.size(0), C = input.size(1), P = input.size(2) * input.size(3);
  TORCH_CHECK(!training || N * P > 1, op, ": training needs more than one value per channel, got "
              "input of shape ", input.sizes());
  const at::MemoryFormat fmt = format_of(input);
  const bool rows = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor mean, invstd;
  if (training) {
    mean = at::empty({C}, x.options());
    at::Tensor var = at::empty({C}, x.options());
    if (N * P > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_stats", [&] {
        if (rows) stats_rows<scalar_t>(x.data_ptr<scalar_t>(), N * P, C, mean.data_ptr<scalar_t>(),
                                       var.data_ptr<scalar_t>());
        else stats_nchw<scalar_t>(x.data_ptr<scalar_t>(), N, C, P, mean.data_ptr<scalar_t>(),
                                  var.data_ptr<scalar_t>());
      });
    }
    invstd = (var + eps).rsqrt();
  } else {
    mean = running_mean->clone();  // an output never aliases an input
    invstd = (*running_var + eps).rsqrt();
  }
  if (y.numel() == 0) return {y, mean, invstd};
  auto [scale, shift] = affine_of(mean, invstd, weight, bias);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act", [&] {
    apply_fwd<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                        shift.data_ptr<scalar_t>(), N, C, P, rows, a);
  });
  return {y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
    bool training, c10::string_view activation, std::array<bool, 3> output_mask) {
  const char* op = "ofa_fast.batch_norm_act_backward";
  const Act a = parse_act(activation, op);
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(),
              op, ": grad_output (", grad_output.scalar_type(), ", ", grad_output.sizes(),
              ") must match the input (", input.scalar_type(), ", ", input.sizes(), ")");
  check_vec(weight, input, "weight", op);
  check_vec(bias, input, "bias", op);
  check_vec(mean, input, "mean", op);
  check_vec(invstd, input, "invstd", op);
  const int64_t N = input.size(0), C = input.size(1), P = input.size(2) * input.size(3);
  const at::MemoryFormat fmt = format_of(input);
  const bool rows = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(fmt), g = grad_output.contiguous(fmt);
  auto [scale, shift] = affine_of(mean, invstd, weight, bias);
  const at::Tensor m = mean.contiguous(), is = invstd.contiguous();
  at::Tensor sum_dz = at::zeros({C}, x.options()), sum_dz_xhat = at::zeros({C}, x.options());
  if (N * P > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_sums", [&] {
      sums_bwd<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                         shift.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), is.data_ptr<scalar_t>(),
                         N, C, P, rows, a, sum_dz.data_ptr<scalar_t>(), sum_dz_xhat.data_ptr<scalar_t>());
    });
  }
  at::Tensor gx = input.new_empty({0});
  if (output_mask[0]) {
    gx = at::empty(x.sizes(), x.options().memory_format(fmt));
    const at::Tensor w_invstd = weight.has_value() ? (*weight * is).contiguous() : is;
    at::Tensor k2, k3;
    if (training) {  // the batch statistics depend on x too
      const double M = double(N * P);
      k2 = (w_invstd * is * sum_dz_xhat / M).contiguous();     // times (x - mean)
      k3 = (w_invstd * sum_dz / M).contiguous();
    } else {
      k2 = at::zeros({C}, x.options());
      k3 = at::zeros({C}, x.options());
    }
    if (gx.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_grad_input", [&] {
        apply_bwd<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                            shift.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                            w_invstd.data_ptr<scalar_t>(), k2.data_ptr<scalar_t>(),
                            k3.data_ptr<scalar_t>(), N, C, P, rows, a, gx.data_ptr<scalar_t>());
      });
    }
  }
  at::Tensor gw = output_mask[1] ? sum_dz_xhat : input.new_empty({0});
  at::Tensor gb = output_mask[2] ? sum_dz : input.new_empty({0});
  return {gx, gw, gb};
}

void register_bn_schemas(torch::Library& m) {
  m.def("batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
        "Tensor? running_var, bool training, float eps, str activation) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_act_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
        "Tensor mean, Tensor invstd, bool training, str activation, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
}

}  // namespace ofa_fast

TORCH_LIBRARY_IMPL(ofa_fast, CPU, m) {
  m.impl("batch_norm_act", &ofa_fast::batch_norm_act);
  m.impl("batch_norm_act_backward", &ofa_fast::batch_norm_act_backward);
}

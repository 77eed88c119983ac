"""Batch norm + activation in one op (CPU): y = act(BN(x)), as OFA's layers apply a
DynamicBatchNorm2d and then an activation.

    batch_norm_act(x, bn, activation) -> y, or None when the op does not apply

`bn` is the nn.BatchNorm2d inside a DynamicBatchNorm2d; the active channels are the
input's C, and the op reads bn.weight[:C] / bn.bias[:C] (and, in eval mode, the running
statistics) in place. In training it uses the batch statistics and then updates
bn.running_mean[:C] / running_var[:C] in place with the momentum (or the cumulative
average) and num_batches_tracked, exactly as F.batch_norm and OFA's bn_forward do.
The kernel (csrc/bn/bn_act.cpp) saves a read and a write of the activation forward, and
two reads and a write backward, against BN then activation; NCHW tensors with small
planes (under 64 pixels, the last stages of a low-resolution supernet) it walks as rows
of C * H * W values, so its loops stay vectorized where PyTorch's per-plane ones are not.
"""
from __future__ import annotations

import torch

from .. import _ext, backend
from ._common import output_memory_format

__all__ = ["batch_norm_act", "BN_ACTIVATIONS"]

BN_ACTIVATIONS = ("none", "relu", "relu6", "h_swish")


def _fake(x, weight, bias, running_mean, running_var, training, eps, activation):
    C = x.shape[1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return y, x.new_empty((C,)), x.new_empty((C,))


def _fake_backward(grad_output, x, weight, bias, mean, invstd, training, activation, output_mask):
    C = x.shape[1]
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                     memory_format=output_memory_format(x)) if output_mask[0] else x.new_empty((0,))
    gw = x.new_empty((C,)) if output_mask[1] else x.new_empty((0,))
    gb = x.new_empty((C,)) if output_mask[2] else x.new_empty((0,))
    return gx, gw, gb


if _ext.has_cpu_kernels():
    torch.library.register_fake("ofa_fast::batch_norm_act")(_fake)
    torch.library.register_fake("ofa_fast::batch_norm_act_backward")(_fake_backward)
    # autograd is registered in C++ (csrc/autograd/autograd.cpp)


def batch_norm_act(x, bn, activation):
    """act(bn(x)) for the nn.BatchNorm2d `bn` over x's first C channels, in one op; None
    when the op does not apply here (not the cpu backend, another dtype, a batch of one
    value per channel): the caller then runs BN and the activation itself."""
    if activation not in BN_ACTIVATIONS:
        raise ValueError(f"ofa_fast.batch_norm_act: activation = {activation!r} is not allowed; "
                         f"choose from {', '.join(BN_ACTIVATIONS)}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.device.type != "cpu" \
            or x.dtype not in (torch.float32, torch.float64):
        return None
    if backend.resolve("cpu", x.dtype) != "cpu":
        return None
    C = x.shape[1]
    if C > bn.num_features:
        raise ValueError(f"DynamicBatchNorm2d: input has {C} channels, more than the max "
                         f"{bn.num_features}")
    batch_stats = bn.training or not bn.track_running_stats
    if batch_stats and x.shape[0] * x.shape[2] * x.shape[3] <= 1:
        return None  # PyTorch's BN raises its own error for this
    if not batch_stats and (bn.running_mean is None or bn.running_var is None):
        return None
    weight = None if bn.weight is None else bn.weight[:C]
    bias = None if bn.bias is None else bn.bias[:C]
    rm = None if bn.running_mean is None else bn.running_mean[:C]
    rv = None if bn.running_var is None else bn.running_var[:C]
    y, mean, invstd = torch.ops.ofa_fast.batch_norm_act(x, weight, bias, rm, rv, batch_stats,
                                                        float(bn.eps), activation)
    if bn.training and bn.track_running_stats and rm is not None:
        with torch.no_grad():
            factor = 0.0
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                factor = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                          else bn.momentum)
            n = x.numel() // C
            var = (invstd.pow(-2) - bn.eps) * (n / (n - 1))  # unbiased, as F.batch_norm keeps
            rm.mul_(1 - factor).add_(mean, alpha=factor)
            rv.mul_(1 - factor).add_(var, alpha=factor)
    return y

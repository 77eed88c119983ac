"""Fusions used by the dynamic layers.

Eval mode (running statistics): BN is an affine map per channel, so a conv followed by
BN is one conv with a folded weight and a bias (for a 1x1 conv, one GEMM):

    BN(W x) = (s * W) x + (beta - s * mean),   s = gamma / sqrt(var + eps)

The folded [out, in] weight is computed data (small: one scale per row of the active
block, which is read in place); under no_grad the activation then runs on each GEMM
block while it is in cache (ops.pointwise_conv2d_act). That removes the BN pass and the
activation pass over the layer's output.

Training (and eval after a depthwise conv): BN + activation run as one op
(ops.batch_norm_act, CPU), which saves a read and a write of the tensor forward and two
reads and a write backward. Running statistics are updated in place exactly as
F.batch_norm would. OFA's SET_RUNNING_STATISTICS mode (full-size BN for recalibration)
is never fused.

Every fusion is the same function (autograd flows through it), rounded differently
only at the float level.

    with ofa_fast.nn.fusion(False): ...   # switch them off (benchmarks compare both)
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops._common import is_symbolic
from .utils import Hswish

__all__ = ["fusion", "fusion_enabled", "conv_bn_act", "bn_act"]

_enabled = True


def fusion_enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def fusion(enabled: bool = True):
    """``with ofa_fast.nn.fusion(False):`` runs the block without the eval-mode fusions."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def _act_(act, y):
    """Runs activation module `act` on the fresh tensor y (in place where that is safe)."""
    if act is None:
        return y
    inplace = not torch.is_grad_enabled()
    kind = type(act)
    if kind is nn.ReLU:
        return F.relu(y, inplace=inplace)
    if kind is nn.ReLU6:
        return F.relu6(y, inplace=inplace)
    if kind is Hswish or (kind.__name__ == "Hswish" and kind.__module__.startswith("ofa.")):
        return F.hardswish(y, inplace=inplace)
    return act(y)


_ACT_KIND = {nn.ReLU: "relu", nn.ReLU6: "relu6", Hswish: "h_swish"}


def _foldable_bn(bn):
    return (isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None)


def _fold(conv, inner, n, in_channels):
    """The folded [n, in, k, k] weight and the shift of conv + eval-mode BN. Computed on
    every call: a cache keyed by tensor versions would miss writes through .data (OFA's
    set_running_statistics and copy_bn write that way).

    A symbolic n (torch.compile, ofa_fast.compile_supernet) folds the whole max weight
    instead, [max_out, max_in, k, k] and [max_out]: static shapes, which the ops then
    slice inside (a sliced view's layout depends on the width, and the fake kernels of
    an elementwise op on it would guard on it)."""
    if is_symbolic(n):
        return _fold_full(conv, inner)
    scale, shift = bn_affine(inner, n)
    return conv.conv.weight[:n, :in_channels] * scale.view(n, 1, 1, 1), shift  # computed


def _fold_full(conv, inner):
    scale, shift = bn_affine(inner)
    return conv.conv.weight * scale.view(-1, 1, 1, 1), shift


def bn_affine(bn, n=None):
    """(scale, shift) of the eval-mode nn.BatchNorm2d `bn` over its first n channels (all
    for None): bn(v) = v * scale + shift, per channel."""
    part = slice(None) if n is None else slice(None, n)
    scale = bn.running_var[part].add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight[part]
    shift = -bn.running_mean[part] * scale
    if bn.bias is not None:
        shift = shift + bn.bias[part]
    return scale, shift


def conv_bn_act(conv, bn, act, x, out_channels):
    """act(bn(conv(x, out_channels))) for a DynamicConv2d `conv` and a DynamicBatchNorm2d
    `bn` (act may be None): with fusion on and bn in eval mode, the BN folds into the
    conv (one GEMM for 1x1; PyTorch's conv on the folded filter for k x k); else the
    conv, then BN + activation (fused where that applies)."""
    inner = bn.bn
    if (_enabled and _foldable_bn(inner) and type(conv.conv) is nn.Conv2d
            and x.size(1) <= conv.max_in_channels and not _set_running_statistics(bn)):
        n = out_channels
        kind = _ACT_KIND.get(type(act), "other") if act is not None else "none"
        tracked = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in (conv.conv.weight, inner.weight,
                                                             inner.bias) if p is not None))
        folded, shift = _fold(conv, inner, n, x.size(1))
        if conv.kernel_size > 1:  # k x k (ResNet stems): PyTorch's conv on the folded filter
            if is_symbolic(n):  # the full fold, sliced in the op
                y = ops.sliced_conv2d(x, folded, n, conv.stride, conv.kernel_size // 2,
                                      conv.dilation) + shift[:n].view(1, -1, 1, 1)
            else:
                y = F.conv2d(x, folded, shift, conv.stride, conv.kernel_size // 2, conv.dilation)
            return _act_(act, y)
        if kind != "other" and not tracked:
            # inference: GEMM + activation block by block in one op (csrc/sliced)
            y = ops.pointwise_conv2d_act(x, folded, shift, n, conv.stride, kind,
                                         op=type(conv).__name__)
            if y is not None:
                return y
        y = ops.pointwise_conv2d(x, folded, shift, n, conv.stride, op=type(conv).__name__)
        return _act_(act, y)
    return bn_act(bn, act, conv(x, out_channels))


def _set_running_statistics(bn):
    from .dynamic_op import _ofa_set_running_statistics

    return type(bn).SET_RUNNING_STATISTICS or _ofa_set_running_statistics()


def bn_act(bn, act, x):
    """act(bn(x)) for a DynamicBatchNorm2d `bn` (act may be None): one op when fusion is
    on and the op applies (CPU, float32/64, a known activation), else the two modules."""
    kind = _ACT_KIND.get(type(act)) if act is not None else "none"
    if kind is None and act is not None and type(act).__module__.startswith("ofa.") \
            and type(act).__name__ == "Hswish":
        kind = "h_swish"  # OFA's own module (a model not switched by ofa_fast.patch)
    if (_enabled and kind is not None and kind != "none" and hasattr(bn, "bn")
            and not _set_running_statistics(bn)):
        y = ops.batch_norm_act(x, bn.bn, kind)
        if y is not None:
            return y
    y = bn(x)
    return act(y) if act is not None else y

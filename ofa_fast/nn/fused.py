"""Eval-mode fusion of conv + batch norm (+ activation), used by the dynamic layers.

In eval mode (running statistics), BN is an affine map per channel, so a 1x1 conv
followed by BN is one GEMM with a folded weight and a bias:

    BN(W x) = (s * W) x + (beta - s * mean),   s = gamma / sqrt(var + eps)

The folded [out, in] weight is computed data (small: one scale per row of the active
block, which is read in place); the activation then runs in place on the GEMM's output.
That removes a full read and write of the activation per layer (the BN pass). The math
is the same function (autograd flows through the fold), rounded differently only at
the float level. Training-mode BN (batch statistics, running-statistics updates, OFA's
SET_RUNNING_STATISTICS) is never fused.

    with ofa_fast.nn.fusion(False): ...   # switch it off (benchmarks compare both)
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .utils import Hswish

__all__ = ["fusion", "fusion_enabled", "conv_bn_act"]

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


def conv_bn_act(conv, bn, act, x, out_channels):
    """act(bn(conv(x, out_channels))) for a 1x1 DynamicConv2d `conv` and a
    DynamicBatchNorm2d `bn` (act may be None), folded into one GEMM when fusion is on
    and bn is in eval mode; else the three modules one after the other."""
    inner = bn.bn
    if (_enabled and _foldable_bn(inner) and conv.kernel_size == 1
            and type(conv.conv) is nn.Conv2d and x.size(1) <= conv.max_in_channels):
        n = out_channels
        w = conv.conv.weight[:n, :x.size(1)]  # [n, in, 1, 1] view
        scale = inner.running_var[:n].add(inner.eps).rsqrt()
        if inner.weight is not None:
            scale = scale * inner.weight[:n]
        shift = -inner.running_mean[:n] * scale
        if inner.bias is not None:
            shift = shift + inner.bias[:n]
        folded = w * scale.view(n, 1, 1, 1)  # computed [n, in, 1, 1]
        kind = _ACT_KIND.get(type(act), "other") if act is not None else "none"
        if kind != "other" and not (torch.is_grad_enabled() and (x.requires_grad or folded.requires_grad)):
            # inference: GEMM + activation block by block in one op (csrc/sliced)
            y = ops.pointwise_conv2d_act(x, folded, shift, n, conv.stride, kind,
                                         op=type(conv).__name__)
            if y is not None:
                return y
        y = ops.pointwise_conv2d(x, folded, shift, n, conv.stride, op=type(conv).__name__)
        return _act_(act, y)
    y = bn(conv(x, out_channels))
    return act(y) if act is not None else y

"""OFA's elastic depthwise convolution as one call: the active channels, the active
kernel size through OFA's kernel-transform chain (or a plain centre crop), then the
depthwise conv with OFA's stride, dilation and padding (kernel_size // 2)."""
from __future__ import annotations

from collections.abc import Mapping

from .dwconv import check_dwconv_args, dwconv2d
from .kernel_transform import kernel_transform

__all__ = ["elastic_dwconv2d", "transform_chain"]


def transform_chain(kernel_size_list, kernel_size):
    """Kernel sizes the transform walks through, max first: [K, ..., kernel_size]."""
    return [s for s in sorted(set(kernel_size_list), reverse=True) if s >= kernel_size]


def elastic_dwconv2d(x, weight, kernel_size, kernel_size_list=None, transform_matrices=None,
                     stride=1, dilation=1, op="ofa_fast.elastic_dwconv2d"):
    """x [N, C, H, W] (C <= C_max) with the active filter of `weight` [C_max, 1, K, K].

    kernel_size_list: the elastic kernel sizes (max = K); default [K].
    transform_matrices: mapping "<a>to<b>" -> [b*b, b*b] matrix, OFA's kernel transform
      (KERNEL_TRANSFORM_MODE = 1); None crops without transforming (mode None).
    """
    ks_list = [weight.shape[-1]] if kernel_size_list is None else list(kernel_size_list)
    if kernel_size not in ks_list:
        raise ValueError(f"{op}: kernel_size {kernel_size!r} is not in kernel_size_list "
                         f"{sorted(set(ks_list))}")
    if weight.dim() == 4 and max(ks_list) != weight.shape[-1]:
        raise ValueError(f"{op}: the largest kernel size {max(ks_list)} of {sorted(set(ks_list))} "
                         f"does not match the weight's kernel size {weight.shape[-1]}")
    padding = kernel_size // 2
    check_dwconv_args(x, weight, kernel_size, stride, dilation, padding, op=op)
    filters = weight
    if transform_matrices is not None and kernel_size < weight.shape[-1]:
        chain = transform_chain(ks_list, kernel_size)
        if not isinstance(transform_matrices, Mapping):
            raise TypeError(f"{op}: transform_matrices must map '<a>to<b>' to a matrix, got "
                            f"{type(transform_matrices).__name__}")
        mats = []
        for a, b in zip(chain, chain[1:]):
            key = f"{a}to{b}"
            if key not in transform_matrices:
                raise KeyError(f"{op}: transform matrix {key!r} is missing; have "
                               f"{sorted(transform_matrices)}")
            mats.append(transform_matrices[key])
        filters = kernel_transform(weight, mats, chain, x.shape[1])
    return dwconv2d(x, filters, kernel_size, stride, dilation, padding)

"""Drop-in replacements for the dynamic ops of OFA
(ofa.imagenet_classification.elastic_nn.modules.dynamic_op): same class names,
constructor arguments, attributes, methods, parameter names and state_dict keys, so
an OFA checkpoint loads unchanged, and back. The forward runs ofa_fast's kernels
(ofa_fast.ops), which read the max weights in place."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.parameter import Parameter

from .. import ops

__all__ = ["DynamicSeparableConv2d"]


def _check_positive_int(cls, name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{cls}: {name} = {value!r} is not allowed; it must be an int >= {minimum}")


class DynamicSeparableConv2d(nn.Module):
    """Elastic depthwise conv: active channels = the input's, active kernel size from
    `kernel_size_list` (OFA's centre crop plus, with KERNEL_TRANSFORM_MODE = 1, its
    learned 7to5 / 5to3 kernel-transform matrices)."""

    KERNEL_TRANSFORM_MODE = 1  # None or 1

    def __init__(self, max_in_channels, kernel_size_list, stride=1, dilation=1):
        super().__init__()
        name = type(self).__name__
        _check_positive_int(name, "max_in_channels", max_in_channels)
        _check_positive_int(name, "stride", stride)
        _check_positive_int(name, "dilation", dilation)
        ks = list(kernel_size_list) if isinstance(kernel_size_list, (list, tuple)) else None
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0
                         for k in ks):
            raise ValueError(f"{name}: kernel_size_list = {kernel_size_list!r} is not allowed; it "
                             "must be a non-empty list of odd positive ints, e.g. [3, 5, 7]")

        self.max_in_channels = max_in_channels
        self.kernel_size_list = kernel_size_list
        self.stride = stride
        self.dilation = dilation

        self.conv = nn.Conv2d(self.max_in_channels, self.max_in_channels,
                              max(self.kernel_size_list), self.stride,
                              groups=self.max_in_channels, bias=False)

        self._ks_set = sorted(set(self.kernel_size_list))  # e.g., [3, 5, 7]
        if self.KERNEL_TRANSFORM_MODE is not None:
            # 7to5_matrix, 5to3_matrix: identity-initialised, as in OFA
            for ks_small, ks_larger in zip(self._ks_set, self._ks_set[1:]):
                self.register_parameter("%dto%d_matrix" % (ks_larger, ks_small),
                                        Parameter(torch.eye(ks_small ** 2)))

        self.active_kernel_size = max(self.kernel_size_list)

    def _transform_matrices(self):
        if self.KERNEL_TRANSFORM_MODE is None:
            return None
        return {name[:-len("_matrix")]: p for name, p in self.named_parameters(recurse=False)
                if name.endswith("_matrix")}

    def _check_kernel_size(self, kernel_size):
        if kernel_size not in self._ks_set:
            raise ValueError(f"{type(self).__name__}: kernel_size {kernel_size!r} is not in "
                             f"kernel_size_list {self._ks_set}")

    def get_active_filter(self, in_channel, kernel_size):
        """The [in_channel, 1, k, k] filter OFA computes: a view of the max weight for a
        plain crop, the transformed (computed) filter otherwise."""
        self._check_kernel_size(kernel_size)
        if not 1 <= in_channel <= self.max_in_channels:
            raise ValueError(f"{type(self).__name__}: in_channel = {in_channel} must be between 1 "
                             f"and max_in_channels = {self.max_in_channels}")
        max_kernel_size = max(self.kernel_size_list)
        weight = self.conv.weight
        mats = self._transform_matrices()
        if mats is not None and kernel_size < max_kernel_size:
            chain = ops.transform_chain(self._ks_set, kernel_size)
            return ops.kernel_transform(weight, [mats[f"{a}to{b}"] for a, b in zip(chain, chain[1:])],
                                        chain, in_channel)
        start = max_kernel_size // 2 - kernel_size // 2
        return weight[:in_channel, :in_channel, start:start + kernel_size, start:start + kernel_size]

    def forward(self, x, kernel_size=None):
        if kernel_size is None:
            kernel_size = self.active_kernel_size
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.size(1) > self.max_in_channels:
            raise ValueError(f"{type(self).__name__}: input has {x.size(1)} channels, more than "
                             f"max_in_channels = {self.max_in_channels}")
        self._check_kernel_size(kernel_size)
        return ops.elastic_dwconv2d(x, self.conv.weight, kernel_size, self._ks_set,
                                    self._transform_matrices(), self.stride, self.dilation,
                                    op=type(self).__name__)

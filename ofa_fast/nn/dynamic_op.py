"""Drop-in replacements for the dynamic ops of OFA
(ofa.imagenet_classification.elastic_nn.modules.dynamic_op): same class names,
constructor arguments, attributes, methods, parameter names and state_dict keys, so
an OFA checkpoint loads unchanged, and back. The forward runs ofa_fast's kernels
(ofa_fast.ops), which read the max weights in place."""
from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parameter import Parameter

from .. import ops
from ..ops._common import is_int, is_symbolic, known_equal
from .utils import Hsigmoid, MyNetwork, SEModule, get_same_padding, make_divisible, sub_filter_start_end

__all__ = [
    "DynamicSeparableConv2d",
    "DynamicConv2d",
    "DynamicGroupConv2d",
    "DynamicBatchNorm2d",
    "DynamicGroupNorm",
    "DynamicSE",
    "DynamicLinear",
]


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
        # this module's own parameters (named_parameters' generator costs more than the op)
        return {name[:-len("_matrix")]: p for name, p in self._parameters.items()
                if p is not None and name.endswith("_matrix")}

    def _check_kernel_size(self, kernel_size):
        if is_symbolic(kernel_size):  # torch.compile: checked eagerly, and by the op (ops/_common.py)
            return
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
        # the matrices only matter below the max kernel size (a symbolic one may be below)
        mats = None
        if is_symbolic(kernel_size) or kernel_size != self._ks_set[-1]:
            mats = self._transform_matrices()
        return ops.elastic_dwconv2d(x, self.conv.weight, kernel_size, self._ks_set, mats,
                                    self.stride, self.dilation, op=type(self).__name__)


def _check_active(owner, name, value, maximum, minimum=1):
    # a symbolic value (torch.compile) is not compared: see ops/_common.py
    if not is_int(value) or (not is_symbolic(value) and not minimum <= value <= maximum):
        raise ValueError(f"{owner}: {name} = {value!r} is not allowed; it must be an int between "
                         f"{minimum} and {maximum}")


def _check_input_channels(owner, x, maximum):
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.size(1) > maximum:
        raise ValueError(f"{owner}: input has {x.size(1)} channels, more than the max "
                         f"{maximum}")


def _plain_conv(conv):
    """True for a plain nn.Conv2d (not OFA's weight-standardised MyConv2d)."""
    return not hasattr(conv, "weight_standardization")


class DynamicConv2d(nn.Module):
    """Conv whose active filter is weight[:out_channel, :in_channel] (in = the input's
    channels). 1x1 (every pointwise conv of OFA's nets) runs as a GEMM on the strided view
    of the max weight (ofa_fast.ops.pointwise_conv2d); k x k (ResNet stems) hands the view
    to PyTorch's convolution. Padding is OFA's get_same_padding(kernel_size)."""

    def __init__(self, max_in_channels, max_out_channels, kernel_size=1, stride=1, dilation=1):
        super().__init__()
        name = type(self).__name__
        for arg, v in (("max_in_channels", max_in_channels), ("max_out_channels", max_out_channels),
                       ("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
            _check_positive_int(name, arg, v)
        self.max_in_channels = max_in_channels
        self.max_out_channels = max_out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation

        self.conv = nn.Conv2d(self.max_in_channels, self.max_out_channels, self.kernel_size,
                              stride=self.stride, bias=False)
        self.active_out_channel = self.max_out_channels

    def get_active_filter(self, out_channel, in_channel):
        return self.conv.weight[:out_channel, :in_channel, :, :]

    def forward(self, x, out_channel=None):
        if out_channel is None:
            out_channel = self.active_out_channel
        name = type(self).__name__
        _check_input_channels(name, x, self.max_in_channels)
        _check_active(name, "out_channel", out_channel, self.max_out_channels)
        weight = self.conv.weight
        if not _plain_conv(self.conv):  # OFA's MyConv2d: standardise the active filter
            filters = self.conv.weight_standardization(
                self.get_active_filter(out_channel, x.size(1)).contiguous())
            return F.conv2d(x, filters, None, self.stride, get_same_padding(self.kernel_size),
                            self.dilation, 1)
        if self.kernel_size == 1:
            return ops.pointwise_conv2d(x, weight, None, out_channel, self.stride, op=name)
        if is_symbolic(out_channel):  # torch.compile: the slice inside one op (ops/sliced_conv2d.py)
            return ops.sliced_conv2d(x, weight, out_channel, self.stride,
                                     get_same_padding(self.kernel_size), self.dilation)
        filters = self.get_active_filter(out_channel, x.size(1))  # a view, no copy
        return F.conv2d(x, filters, None, self.stride, get_same_padding(self.kernel_size),
                        self.dilation, 1)


class DynamicGroupConv2d(nn.Module):
    """OFA's elastic group conv: active kernel size (centre crop) and active groups (a
    multiple of the weight's min(groups_list) grouping). The active filter is a strided
    view of the max weight (group i reads the input-channel block i % (groups / g_min));
    PyTorch's grouped convolution runs on it."""

    def __init__(self, in_channels, out_channels, kernel_size_list, groups_list, stride=1,
                 dilation=1):
        super().__init__()
        name = type(self).__name__
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels),
                       ("stride", stride), ("dilation", dilation)):
            _check_positive_int(name, arg, v)
        for arg, lst in (("kernel_size_list", kernel_size_list), ("groups_list", groups_list)):
            if not isinstance(lst, (list, tuple)) or not lst or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in lst):
                raise ValueError(f"{name}: {arg} = {lst!r} is not allowed; it must be a non-empty "
                                 "list of positive ints")
        for g in groups_list:
            if in_channels % g or out_channels % g or g % min(groups_list):
                raise ValueError(f"{name}: groups {g} of groups_list {list(groups_list)} must divide "
                                 f"in_channels = {in_channels} and out_channels = {out_channels} "
                                 f"and be a multiple of min(groups_list) = {min(groups_list)}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size_list = kernel_size_list
        self.groups_list = groups_list
        self.stride = stride
        self.dilation = dilation

        self.conv = nn.Conv2d(self.in_channels, self.out_channels, max(self.kernel_size_list),
                              self.stride, groups=min(self.groups_list), bias=False)
        self.active_kernel_size = max(self.kernel_size_list)
        self.active_groups = min(self.groups_list)

    def get_active_filter(self, kernel_size, groups):
        name = type(self).__name__
        if kernel_size not in self.kernel_size_list:
            raise ValueError(f"{name}: kernel_size {kernel_size!r} is not in kernel_size_list "
                             f"{list(self.kernel_size_list)}")
        if groups not in self.groups_list:
            raise ValueError(f"{name}: groups {groups!r} is not in groups_list "
                             f"{list(self.groups_list)}")
        start, end = sub_filter_start_end(max(self.kernel_size_list), kernel_size)
        w = self.conv.weight[:, :, start:end, start:end]
        ratio = groups // min(self.groups_list)  # input blocks per stored group
        rows, sub_in = self.out_channels // groups, self.in_channels // groups
        s0, s1, s2, s3 = w.stride()
        # filter[a, p, j, c] = w[(a * ratio + p) * rows + j, p * sub_in + c]
        view = w.as_strided((groups // ratio, ratio, rows, sub_in, kernel_size, kernel_size),
                            (ratio * rows * s0, rows * s0 + sub_in * s1, s0, s1, s2, s3),
                            w.storage_offset())
        # merging (a, p, j) into the output dim is a view when ratio == 1
        return view.reshape(self.out_channels, sub_in, kernel_size, kernel_size)

    def forward(self, x, kernel_size=None, groups=None):
        if kernel_size is None:
            kernel_size = self.active_kernel_size
        if groups is None:
            groups = self.active_groups
        filters = self.get_active_filter(kernel_size, groups)
        if not _plain_conv(self.conv):
            filters = self.conv.weight_standardization(filters.contiguous())
        return F.conv2d(x, filters, None, self.stride, get_same_padding(kernel_size),
                        self.dilation, groups)


def _ofa_set_running_statistics():
    """OFA's own DynamicBatchNorm2d.SET_RUNNING_STATISTICS, if `ofa` is loaded: a model
    patched by ofa_fast.patch() keeps obeying OFA's set_running_statistics()."""
    mod = sys.modules.get("ofa.imagenet_classification.elastic_nn.modules.dynamic_op")
    cls = getattr(mod, "DynamicBatchNorm2d", None) if mod is not None else None
    return bool(getattr(cls, "SET_RUNNING_STATISTICS", False))


class DynamicBatchNorm2d(nn.Module):
    """Batch norm on the input's channels: weight, bias and running statistics are the
    first C entries of the max ones, read (and, in training, updated) in place."""

    SET_RUNNING_STATISTICS = False

    def __init__(self, max_feature_dim):
        super().__init__()
        _check_positive_int(type(self).__name__, "max_feature_dim", max_feature_dim)
        self.max_feature_dim = max_feature_dim
        self.bn = nn.BatchNorm2d(self.max_feature_dim)

    @staticmethod
    def bn_forward(x, bn: nn.BatchNorm2d, feature_dim):
        # (known_equal: a symbolic width (torch.compile) takes the slicing path, which
        # computes the same at full width, rather than a guard on its value)
        if known_equal(bn.num_features, feature_dim) or DynamicBatchNorm2d.SET_RUNNING_STATISTICS \
                or _ofa_set_running_statistics():
            return bn(x)
        if feature_dim > bn.num_features:
            raise ValueError(f"DynamicBatchNorm2d: input has {feature_dim} channels, more than "
                             f"the max {bn.num_features}")
        exponential_average_factor = 0.0
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)  # in place, no setattr (traceable inside torch.cond)
            if bn.momentum is None:  # cumulative moving average
                exponential_average_factor = 1.0 / float(bn.num_batches_tracked)
            else:
                exponential_average_factor = bn.momentum
        # slices of 1-D tensors are contiguous views: the kernel updates them in place
        return F.batch_norm(
            x,
            None if bn.running_mean is None else bn.running_mean[:feature_dim],
            None if bn.running_var is None else bn.running_var[:feature_dim],
            None if bn.weight is None else bn.weight[:feature_dim],
            None if bn.bias is None else bn.bias[:feature_dim],
            bn.training or not bn.track_running_stats,
            exponential_average_factor,
            bn.eps,
        )

    def forward(self, x):
        return self.bn_forward(x, self.bn, x.size(1))


class DynamicGroupNorm(nn.GroupNorm):
    """Group norm over the input's channels with groups of `channel_per_group` channels;
    affine parameters are the first C entries of the max ones."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, channel_per_group=None):
        super().__init__(num_groups, num_channels, eps, affine)
        self.channel_per_group = channel_per_group

    def forward(self, x):
        name = type(self).__name__
        n_channels = x.size(1)
        if self.channel_per_group is None or n_channels % self.channel_per_group:
            raise ValueError(f"{name}: input has {n_channels} channels, which is not a multiple "
                             f"of channel_per_group = {self.channel_per_group!r}")
        _check_input_channels(name, x, self.num_channels)
        n_groups = n_channels // self.channel_per_group
        return F.group_norm(x, n_groups, None if self.weight is None else self.weight[:n_channels],
                            None if self.bias is None else self.bias[:n_channels], self.eps)

    @property
    def bn(self):
        return self


class DynamicSE(SEModule):
    """Squeeze-and-excitation over the input's channels with
    make_divisible(C // reduction) middle channels; both 1x1 convs read the active block
    of the max weights in place (sliced GEMMs on the pooled [N, C] vector)."""

    def __init__(self, max_channel):
        super().__init__(max_channel)

    def _check_groups(self, in_channel, groups):
        if in_channel % groups:
            raise ValueError(f"{type(self).__name__}: groups = {groups} must divide the input's "
                             f"{in_channel} channels")

    def get_active_reduce_weight(self, num_mid, in_channel, groups=None):
        if groups is None or groups == 1:
            return self.fc.reduce.weight[:num_mid, :in_channel, :, :]
        self._check_groups(in_channel, groups)
        sub_in = in_channel // groups
        parts = torch.chunk(self.fc.reduce.weight[:num_mid, :, :, :], groups, dim=1)
        return torch.cat([p[:, :sub_in, :, :] for p in parts], dim=1)

    def get_active_reduce_bias(self, num_mid):
        return self.fc.reduce.bias[:num_mid] if self.fc.reduce.bias is not None else None

    def get_active_expand_weight(self, num_mid, in_channel, groups=None):
        if groups is None or groups == 1:
            return self.fc.expand.weight[:in_channel, :num_mid, :, :]
        self._check_groups(in_channel, groups)
        sub_in = in_channel // groups
        parts = torch.chunk(self.fc.expand.weight[:, :num_mid, :, :], groups, dim=0)
        return torch.cat([p[:sub_in, :, :, :] for p in parts], dim=0)

    def get_active_expand_bias(self, in_channel, groups=None):
        if groups is None or groups == 1:
            return self.fc.expand.bias[:in_channel] if self.fc.expand.bias is not None else None
        self._check_groups(in_channel, groups)
        sub_in = in_channel // groups
        return torch.cat([b[:sub_in] for b in torch.chunk(self.fc.expand.bias, groups, dim=0)],
                         dim=0)

    def active_mid_channel(self, in_channel):
        """The middle width for `in_channel` input channels (OFA's rounding)."""
        return make_divisible(in_channel // self.reduction, divisor=MyNetwork.CHANNEL_DIVISIBLE)

    def forward(self, x, groups=None, num_mid=None):
        """num_mid: the middle width, default active_mid_channel(x.size(1)) (the dynamic
        layers pass it in a compiled supernet, where it is a symbolic int)."""
        name = type(self).__name__
        _check_input_channels(name, x, self.channel)
        in_channel = x.size(1)
        if num_mid is None:
            num_mid = self.active_mid_channel(in_channel)
        y = x.mean((2, 3), keepdim=True)  # one pass (OFA: two, over W then H)
        if groups is None or groups == 1:
            y = ops.pointwise_conv2d(y, self.fc.reduce.weight, self.fc.reduce.bias, num_mid, op=name)
            y = self.fc.relu(y)
            y = ops.pointwise_conv2d(y, self.fc.expand.weight, self.fc.expand.bias, in_channel,
                                     op=name)
        else:  # OFA's grouped SE gathers its blocks (computed filters, as in OFA)
            y = F.conv2d(y, self.get_active_reduce_weight(num_mid, in_channel, groups),
                         self.get_active_reduce_bias(num_mid))
            y = self.fc.relu(y)
            y = F.conv2d(y, self.get_active_expand_weight(num_mid, in_channel, groups),
                         self.get_active_expand_bias(in_channel, groups))
        y = self.fc.h_sigmoid(y)
        return ops.channel_scale(x, y, op=name)  # x * y, with a one-pass fused backward


class DynamicLinear(nn.Module):
    """Linear whose active weight is weight[:out_features, :in] (in = the input's
    features), read in place by a GEMM (ofa_fast.ops.sliced_linear)."""

    def __init__(self, max_in_features, max_out_features, bias=True):
        super().__init__()
        name = type(self).__name__
        _check_positive_int(name, "max_in_features", max_in_features)
        _check_positive_int(name, "max_out_features", max_out_features)
        self.max_in_features = max_in_features
        self.max_out_features = max_out_features
        self.bias = bias

        self.linear = nn.Linear(self.max_in_features, self.max_out_features, self.bias)
        self.active_out_features = self.max_out_features

    def get_active_weight(self, out_features, in_features):
        return self.linear.weight[:out_features, :in_features]

    def get_active_bias(self, out_features):
        return self.linear.bias[:out_features] if self.bias else None

    def forward(self, x, out_features=None):
        if out_features is None:
            out_features = self.active_out_features
        name = type(self).__name__
        _check_active(name, "out_features", out_features, self.max_out_features)
        return ops.sliced_linear(x, self.linear.weight, self.linear.bias if self.bias else None,
                                 out_features, op=name)

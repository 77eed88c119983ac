"""OFA's elastic layers (ofa.imagenet_classification.elastic_nn.modules.dynamic_layers)
built from ofa_fast's dynamic ops: same class names, constructor arguments, attributes
(active_kernel_size, active_expand_ratio, active_out_channel), config dicts, module_str
and state_dict keys, so an OFA supernet checkpoint loads unchanged, and back.

get_active_subnet returns ofa_fast's static layers (ofa_fast.nn.layers) holding copies
of the active weights, exactly as OFA's does; re_organize_middle_weights sorts the
middle channels by importance exactly as OFA's does.

Beyond OFA: an active configuration outside the layer's range (kernel size or expand
ratio not in its list, channels above the max) raises a ValueError naming the value and
the allowed range, in forward and in get_active_subnet / get_active_subnet_config.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .dynamic_op import (
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicGroupNorm,
    DynamicLinear,
    DynamicSE,
    DynamicSeparableConv2d,
)
from .layers import (
    DOWNSAMPLE_MODES,
    ConvLayer,
    IdentityLayer,
    LinearLayer,
    MBConvLayer,
    ResNetBottleneckBlock,
    set_layer_from_config,
)
from ..ops._common import is_symbolic
from .fused import bn_act, conv_bn_act
from .utils import (
    MyModule,
    MyNetwork,
    SEModule,
    _index_select_,
    adjust_bn_according_to_idx,
    build_activation,
    copy_bn,
    make_divisible,
    val2list,
)

__all__ = [
    "DynamicMBConvLayer",
    "DynamicConvLayer",
    "DynamicLinearLayer",
    "DynamicResNetBottleneckBlock",
]


# ----------------------------------------------------------------------------- checks


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(owner, name, value, minimum=1):
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{owner}: {name} = {value!r} is not allowed; it must be an int >= {minimum}")


def _int_list(owner, name, values, odd=False):
    values = val2list(values)
    if not isinstance(values, list) or not values or any(
            not _is_int(v) or v < 1 or (odd and v % 2 == 0) for v in values):
        kind = "odd positive ints" if odd else "positive ints"
        raise ValueError(f"{owner}: {name} = {values!r} is not allowed; it must be an int or a "
                         f"non-empty list of {kind}")
    return values


def _ratio_list(owner, name, values):
    values = val2list(values)
    if not isinstance(values, list) or not values or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in values):
        raise ValueError(f"{owner}: {name} = {values!r} is not allowed; it must be a positive number "
                         "or a non-empty list of them")
    return values


def _check_act(owner, act_func):
    try:
        build_activation(act_func)
    except ValueError as e:
        raise ValueError(f"{owner}: {e}") from None


def _check_in_list(owner, name, value, allowed):
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{owner}: {name} = {value!r} is not in {name[len('active_'):]}_list "
                         f"{sorted(set(allowed))}")


def _check_channels(owner, name, value, maximum):
    if is_symbolic(value):  # an input's width in a compiled supernet: see ops/_common.py
        return
    if not _is_int(value) or not 1 <= value <= maximum:
        raise ValueError(f"{owner}: {name} = {value!r} is not allowed; it must be an int between 1 "
                         f"and the max {maximum}")


def _check_input(owner, x, dim=4):
    if not isinstance(x, torch.Tensor) or x.dim() != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner}: the input must be a {dim}-D tensor, got {shape}")


def _check_stage(owner, stage, n_ratios):
    if not _is_int(stage) or not 0 <= stage < n_ratios:
        raise ValueError(f"{owner}: expand_ratio_stage = {stage!r} is not allowed; it must be an int "
                         f"between 0 and {n_ratios - 1} (len(expand_ratio_list) - 1)")


def _config_args(cls, config, names=None):
    names = names or (cls.__name__,)
    if "name" in config and config["name"] not in names:
        raise ValueError(f"{cls.__name__}.build_from_config: config name {config['name']!r} is not "
                         f"{names[0]!r}")
    return {k: v for k, v in config.items() if k != "name"}


def _net_device(module):
    return next(module.parameters()).device


def _copy_(dst, src):
    with torch.no_grad():
        dst.copy_(src)


def _channel_importance(weight, norm, expand_ratio_stage, expand_ratio_list, base_width):
    """OFA's importance of the input channels of `weight`: the L1 norm over everything
    else, equalised within a group norm's groups, then (expand_ratio_stage > 0) shifted
    by 1e5 steps so channels inside each smaller width sort ahead of those outside.
    Computed with OFA's exact ops, so ties and float32 rounding sort the same way."""
    importance = torch.sum(torch.abs(weight.data), dim=(0, 2, 3))
    if isinstance(norm, DynamicGroupNorm):
        chunks = torch.split(importance, norm.channel_per_group)
        importance = torch.cat([chunk.mean().expand_as(chunk) for chunk in chunks], dim=0)
    if expand_ratio_stage > 0:
        widths = [make_divisible(round(base_width * e), MyNetwork.CHANNEL_DIVISIBLE)
                  for e in sorted(expand_ratio_list, reverse=True)]
        right = len(importance)
        base = -len(widths) * 1e5
        for left in widths[:expand_ratio_stage + 1]:
            importance[left:right] += base
            base += 1e5
            right = left
    return torch.sort(importance, dim=0, descending=True)[1]


def _is_identity(module):
    """An IdentityLayer, ours or OFA's (a module switched by ofa_fast.patch keeps OFA's
    static children)."""
    return isinstance(module, IdentityLayer) or type(module).__name__ == "IdentityLayer"


def _dyn_conv_bn(conv, channels, act_func=None, with_act=True):
    ops = [("conv", conv), ("bn", DynamicBatchNorm2d(channels))]
    if with_act:
        ops.append(("act", build_activation(act_func, inplace=True)))
    return nn.Sequential(OrderedDict(ops))


# ----------------------------------------------------------------------------- linear


class DynamicLinearLayer(MyModule):
    """Classifier with elastic input features (dropout, then a DynamicLinear)."""

    def __init__(self, in_features_list, out_features, bias=True, dropout_rate=0):
        super().__init__()
        name = type(self).__name__
        self.in_features_list = _int_list(name, "in_features_list", in_features_list)
        _check_int(name, "out_features", out_features)
        if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)) \
                or not 0 <= dropout_rate < 1:
            raise ValueError(f"{name}: dropout_rate = {dropout_rate!r} must be a number in [0, 1)")
        self.out_features = out_features
        self.bias = bias
        self.dropout_rate = dropout_rate

        self.dropout = nn.Dropout(self.dropout_rate, inplace=True) if dropout_rate > 0 else None
        self.linear = DynamicLinear(max(self.in_features_list), self.out_features, self.bias)

    def _check(self, in_features):
        _check_channels(type(self).__name__, "in_features", in_features, max(self.in_features_list))

    def forward(self, x):
        _check_input(type(self).__name__, x, dim=2)
        self._check(x.size(1))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear(x)

    @property
    def module_str(self):
        return "DyLinear(%d, %d)" % (max(self.in_features_list), self.out_features)

    @property
    def config(self):
        return {
            "name": "DynamicLinear",  # OFA names it after the op (DynamicLinear.__name__)
            "in_features_list": self.in_features_list,
            "out_features": self.out_features,
            "bias": self.bias,
            "dropout_rate": self.dropout_rate,
        }

    @staticmethod
    def build_from_config(config):
        return DynamicLinearLayer(**_config_args(DynamicLinearLayer, config,
                                                 ("DynamicLinear", "DynamicLinearLayer")))

    def get_active_subnet(self, in_features, preserve_weight=True):
        self._check(in_features)
        sub_layer = LinearLayer(in_features, self.out_features, self.bias,
                                dropout_rate=self.dropout_rate).to(_net_device(self))
        if not preserve_weight:
            return sub_layer
        _copy_(sub_layer.linear.weight, self.linear.get_active_weight(self.out_features, in_features))
        if self.bias:
            _copy_(sub_layer.linear.bias, self.linear.get_active_bias(self.out_features))
        return sub_layer

    def get_active_subnet_config(self, in_features):
        self._check(in_features)
        return {
            "name": LinearLayer.__name__,
            "in_features": in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "dropout_rate": self.dropout_rate,
        }


# ----------------------------------------------------------------------------- MBConv


class _ChannelListLayer(MyModule):
    """What the layers with in_channel_list / out_channel_list share: OFA's
    build_from_config (Class.build_from_config(config)) and in/out_channels (the max)."""

    @classmethod
    def build_from_config(cls, config):
        return cls(**_config_args(cls, config))

    @property
    def in_channels(self):
        return max(self.in_channel_list)

    @property
    def out_channels(self):
        return max(self.out_channel_list)


class DynamicMBConvLayer(_ChannelListLayer):
    """MobileNetV2/V3 inverted residual body with elastic kernel size, expand ratio and
    output channels (input channels follow the input)."""

    def __init__(self, in_channel_list, out_channel_list, kernel_size_list=3, expand_ratio_list=6,
                 stride=1, act_func="relu6", use_se=False):
        super().__init__()
        name = type(self).__name__
        self.in_channel_list = _int_list(name, "in_channel_list", in_channel_list)
        self.out_channel_list = _int_list(name, "out_channel_list", out_channel_list)
        self.kernel_size_list = _int_list(name, "kernel_size_list", kernel_size_list, odd=True)
        self.expand_ratio_list = _ratio_list(name, "expand_ratio_list", expand_ratio_list)
        _check_int(name, "stride", stride)
        _check_act(name, act_func)
        self.stride = stride
        self.act_func = act_func
        self.use_se = use_se

        max_middle_channel = make_divisible(
            round(max(self.in_channel_list) * max(self.expand_ratio_list)),
            MyNetwork.CHANNEL_DIVISIBLE)
        if max(self.expand_ratio_list) == 1:
            self.inverted_bottleneck = None
        else:
            self.inverted_bottleneck = _dyn_conv_bn(
                DynamicConv2d(max(self.in_channel_list), max_middle_channel), max_middle_channel,
                self.act_func)
        self.depth_conv = _dyn_conv_bn(
            DynamicSeparableConv2d(max_middle_channel, self.kernel_size_list, self.stride),
            max_middle_channel, self.act_func)
        if self.use_se:
            self.depth_conv.add_module("se", DynamicSE(max_middle_channel))
        self.point_linear = _dyn_conv_bn(
            DynamicConv2d(max_middle_channel, max(self.out_channel_list)),
            max(self.out_channel_list), with_act=False)

        self.active_kernel_size = max(self.kernel_size_list)
        self.active_expand_ratio = max(self.expand_ratio_list)
        self.active_out_channel = max(self.out_channel_list)

    def _check_active(self, in_channel):
        name = type(self).__name__
        _check_in_list(name, "active_kernel_size", self.active_kernel_size, self.kernel_size_list)
        _check_in_list(name, "active_expand_ratio", self.active_expand_ratio, self.expand_ratio_list)
        _check_channels(name, "active_out_channel", self.active_out_channel, self.out_channels)
        _check_channels(name, "in_channel", in_channel, self.in_channels)

    def active_settings(self, in_channel):
        """The active settings for `in_channel` input channels, checked, as ints:
        (kernel_size, middle_channel, se_mid_channel (0 without SE), out_channel).
        forward(x, settings) runs them (ofa_fast.compile_supernet passes them in as
        symbolic ints, so one graph serves every subnet)."""
        self._check_active(in_channel)
        middle = self.active_middle_channel(in_channel) if self.inverted_bottleneck is not None \
            else in_channel
        se_mid = self.depth_conv.se.active_mid_channel(middle) if self.use_se else 0
        return self.active_kernel_size, middle, se_mid, self.active_out_channel

    def forward(self, x, settings=None):
        """settings: None (the active_* attributes), or active_settings(x.size(1)) as
        it was (its values are not checked again: they may be symbolic)."""
        _check_input(type(self).__name__, x)
        ib, dc, pl = self.inverted_bottleneck, self.depth_conv, self.point_linear
        if settings is None:
            in_channel = x.size(1)
            self._check_active(in_channel)
            middle, se_mid = self.active_middle_channel(in_channel), None
            kernel_size, out = self.active_kernel_size, self.active_out_channel
            # the children's active values, as OFA's forward sets them
            if ib is not None:
                ib.conv.active_out_channel = middle
            dc.conv.active_kernel_size = kernel_size
            pl.conv.active_out_channel = out
        else:
            kernel_size, middle, se_mid, out = settings

        if ib is not None:
            x = conv_bn_act(ib.conv, ib.bn, getattr(ib, "act", None), x, middle)
        x = bn_act(dc.bn, getattr(dc, "act", None), dc.conv(x, kernel_size))
        if getattr(dc, "se", None) is not None:
            x = dc.se(x, num_mid=se_mid)
        return conv_bn_act(pl.conv, pl.bn, None, x, out)

    @property
    def module_str(self):
        s = "(O%d, E%.1f, K%d)" % (self.active_out_channel, self.active_expand_ratio,
                                  self.active_kernel_size)
        return "SE" + s if self.use_se else s

    @property
    def config(self):
        return {
            "name": DynamicMBConvLayer.__name__,
            "in_channel_list": self.in_channel_list,
            "out_channel_list": self.out_channel_list,
            "kernel_size_list": self.kernel_size_list,
            "expand_ratio_list": self.expand_ratio_list,
            "stride": self.stride,
            "act_func": self.act_func,
            "use_se": self.use_se,
        }

    def active_middle_channel(self, in_channel):
        return make_divisible(round(in_channel * self.active_expand_ratio),
                              MyNetwork.CHANNEL_DIVISIBLE)

    def get_active_subnet(self, in_channel, preserve_weight=True):
        # (validated by get_active_subnet_config)
        sub_layer = set_layer_from_config(self.get_active_subnet_config(in_channel))
        sub_layer = sub_layer.to(_net_device(self))
        if not preserve_weight:
            return sub_layer

        middle_channel = self.active_middle_channel(in_channel)
        if sub_layer.inverted_bottleneck is not None:
            _copy_(sub_layer.inverted_bottleneck.conv.weight,
                   self.inverted_bottleneck.conv.get_active_filter(middle_channel, in_channel))
            copy_bn(sub_layer.inverted_bottleneck.bn, self.inverted_bottleneck.bn.bn)

        _copy_(sub_layer.depth_conv.conv.weight,
               self.depth_conv.conv.get_active_filter(middle_channel, self.active_kernel_size))
        copy_bn(sub_layer.depth_conv.bn, self.depth_conv.bn.bn)

        if self.use_se:
            se, sub_se = self.depth_conv.se, sub_layer.depth_conv.se.fc
            # the static SEModule's middle width: the same rounding
            se_mid = make_divisible(middle_channel // SEModule.REDUCTION,
                                    divisor=MyNetwork.CHANNEL_DIVISIBLE)
            _copy_(sub_se.reduce.weight, se.get_active_reduce_weight(se_mid, middle_channel))
            _copy_(sub_se.reduce.bias, se.get_active_reduce_bias(se_mid))
            _copy_(sub_se.expand.weight, se.get_active_expand_weight(se_mid, middle_channel))
            _copy_(sub_se.expand.bias, se.get_active_expand_bias(middle_channel))

        _copy_(sub_layer.point_linear.conv.weight,
               self.point_linear.conv.get_active_filter(self.active_out_channel, middle_channel))
        copy_bn(sub_layer.point_linear.bn, self.point_linear.bn.bn)
        return sub_layer

    def get_active_subnet_config(self, in_channel):
        self._check_active(in_channel)
        middle_channel = self.active_middle_channel(in_channel)
        if self.active_expand_ratio == 1 and middle_channel != in_channel:
            # the static layer (no inverted bottleneck at expand ratio 1) would feed its
            # in_channel inputs to a depthwise conv of middle_channel channels (OFA builds
            # it, and it fails in forward)
            raise ValueError(
                f"{type(self).__name__}: in_channel = {in_channel} with expand ratio 1 rounds to "
                f"{middle_channel} middle channels, which the static MBConvLayer (no inverted "
                f"bottleneck) cannot have; use an in_channel that is a multiple of "
                f"{MyNetwork.CHANNEL_DIVISIBLE}")
        return {
            "name": MBConvLayer.__name__,
            "in_channels": in_channel,
            "out_channels": self.active_out_channel,
            "kernel_size": self.active_kernel_size,
            "stride": self.stride,
            "expand_ratio": self.active_expand_ratio,
            "mid_channels": middle_channel,
            "act_func": self.act_func,
            "use_se": self.use_se,
        }

    def re_organize_middle_weights(self, expand_ratio_stage=0):
        """Sorts the middle channels by importance (L1 norm of point_linear's weights over
        them), the most important first, through every weight that touches them (the SE
        block's middle channels are sorted too, by the L1 norm of its expand weights).
        Returns None, or the permutation the previous layer must apply to its outputs
        when there is no inverted bottleneck."""
        _check_stage(type(self).__name__, expand_ratio_stage, len(self.expand_ratio_list))
        sorted_idx = _channel_importance(self.point_linear.conv.conv.weight, self.depth_conv.bn,
                                         expand_ratio_stage, self.expand_ratio_list,
                                         max(self.in_channel_list))
        _index_select_(self.point_linear.conv.conv.weight, 1, sorted_idx)
        adjust_bn_according_to_idx(self.depth_conv.bn.bn, sorted_idx)
        _index_select_(self.depth_conv.conv.conv.weight, 0, sorted_idx)

        if self.use_se:
            reduce, expand = self.depth_conv.se.fc.reduce, self.depth_conv.se.fc.expand
            _index_select_(expand.weight, 0, sorted_idx)  # SE output = the middle channels
            _index_select_(expand.bias, 0, sorted_idx)
            _index_select_(reduce.weight, 1, sorted_idx)  # SE input = the middle channels
            # the SE block's own middle channels, by the L1 norm of the expand weights
            se_idx = torch.sort(torch.sum(torch.abs(expand.weight.data), dim=(0, 2, 3)), dim=0,
                                descending=True)[1]
            _index_select_(expand.weight, 1, se_idx)
            _index_select_(reduce.weight, 0, se_idx)
            _index_select_(reduce.bias, 0, se_idx)

        if self.inverted_bottleneck is None:
            return sorted_idx
        adjust_bn_according_to_idx(self.inverted_bottleneck.bn.bn, sorted_idx)
        _index_select_(self.inverted_bottleneck.conv.conv.weight, 0, sorted_idx)
        return None


# ----------------------------------------------------------------------------- conv


class DynamicConvLayer(_ChannelListLayer):
    """Conv + BN + activation with elastic output channels (input channels follow the
    input). The conv's padding is kernel_size // 2 whatever the dilation (OFA's)."""

    def __init__(self, in_channel_list, out_channel_list, kernel_size=3, stride=1, dilation=1,
                 use_bn=True, act_func="relu6"):
        super().__init__()
        name = type(self).__name__
        self.in_channel_list = _int_list(name, "in_channel_list", in_channel_list)
        self.out_channel_list = _int_list(name, "out_channel_list", out_channel_list)
        _check_int(name, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size = {kernel_size} is not allowed; it must be odd")
        _check_int(name, "stride", stride)
        _check_int(name, "dilation", dilation)
        _check_act(name, act_func)
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.use_bn = use_bn
        self.act_func = act_func

        self.conv = DynamicConv2d(max_in_channels=max(self.in_channel_list),
                                  max_out_channels=max(self.out_channel_list),
                                  kernel_size=self.kernel_size, stride=self.stride,
                                  dilation=self.dilation)
        if self.use_bn:
            self.bn = DynamicBatchNorm2d(max(self.out_channel_list))
        self.act = build_activation(self.act_func)

        self.active_out_channel = max(self.out_channel_list)

    def _check_active(self, in_channel):
        name = type(self).__name__
        _check_channels(name, "active_out_channel", self.active_out_channel, self.out_channels)
        _check_channels(name, "in_channel", in_channel, self.in_channels)

    def active_settings(self, in_channel):
        """(out_channel,), checked: see DynamicMBConvLayer.active_settings."""
        self._check_active(in_channel)
        return (self.active_out_channel,)

    def forward(self, x, settings=None):
        _check_input(type(self).__name__, x)
        if settings is None:
            self._check_active(x.size(1))
            out = self.conv.active_out_channel = self.active_out_channel
        else:
            (out,) = settings
        if self.use_bn:
            return conv_bn_act(self.conv, self.bn, self.act, x, out)
        x = self.conv(x, out)
        return self.act(x) if self.act is not None else x

    @property
    def module_str(self):
        return "DyConv(O%d, K%d, S%d)" % (self.active_out_channel, self.kernel_size, self.stride)

    @property
    def config(self):
        return {
            "name": DynamicConvLayer.__name__,
            "in_channel_list": self.in_channel_list,
            "out_channel_list": self.out_channel_list,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "dilation": self.dilation,
            "use_bn": self.use_bn,
            "act_func": self.act_func,
        }

    def get_active_subnet(self, in_channel, preserve_weight=True):
        sub_layer = set_layer_from_config(self.get_active_subnet_config(in_channel))
        sub_layer = sub_layer.to(_net_device(self))
        if not preserve_weight:
            return sub_layer
        _copy_(sub_layer.conv.weight, self.conv.get_active_filter(self.active_out_channel, in_channel))
        if self.use_bn:
            copy_bn(sub_layer.bn, self.bn.bn)
        return sub_layer

    def get_active_subnet_config(self, in_channel):
        self._check_active(in_channel)
        return {
            "name": ConvLayer.__name__,
            "in_channels": in_channel,
            "out_channels": self.active_out_channel,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "dilation": self.dilation,
            "use_bn": self.use_bn,
            "act_func": self.act_func,
        }


# ----------------------------------------------------------------------------- ResNet


class DynamicResNetBottleneckBlock(_ChannelListLayer):
    """ResNet bottleneck with elastic expand ratio (middle width = expand ratio x output
    channels) and output channels (input channels follow the input)."""

    def __init__(self, in_channel_list, out_channel_list, expand_ratio_list=0.25, kernel_size=3,
                 stride=1, act_func="relu", downsample_mode="avgpool_conv"):
        super().__init__()
        name = type(self).__name__
        self.in_channel_list = _int_list(name, "in_channel_list", in_channel_list)
        self.out_channel_list = _int_list(name, "out_channel_list", out_channel_list)
        self.expand_ratio_list = _ratio_list(name, "expand_ratio_list", expand_ratio_list)
        _check_int(name, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size = {kernel_size} is not allowed; it must be odd")
        _check_int(name, "stride", stride)
        _check_act(name, act_func)
        if downsample_mode not in DOWNSAMPLE_MODES:
            raise ValueError(f"{name}: downsample_mode = {downsample_mode!r} is not one of "
                             f"{list(DOWNSAMPLE_MODES)}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.act_func = act_func
        self.downsample_mode = downsample_mode

        max_in, max_out = max(self.in_channel_list), max(self.out_channel_list)
        max_middle_channel = make_divisible(round(max_out * max(self.expand_ratio_list)),
                                            MyNetwork.CHANNEL_DIVISIBLE)
        self.conv1 = _dyn_conv_bn(DynamicConv2d(max_in, max_middle_channel), max_middle_channel,
                                  self.act_func)
        self.conv2 = _dyn_conv_bn(
            DynamicConv2d(max_middle_channel, max_middle_channel, kernel_size, stride),
            max_middle_channel, self.act_func)
        self.conv3 = _dyn_conv_bn(DynamicConv2d(max_middle_channel, max_out), max_out,
                                  with_act=False)

        if self.stride == 1 and self.in_channel_list == self.out_channel_list:
            self.downsample = IdentityLayer(max_in, max_out)
        elif self.downsample_mode == "conv":
            self.downsample = _dyn_conv_bn(DynamicConv2d(max_in, max_out, stride=stride), max_out,
                                           with_act=False)
        else:
            self.downsample = nn.Sequential(OrderedDict([
                ("avg_pool", nn.AvgPool2d(kernel_size=stride, stride=stride, padding=0,
                                          ceil_mode=True)),
                ("conv", DynamicConv2d(max_in, max_out)),
                ("bn", DynamicBatchNorm2d(max_out)),
            ]))

        self.final_act = build_activation(self.act_func, inplace=True)

        self.active_expand_ratio = max(self.expand_ratio_list)
        self.active_out_channel = max_out

    def _check_active(self, in_channel):
        name = type(self).__name__
        _check_in_list(name, "active_expand_ratio", self.active_expand_ratio, self.expand_ratio_list)
        _check_channels(name, "active_out_channel", self.active_out_channel, self.out_channels)
        _check_channels(name, "in_channel", in_channel, self.in_channels)
        identity = _is_identity(self.downsample)
        if identity and in_channel != self.active_out_channel:
            raise ValueError(f"{name}: in_channel = {in_channel} must equal active_out_channel = "
                             f"{self.active_out_channel}: the shortcut is an identity")

    def active_settings(self, in_channel):
        """(middle_channel, out_channel), checked: see
        DynamicMBConvLayer.active_settings."""
        self._check_active(in_channel)
        return self.active_middle_channels, self.active_out_channel

    def forward(self, x, settings=None):
        _check_input(type(self).__name__, x)
        ds = self.downsample
        if settings is None:
            self._check_active(x.size(1))
            feature_dim, out = self.active_middle_channels, self.active_out_channel
            self.conv1.conv.active_out_channel = feature_dim
            self.conv2.conv.active_out_channel = feature_dim
            self.conv3.conv.active_out_channel = out
            if not _is_identity(ds):
                ds.conv.active_out_channel = out
        else:
            feature_dim, out = settings

        if isinstance(ds, nn.Sequential) and hasattr(ds, "conv") and hasattr(ds, "bn"):
            pooled = ds.avg_pool(x) if hasattr(ds, "avg_pool") else x
            residual = conv_bn_act(ds.conv, ds.bn, None, pooled, out)
        else:
            residual = ds(x)
        x = conv_bn_act(self.conv1.conv, self.conv1.bn, getattr(self.conv1, "act", None), x,
                        feature_dim)
        x = conv_bn_act(self.conv2.conv, self.conv2.bn, getattr(self.conv2, "act", None), x,
                        feature_dim)
        x = conv_bn_act(self.conv3.conv, self.conv3.bn, None, x, out)
        x = x + residual
        return self.final_act(x) if self.final_act is not None else x

    @property
    def module_str(self):
        return "(%s, %s)" % (
            "%dx%d_BottleneckConv_in->%d->%d_S%d" % (
                self.kernel_size, self.kernel_size, self.active_middle_channels,
                self.active_out_channel, self.stride),
            "Identity" if _is_identity(self.downsample) else self.downsample_mode,
        )

    @property
    def config(self):
        return {
            "name": DynamicResNetBottleneckBlock.__name__,
            "in_channel_list": self.in_channel_list,
            "out_channel_list": self.out_channel_list,
            "expand_ratio_list": self.expand_ratio_list,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "act_func": self.act_func,
            "downsample_mode": self.downsample_mode,
        }

    @property
    def active_middle_channels(self):
        return make_divisible(round(self.active_out_channel * self.active_expand_ratio),
                              MyNetwork.CHANNEL_DIVISIBLE)

    def get_active_subnet(self, in_channel, preserve_weight=True):
        sub_layer = set_layer_from_config(self.get_active_subnet_config(in_channel))
        sub_layer = sub_layer.to(_net_device(self))
        if not preserve_weight:
            return sub_layer

        mid, out = self.active_middle_channels, self.active_out_channel
        _copy_(sub_layer.conv1.conv.weight, self.conv1.conv.get_active_filter(mid, in_channel))
        copy_bn(sub_layer.conv1.bn, self.conv1.bn.bn)
        _copy_(sub_layer.conv2.conv.weight, self.conv2.conv.get_active_filter(mid, mid))
        copy_bn(sub_layer.conv2.bn, self.conv2.bn.bn)
        _copy_(sub_layer.conv3.conv.weight, self.conv3.conv.get_active_filter(out, mid))
        copy_bn(sub_layer.conv3.bn, self.conv3.bn.bn)
        if not _is_identity(self.downsample):
            _copy_(sub_layer.downsample.conv.weight,
                   self.downsample.conv.get_active_filter(out, in_channel))
            copy_bn(sub_layer.downsample.bn, self.downsample.bn.bn)
        return sub_layer

    def get_active_subnet_config(self, in_channel):
        self._check_active(in_channel)
        if self.stride == 1 and in_channel == self.active_out_channel \
                and not _is_identity(self.downsample):
            # the static block would take an identity shortcut and drop this block's
            # downsample conv (OFA fails here with an AttributeError)
            raise ValueError(f"{type(self).__name__}: in_channel = active_out_channel = {in_channel} "
                             f"with stride 1 makes the static block's shortcut an identity, but "
                             f"this block's shortcut is {self.downsample_mode!r}")
        return {
            "name": ResNetBottleneckBlock.__name__,
            "in_channels": in_channel,
            "out_channels": self.active_out_channel,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "expand_ratio": self.active_expand_ratio,
            "mid_channels": self.active_middle_channels,
            "act_func": self.act_func,
            "groups": 1,
            "downsample_mode": self.downsample_mode,
        }

    def re_organize_middle_weights(self, expand_ratio_stage=0):
        """Sorts conv2's output channels by importance for conv3, then conv1's output
        channels by importance for conv2, the most important first (OFA's order)."""
        _check_stage(type(self).__name__, expand_ratio_stage, len(self.expand_ratio_list))
        max_out = max(self.out_channel_list)
        for src, dst in ((self.conv2, self.conv3), (self.conv1, self.conv2)):
            sorted_idx = _channel_importance(dst.conv.conv.weight, src.bn, expand_ratio_stage,
                                             self.expand_ratio_list, max_out)
            _index_select_(dst.conv.conv.weight, 1, sorted_idx)
            adjust_bn_according_to_idx(src.bn.bn, sorted_idx)
            _index_select_(src.conv.conv.weight, 0, sorted_idx)
        return None

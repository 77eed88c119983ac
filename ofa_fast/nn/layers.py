"""OFA's static layers (ofa.utils.layers): the layers a subnet is made of. Same class
names, constructor arguments, config dicts (with OFA's `name` strings, so a net config
builds with either package's set_layer_from_config), module_str, submodule order and
state_dict keys. Submodules are created in OFA's order too, so one random seed gives
both packages the same initial weights."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .. import ops as _ops
from .fused import _ACT_KIND, _act_, _foldable_bn, bn_affine, fusion_enabled
from .utils import (
    MyModule,
    MyNetwork,
    SEModule,
    ShuffleLayer,
    build_activation,
    get_same_padding,
    make_divisible,
    min_divisible_value,
)

__all__ = [
    "set_layer_from_config",
    "My2DLayer",
    "ConvLayer",
    "IdentityLayer",
    "LinearLayer",
    "MultiHeadLinearLayer",
    "ZeroLayer",
    "MBConvLayer",
    "ResidualBlock",
    "ResNetBottleneckBlock",
]


def _exporting():
    """True while the module is traced for deployment (torch.export, ONNX, TorchScript):
    the graph then holds PyTorch's own convolution, which every runtime knows."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # (not in every PyTorch)
    return ((is_exporting is not None and is_exporting()) or torch.onnx.is_in_onnx_export()
            or torch.jit.is_tracing() or torch.jit.is_scripting())


def _hooked(module):
    """True if calling `module` runs more than its class's forward: hooks of its own or
    global ones (OFA's count_net_flops counts through forward hooks), an instance-level
    forward (OFA's and ofa_fast's BN recalibration measure through one), or a compiled
    call."""
    g = nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or g._global_forward_hooks
                or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks or "forward" in module.__dict__
                or getattr(module, "_compiled_call_impl", None) is not None)


def conv_route(conv, x):
    """How a static layer runs its plain nn.Conv2d `conv` on x: "depthwise" (ops.dwconv2d),
    "pointwise" (ops.pointwise_conv2d) or None (calling the module). ofa_fast's kernels
    take the two convs PyTorch's CPU path serves slowly:

    - depthwise (groups == in == out channels, no bias, square odd kernel, OFA's padding
      kernel_size // 2 * dilation): PyTorch's NCHW depthwise 3 x 3 forward was 6x slower
      at 16 channels, 64 x 64, batch 16;
    - 1 x 1 (groups 1, no padding, dilation 1): PyTorch's backward of the 960 -> 1280
      feature-mix conv on 1 x 1 maps took 26 ms at batch 64, ofa_fast's 5.

    None for: a conv with hooks (they must run: OFA's MAC counter is one) or a compiled
    call, a subclass of nn.Conv2d, GPU tensors (cuDNN serves these convs well), every
    other conv, input that is not 4-D or does not match the weight's channels or dtype,
    and deployment tracing (torch.export, ONNX, TorchScript: the graph keeps aten's
    convolution, which every runtime knows). Under ofa_fast.use_backend("reference") the
    ops run PyTorch's convolution too."""
    if type(conv) is not nn.Conv2d or _exporting() or _hooked(conv) or (
            not isinstance(x, torch.Tensor) or x.dim() != 4 or x.size(1) != conv.in_channels
            or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
            or x.device.type != "cpu" or conv.weight.device.type != "cpu"
            or (x.dtype != conv.weight.dtype and not torch.is_autocast_enabled("cpu"))):
        return None
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, \
        conv.padding
    if sh != sw:
        return None
    if kh == kw == 1 and conv.groups == 1 and ph == pw == 0 and dh == dw == 1:
        return "pointwise"
    if (kh == kw and kh % 2 == 1 and dh == dw and ph == pw == kh // 2 * dh
            and conv.bias is None and conv.groups == conv.in_channels == conv.out_channels):
        return "depthwise"
    return None


def _bn_act(bn, act, x):
    """act(bn(x)) as one op (ops.batch_norm_act: train and eval, running statistics
    updated as nn.BatchNorm2d does) for a plain nn.BatchNorm2d followed by a ReLU, ReLU6
    or Hswish module, neither with hooks nor an instance forward, fusion on (the
    ofa_fast.nn.fusion switch); None where that does not apply."""
    kind = _ACT_KIND.get(type(act))
    if (kind is None or type(bn) is not nn.BatchNorm2d or not fusion_enabled() or _exporting()
            or _hooked(bn) or _hooked(act) or not isinstance(x, torch.Tensor) or x.dim() != 4
            or x.size(1) != bn.num_features):
        return None
    return _ops.batch_norm_act(x, bn, kind)


def _folded_pointwise(conv, bn, act, x):
    """Inference (eval-mode BN, nothing tracking gradients): act(bn(conv(x))) for a 1x1
    conv that conv_route takes (the caller checked), as one GEMM with the BN folded into
    the weight (computed data, [out, in]) and the activation applied to each output block
    in cache (ops.pointwise_conv2d_act); act None or a ReLU / ReLU6 / Hswish module. None
    where that does not apply."""
    kind = "none" if act is None else _ACT_KIND.get(type(act))
    if (kind is None or type(bn) is not nn.BatchNorm2d or not _foldable_bn(bn)
            or not fusion_enabled() or _hooked(bn) or (act is not None and _hooked(act))
            or bn.num_features != conv.out_channels):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(
            p is not None and p.requires_grad for p in (conv.weight, conv.bias, bn.weight, bn.bias))):
        return None
    scale, shift = bn_affine(bn)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    folded = conv.weight * scale.view(-1, 1, 1, 1)
    y = _ops.pointwise_conv2d_act(x, folded, shift, conv.out_channels, conv.stride[0], kind,
                                  op="nn.Conv2d")
    if y is None:  # no such op on this backend: the GEMM, then the activation
        y = _ops.pointwise_conv2d(x, folded, shift, conv.out_channels, conv.stride[0],
                                  op="nn.Conv2d")
        y = _act_(act, y)
    return y


def _run(modules, x):
    """The modules in order (None skipped): in inference a 1x1 conv, its BN and the
    activation after them as _folded_pointwise runs them; convs as _call runs them; a BN
    and the activation after it as _bn_act runs them; anything else called as a module."""
    modules = [m for m in modules if m is not None]
    i = 0
    while i < len(modules):
        module = modules[i]
        route = conv_route(module, x) if type(module) is nn.Conv2d else None
        if (route == "pointwise" and i + 1 < len(modules)
                and type(modules[i + 1]) is nn.BatchNorm2d and not modules[i + 1].training):
            act = modules[i + 2] if i + 2 < len(modules) and type(modules[i + 2]) in _ACT_KIND \
                else None
            y = _folded_pointwise(module, modules[i + 1], act, x)
            if y is not None:
                x, i = y, i + (2 if act is None else 3)
                continue
        if i + 1 < len(modules) and type(module) is nn.BatchNorm2d:
            y = _bn_act(module, modules[i + 1], x)
            if y is not None:
                x, i = y, i + 2
                continue
        x, i = _run_conv(module, x, route), i + 1
    return x


def _call(module, x):
    """module(x); a plain nn.Conv2d that conv_route takes runs ofa_fast's op instead."""
    return _run_conv(module, x, conv_route(module, x) if type(module) is nn.Conv2d else None)


def _run_conv(module, x, route):
    """module(x), or the ofa_fast op of conv_route's answer `route` for it."""
    if route == "pointwise":
        return _ops.pointwise_conv2d(x, module.weight, module.bias, module.out_channels,
                                     module.stride[0], op="nn.Conv2d")
    if route == "depthwise":
        return _ops.dwconv2d(x, module.weight, module.kernel_size[0], module.stride[0],
                             module.dilation[0], module.padding[0])
    return module(x)


def _layer_classes():
    return {
        "ConvLayer": ConvLayer,
        "IdentityLayer": IdentityLayer,
        "LinearLayer": LinearLayer,
        "MultiHeadLinearLayer": MultiHeadLinearLayer,
        "ZeroLayer": ZeroLayer,
        "MBConvLayer": MBConvLayer,
        "MBInvertedConvLayer": MBConvLayer,  # OFA's older name, in old net configs
        "ResidualBlock": ResidualBlock,
        "ResNetBottleneckBlock": ResNetBottleneckBlock,
    }


def set_layer_from_config(layer_config):
    """Builds the layer a config dict describes (its "name" picks the class); None gives
    None. Unlike OFA's, the dict is left unchanged."""
    if layer_config is None:
        return None
    if not isinstance(layer_config, dict) or "name" not in layer_config:
        raise ValueError(f"set_layer_from_config: {layer_config!r} is not a layer config (a dict "
                         "with a 'name')")
    classes = _layer_classes()
    name = layer_config["name"]
    if name not in classes:
        raise ValueError(f"set_layer_from_config: unknown layer name {name!r}; known: "
                         f"{sorted(classes)}")
    return classes[name].build_from_config({k: v for k, v in layer_config.items() if k != "name"})


def _config_args(cls, config, names=None):
    """config without its "name" (which, when present, must be the class's)."""
    names = names or (cls.__name__,)
    if "name" in config and config["name"] not in names:
        raise ValueError(f"{cls.__name__}.build_from_config: config name {config['name']!r} is "
                         f"not {names[0]!r}")
    return {k: v for k, v in config.items() if k != "name"}


def _check_int(owner, name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} = {value!r} is not allowed; it must be an int >= {minimum}")


def _check_kernel_size(owner, kernel_size):
    try:
        get_same_padding(kernel_size)
    except ValueError:
        raise ValueError(f"{owner}: kernel_size = {kernel_size!r} is not allowed; it must be an odd "
                         "int >= 1 (or a pair of them)") from None


def _check_dropout(owner, rate):
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"{owner}: dropout_rate = {rate!r} must be a number in [0, 1)")


def _check_act(owner, act_func):
    try:
        build_activation(act_func)
    except ValueError as e:
        raise ValueError(f"{owner}: {e}") from None


def _ops_list(owner, ops_order):
    ops = ops_order.split("_") if isinstance(ops_order, str) else None
    if ops is None or sorted(ops) != ["act", "bn", "weight"]:
        raise ValueError(f"{owner}: ops_order = {ops_order!r} must order 'weight', 'bn' and 'act' "
                         "joined by '_', e.g. 'weight_bn_act'")
    return ops


class _OrderedOpsMixin:
    """The weight/bn/act sandwich of My2DLayer and LinearLayer, in `ops_order`."""

    @property
    def ops_list(self):
        return self.ops_order.split("_")

    @property
    def bn_before_weight(self):
        ops = _ops_list(type(self).__name__, self.ops_order)
        return ops.index("bn") < ops.index("weight")

    def _add_ops(self, bn, act, dropout, weight_modules):
        # dropout goes right before the weight op; with no weight op (IdentityLayer) it
        # is dropped altogether, as in OFA
        weight = OrderedDict()
        if weight_modules is not None:
            if dropout is not None:
                weight["dropout"] = dropout
            weight.update(weight_modules)
        parts = {"bn": {"bn": bn} if bn is not None else {},
                 "act": {"act": act} if act is not None else {},
                 "weight": weight}
        for op in self.ops_list:
            for name, module in parts[op].items():
                self.add_module(name, module)

    def forward(self, x):
        return _run(self._modules.values(), x)


class My2DLayer(_OrderedOpsMixin, MyModule):
    """Base of ConvLayer and IdentityLayer: weight op (from weight_op()), BatchNorm2d,
    activation and dropout, in `ops_order`."""

    def __init__(self, in_channels, out_channels, use_bn=True, act_func="relu", dropout_rate=0,
                 ops_order="weight_bn_act"):
        super().__init__()
        name = type(self).__name__
        self._check_channels(in_channels, out_channels, use_bn)
        _check_dropout(name, dropout_rate)
        _check_act(name, act_func)
        ops = _ops_list(name, ops_order)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_bn = use_bn
        self.act_func = act_func
        self.dropout_rate = dropout_rate
        self.ops_order = ops_order

        bn = nn.BatchNorm2d(in_channels if self.bn_before_weight else out_channels) if use_bn else None
        # in place only when something (bn) stands between the layer's input and the act
        act = build_activation(act_func, ops[0] != "act" and bool(use_bn))
        dropout = nn.Dropout2d(dropout_rate, inplace=True) if dropout_rate > 0 else None
        self._add_ops(bn, act, dropout, self.weight_op())

    def _check_channels(self, in_channels, out_channels, use_bn):
        _check_int(type(self).__name__, "in_channels", in_channels)
        _check_int(type(self).__name__, "out_channels", out_channels)

    def weight_op(self):
        """OrderedDict of the weight modules (or None for no weight op)."""
        raise NotImplementedError

    @property
    def module_str(self):
        raise NotImplementedError

    @property
    def config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "use_bn": self.use_bn,
            "act_func": self.act_func,
            "dropout_rate": self.dropout_rate,
            "ops_order": self.ops_order,
        }

    @staticmethod
    def build_from_config(config):
        raise NotImplementedError


class ConvLayer(My2DLayer):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1, groups=1,
                 bias=False, has_shuffle=False, use_se=False, use_bn=True, act_func="relu",
                 dropout_rate=0, ops_order="weight_bn_act"):
        _check_kernel_size("ConvLayer", kernel_size)
        _check_int("ConvLayer", "stride", stride)
        _check_int("ConvLayer", "dilation", dilation)
        _check_int("ConvLayer", "groups", groups)
        # weight_op() runs inside My2DLayer.__init__ and reads these
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.bias = bias
        self.has_shuffle = has_shuffle
        self.use_se = use_se
        super().__init__(in_channels, out_channels, use_bn, act_func, dropout_rate, ops_order)
        if self.use_se:
            self.add_module("se", SEModule(self.out_channels))

    def weight_op(self):
        padding = get_same_padding(self.kernel_size)
        padding = (tuple(p * self.dilation for p in padding) if isinstance(padding, tuple)
                   else padding * self.dilation)
        groups = min_divisible_value(self.in_channels, self.groups)
        if self.out_channels % groups:
            raise ValueError(f"ConvLayer: out_channels = {self.out_channels} is not divisible by "
                             f"groups = {groups}")
        ops = OrderedDict(conv=nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                                         stride=self.stride, padding=padding,
                                         dilation=self.dilation, groups=groups, bias=self.bias))
        if self.has_shuffle and self.groups > 1:
            ops["shuffle"] = ShuffleLayer(self.groups)
        return ops

    @property
    def module_str(self):
        kh, kw = self.kernel_size if isinstance(self.kernel_size, tuple) else (self.kernel_size,) * 2
        kind = ("Dilated" if self.dilation > 1 else "") + ("Group" if self.groups != 1 else "")
        s = "%dx%d_%sConv_O%d" % (kh, kw, kind, self.out_channels)
        if self.use_se:
            s = "SE_" + s
        s += "_" + str(self.act_func).upper()
        if self.use_bn:
            if isinstance(self.bn, nn.GroupNorm):
                s += "_GN%d" % self.bn.num_groups
            elif isinstance(self.bn, nn.BatchNorm2d):
                s += "_BN"
        return s

    @property
    def config(self):
        return {
            "name": ConvLayer.__name__,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "dilation": self.dilation,
            "groups": self.groups,
            "bias": self.bias,
            "has_shuffle": self.has_shuffle,
            "use_se": self.use_se,
            **super().config,
        }

    @staticmethod
    def build_from_config(config):
        return ConvLayer(**_config_args(ConvLayer, config))


class IdentityLayer(My2DLayer):
    """No weight op: optional bn and activation only (a dropout_rate is ignored, as in OFA).

    Without bn, in_channels / out_channels may also be lists of ints, kept as given: OFA's
    published net configs (its model zoo's specialized nets) write them as [24]."""

    def __init__(self, in_channels, out_channels, use_bn=False, act_func=None, dropout_rate=0,
                 ops_order="weight_bn_act"):
        super().__init__(in_channels, out_channels, use_bn, act_func, dropout_rate, ops_order)

    def _check_channels(self, in_channels, out_channels, use_bn):
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, list) and not use_bn:
                if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                    for v in value):
                    raise ValueError(f"{name}: {arg} = {value!r} is not allowed; it must be an int "
                                     ">= 1 (or, without bn, a non-empty list of them)")
            else:
                _check_int(name, arg, value)

    def weight_op(self):
        return None

    @property
    def module_str(self):
        return "Identity"

    @property
    def config(self):
        return {"name": IdentityLayer.__name__, **super().config}

    @staticmethod
    def build_from_config(config):
        return IdentityLayer(**_config_args(IdentityLayer, config))


class LinearLayer(_OrderedOpsMixin, MyModule):
    """nn.Linear with optional BatchNorm1d, activation and dropout, in `ops_order`."""

    def __init__(self, in_features, out_features, bias=True, use_bn=False, act_func=None,
                 dropout_rate=0, ops_order="weight_bn_act"):
        super().__init__()
        name = type(self).__name__
        _check_int(name, "in_features", in_features)
        _check_int(name, "out_features", out_features)
        _check_dropout(name, dropout_rate)
        _check_act(name, act_func)
        ops = _ops_list(name, ops_order)
        self.in_features = in_features
        self.out_features = out_features
        self.bias = bias
        self.use_bn = use_bn
        self.act_func = act_func
        self.dropout_rate = dropout_rate
        self.ops_order = ops_order

        bn = nn.BatchNorm1d(in_features if self.bn_before_weight else out_features) if use_bn else None
        act = build_activation(act_func, ops[0] != "act")
        dropout = nn.Dropout(dropout_rate, inplace=True) if dropout_rate > 0 else None
        self._add_ops(bn, act, dropout,
                      OrderedDict(linear=nn.Linear(in_features, out_features, bias)))

    @property
    def module_str(self):
        return "%dx%d_Linear" % (self.in_features, self.out_features)

    @property
    def config(self):
        return {
            "name": LinearLayer.__name__,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "use_bn": self.use_bn,
            "act_func": self.act_func,
            "dropout_rate": self.dropout_rate,
            "ops_order": self.ops_order,
        }

    @staticmethod
    def build_from_config(config):
        return LinearLayer(**_config_args(LinearLayer, config))


class MultiHeadLinearLayer(MyModule):
    """num_heads linear heads on one input; output [N, num_heads, out_features]."""

    def __init__(self, in_features, out_features, num_heads=1, bias=True, dropout_rate=0):
        super().__init__()
        name = type(self).__name__
        _check_int(name, "in_features", in_features)
        _check_int(name, "out_features", out_features)
        _check_int(name, "num_heads", num_heads)
        _check_dropout(name, dropout_rate)
        self.in_features = in_features
        self.out_features = out_features
        self.num_heads = num_heads
        self.bias = bias
        self.dropout_rate = dropout_rate

        self.dropout = nn.Dropout(dropout_rate, inplace=True) if dropout_rate > 0 else None
        self.layers = nn.ModuleList(nn.Linear(in_features, out_features, bias)
                                    for _ in range(num_heads))

    def forward(self, inputs):
        if self.dropout is not None:
            inputs = self.dropout(inputs)
        return torch.stack([layer(inputs) for layer in self.layers], dim=1)

    @property
    def module_str(self):
        return repr(self)

    @property
    def config(self):
        return {
            "name": MultiHeadLinearLayer.__name__,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "num_heads": self.num_heads,
            "bias": self.bias,
            "dropout_rate": self.dropout_rate,
        }

    @staticmethod
    def build_from_config(config):
        return MultiHeadLinearLayer(**_config_args(MultiHeadLinearLayer, config))

    def __repr__(self):
        return ("MultiHeadLinear(in_features=%d, out_features=%d, num_heads=%d, bias=%s, "
                "dropout_rate=%s)" % (self.in_features, self.out_features, self.num_heads,
                                      self.bias, self.dropout_rate))


class ZeroLayer(MyModule):
    """A skipped op: ResidualBlock passes its input through instead of calling it."""

    def forward(self, x):
        raise ValueError("ZeroLayer has no forward: it stands for a skipped op (ResidualBlock "
                         "passes the input through)")

    @property
    def module_str(self):
        return "Zero"

    @property
    def config(self):
        return {"name": ZeroLayer.__name__}

    @staticmethod
    def build_from_config(config):
        _config_args(ZeroLayer, config)
        return ZeroLayer()


def _seq_forward(seq, x):
    """nn.Sequential's forward, skipping an activation that is None (act_func=None), its
    modules run as _run runs them. A Sequential with hooks is called as a module."""
    return seq(x) if _hooked(seq) else _run(seq, x)


def _conv_bn_act(conv, channels, act_func=None, with_act=True):
    ops = [("conv", conv), ("bn", nn.BatchNorm2d(channels))]
    if with_act:
        ops.append(("act", build_activation(act_func, inplace=True)))
    return ops


class MBConvLayer(MyModule):
    """MobileNetV2/V3 inverted residual body: 1x1 expand (absent when expand_ratio is
    1), kxk depthwise (+ SE), 1x1 project."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, expand_ratio=6,
                 mid_channels=None, act_func="relu6", use_se=False, groups=None):
        super().__init__()
        name = type(self).__name__
        _check_int(name, "in_channels", in_channels)
        _check_int(name, "out_channels", out_channels)
        _check_kernel_size(name, kernel_size)
        _check_int(name, "stride", stride)
        # None: the middle width is mid_channels alone (OFA's MobileNetV3Large builds so)
        if not (expand_ratio is None and mid_channels is not None) and (
                isinstance(expand_ratio, bool) or not isinstance(expand_ratio, (int, float))
                or expand_ratio <= 0):
            raise ValueError(f"{name}: expand_ratio = {expand_ratio!r} must be a positive number "
                             "(or None, with mid_channels)")
        if mid_channels is not None:
            _check_int(name, "mid_channels", mid_channels)
        if groups is not None:
            _check_int(name, "groups", groups)
        _check_act(name, act_func)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.expand_ratio = expand_ratio
        self.mid_channels = mid_channels
        self.act_func = act_func
        self.use_se = use_se
        self.groups = groups

        # no make_divisible here (OFA's dynamic layer rounds and passes mid_channels)
        feature_dim = round(in_channels * expand_ratio) if mid_channels is None else mid_channels
        if feature_dim < 1:
            raise ValueError(f"{name}: round(in_channels * expand_ratio) = {feature_dim} middle "
                             "channels; it must be >= 1")

        if expand_ratio == 1:
            self.inverted_bottleneck = None
        else:
            self.inverted_bottleneck = nn.Sequential(OrderedDict(_conv_bn_act(
                nn.Conv2d(in_channels, feature_dim, 1, 1, 0, bias=False), feature_dim, act_func)))

        dw_groups = feature_dim if groups is None else min_divisible_value(feature_dim, groups)
        depth_ops = _conv_bn_act(
            nn.Conv2d(feature_dim, feature_dim, kernel_size, stride, get_same_padding(kernel_size),
                      groups=dw_groups, bias=False), feature_dim, act_func)
        if use_se:
            depth_ops.append(("se", SEModule(feature_dim)))
        self.depth_conv = nn.Sequential(OrderedDict(depth_ops))

        self.point_linear = nn.Sequential(OrderedDict(_conv_bn_act(
            nn.Conv2d(feature_dim, out_channels, 1, 1, 0, bias=False), out_channels, with_act=False)))

    def forward(self, x):
        if self.inverted_bottleneck is not None:
            x = _seq_forward(self.inverted_bottleneck, x)
        return _seq_forward(self.point_linear, _seq_forward(self.depth_conv, x))

    @property
    def module_str(self):
        expand_ratio = self.expand_ratio if self.mid_channels is None else \
            self.mid_channels // self.in_channels
        s = "%dx%d_MBConv%d_%s" % (self.kernel_size, self.kernel_size, expand_ratio,
                                   str(self.act_func).upper())
        if self.use_se:
            s = "SE_" + s
        s += "_O%d" % self.out_channels
        if self.groups is not None:
            s += "_G%d" % self.groups
        bn = self.point_linear.bn
        if isinstance(bn, nn.GroupNorm):
            s += "_GN%d" % bn.num_groups
        elif isinstance(bn, nn.BatchNorm2d):
            s += "_BN"
        return s

    @property
    def config(self):
        return {
            "name": MBConvLayer.__name__,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "expand_ratio": self.expand_ratio,
            "mid_channels": self.mid_channels,
            "act_func": self.act_func,
            "use_se": self.use_se,
            "groups": self.groups,
        }

    @staticmethod
    def build_from_config(config):
        return MBConvLayer(**_config_args(MBConvLayer, config, ("MBConvLayer", "MBInvertedConvLayer")))


class ResidualBlock(MyModule):
    """conv(x) + shortcut(x); a missing (None / ZeroLayer) conv gives x, a missing
    shortcut gives conv(x)."""

    def __init__(self, conv, shortcut):
        super().__init__()
        self.conv = conv
        self.shortcut = shortcut

    def forward(self, x):
        if self.conv is None or isinstance(self.conv, ZeroLayer):
            return x
        if self.shortcut is None or isinstance(self.shortcut, ZeroLayer):
            return self.conv(x)
        return self.conv(x) + self.shortcut(x)

    @property
    def module_str(self):
        return "(%s, %s)" % (self.conv.module_str if self.conv is not None else None,
                             self.shortcut.module_str if self.shortcut is not None else None)

    @property
    def config(self):
        return {
            "name": ResidualBlock.__name__,
            "conv": self.conv.config if self.conv is not None else None,
            "shortcut": self.shortcut.config if self.shortcut is not None else None,
        }

    @staticmethod
    def build_from_config(config):
        # "MobileInvertedResidualBlock": OFA's older name, in its published net configs
        config = _config_args(ResidualBlock, config, ("ResidualBlock", "MobileInvertedResidualBlock"))
        # "mobile_inverted_conv": OFA's older key, in old net configs
        conv_config = config["conv"] if "conv" in config else config.get("mobile_inverted_conv")
        return ResidualBlock(set_layer_from_config(conv_config),
                             set_layer_from_config(config.get("shortcut")))

    @property
    def mobile_inverted_conv(self):
        return self.conv


DOWNSAMPLE_MODES = ("avgpool_conv", "conv")


class ResNetBottleneckBlock(MyModule):
    """ResNet bottleneck: 1x1 -> kxk (stride) -> 1x1, plus a shortcut (identity, 1x1 conv
    with stride, or avg pool then 1x1 conv), then the activation."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, expand_ratio=0.25,
                 mid_channels=None, act_func="relu", groups=1, downsample_mode="avgpool_conv"):
        super().__init__()
        name = type(self).__name__
        _check_int(name, "in_channels", in_channels)
        _check_int(name, "out_channels", out_channels)
        _check_kernel_size(name, kernel_size)
        _check_int(name, "stride", stride)
        _check_int(name, "groups", groups)
        if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, (int, float)) \
                or expand_ratio <= 0:
            raise ValueError(f"{name}: expand_ratio = {expand_ratio!r} must be a positive number")
        if mid_channels is not None:
            _check_int(name, "mid_channels", mid_channels)
        if downsample_mode not in DOWNSAMPLE_MODES:
            raise ValueError(f"{name}: downsample_mode = {downsample_mode!r} is not one of "
                             f"{list(DOWNSAMPLE_MODES)}")
        _check_act(name, act_func)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.expand_ratio = expand_ratio
        self.act_func = act_func
        self.groups = groups
        self.downsample_mode = downsample_mode

        feature_dim = round(out_channels * expand_ratio) if mid_channels is None else mid_channels
        feature_dim = make_divisible(feature_dim, MyNetwork.CHANNEL_DIVISIBLE)
        self.mid_channels = feature_dim  # the rounded value goes into the config, as in OFA
        if feature_dim % groups:
            raise ValueError(f"{name}: {feature_dim} middle channels are not divisible by groups = "
                             f"{groups}")

        self.conv1 = nn.Sequential(OrderedDict(_conv_bn_act(
            nn.Conv2d(in_channels, feature_dim, 1, 1, 0, bias=False), feature_dim, act_func)))
        self.conv2 = nn.Sequential(OrderedDict(_conv_bn_act(
            nn.Conv2d(feature_dim, feature_dim, kernel_size, stride, get_same_padding(kernel_size),
                      groups=groups, bias=False), feature_dim, act_func)))
        self.conv3 = nn.Sequential(OrderedDict(_conv_bn_act(
            nn.Conv2d(feature_dim, out_channels, 1, 1, 0, bias=False), out_channels, with_act=False)))

        if stride == 1 and in_channels == out_channels:
            self.downsample = IdentityLayer(in_channels, out_channels)
        elif downsample_mode == "conv":
            self.downsample = nn.Sequential(OrderedDict(_conv_bn_act(
                nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False), out_channels,
                with_act=False)))
        else:
            self.downsample = nn.Sequential(OrderedDict(
                [("avg_pool", nn.AvgPool2d(kernel_size=stride, stride=stride, padding=0,
                                           ceil_mode=True))]
                + _conv_bn_act(nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
                               out_channels, with_act=False)))

        self.final_act = build_activation(act_func, inplace=True)

    def forward(self, x):
        residual = (_seq_forward(self.downsample, x) if isinstance(self.downsample, nn.Sequential)
                    else self.downsample(x))
        x = _seq_forward(self.conv3, _seq_forward(self.conv2, _seq_forward(self.conv1, x)))
        x = x + residual
        return self.final_act(x) if self.final_act is not None else x

    @property
    def module_str(self):
        return "(%s, %s)" % (
            "%dx%d_BottleneckConv_%d->%d->%d_S%d_G%d" % (
                self.kernel_size, self.kernel_size, self.in_channels, self.mid_channels,
                self.out_channels, self.stride, self.groups),
            "Identity" if isinstance(self.downsample, IdentityLayer) else self.downsample_mode,
        )

    @property
    def config(self):
        return {
            "name": ResNetBottleneckBlock.__name__,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "expand_ratio": self.expand_ratio,
            "mid_channels": self.mid_channels,
            "act_func": self.act_func,
            "groups": self.groups,
            "downsample_mode": self.downsample_mode,
        }

    @staticmethod
    def build_from_config(config):
        return ResNetBottleneckBlock(**_config_args(ResNetBottleneckBlock, config))

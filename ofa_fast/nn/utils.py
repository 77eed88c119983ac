"""OFA's small helpers (ofa.utils: common_tools, pytorch_modules, my_modules, and the BN
helpers of elastic_nn.modules.dynamic_layers), with OFA's names, numbers and state_dict
keys, and with argument checks that name the bad value.

MyNetwork.CHANNEL_DIVISIBLE is the one channel-rounding constant: SEModule and the
dynamic layers read it at call time, as OFA does, so changing it changes them all.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # val2list passes numpy arrays through, as OFA's does
    from numpy import ndarray as _ndarray
except ImportError:  # pragma: no cover
    _ndarray = list

__all__ = [
    "make_divisible",
    "val2list",
    "get_same_padding",
    "sub_filter_start_end",
    "min_divisible_value",
    "build_activation",
    "ACTIVATIONS",
    "Hswish",
    "Hsigmoid",
    "SEModule",
    "MyGlobalAvgPool2d",
    "ShuffleLayer",
    "MyModule",
    "MyNetwork",
    "set_bn_param",
    "get_bn_param",
    "replace_bn_with_gn",
    "copy_bn",
    "adjust_bn_according_to_idx",
    "init_models",
    "MODEL_INITS",
]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(owner, name, value, minimum=1):
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{owner}: {name} = {value!r} is not allowed; it must be an int >= {minimum}")


# ----------------------------------------------------------------------------- numbers


def make_divisible(v, divisor, min_val=None):
    """OFA's (TF MobileNet's) channel rounding: the nearest multiple of `divisor`, at
    least `min_val` (default `divisor`), and never more than 10% below `v`."""
    _check_int("make_divisible", "divisor", divisor)
    if min_val is None:
        min_val = divisor
    # int() truncates toward zero, exactly as OFA's rounding does
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def val2list(val, repeat_time=1):
    """A list as is, a tuple as a list, anything else repeated `repeat_time` times."""
    if isinstance(val, (list, _ndarray)):
        return val
    if isinstance(val, tuple):
        return list(val)
    return [val] * repeat_time


def get_same_padding(kernel_size):
    """k // 2 for an odd int k; a pair for a pair of odd ints."""
    if isinstance(kernel_size, tuple):
        if len(kernel_size) != 2:
            raise ValueError(f"get_same_padding: kernel_size = {kernel_size!r} must be an odd int "
                             "or a pair of odd ints")
        return get_same_padding(kernel_size[0]), get_same_padding(kernel_size[1])
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"get_same_padding: kernel_size = {kernel_size!r} must be an odd int >= 1 "
                         "or a pair of them")
    return kernel_size // 2


def sub_filter_start_end(kernel_size, sub_kernel_size):
    """[start, end) of the centred sub_kernel_size window in a kernel_size filter."""
    if not (_is_int(kernel_size) and _is_int(sub_kernel_size) and kernel_size % 2 == 1
            and sub_kernel_size % 2 == 1 and 1 <= sub_kernel_size <= kernel_size):
        raise ValueError(f"sub_filter_start_end: sub_kernel_size = {sub_kernel_size!r} must be an odd "
                         f"int between 1 and kernel_size = {kernel_size!r} (odd)")
    start = kernel_size // 2 - sub_kernel_size // 2
    return start, start + sub_kernel_size


def min_divisible_value(n1, v1):
    """The largest value <= v1 that divides n1 (n1 itself when v1 >= n1)."""
    _check_int("min_divisible_value", "n1", n1)
    _check_int("min_divisible_value", "v1", v1)
    if v1 >= n1:
        return n1
    while n1 % v1 != 0:
        v1 -= 1
    return v1


# ----------------------------------------------------------------------------- modules


class Hswish(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        # x * relu6(x + 3) / 6 in one pass (bitwise OFA's forward); never in place on x,
        # as OFA's inplace flag only ever applied to its temporary x + 3
        return F.hardswish(x)

    def __repr__(self):
        return "Hswish()"


class Hsigmoid(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        # OFA's formula (it only sees SE's pooled [N, C, 1, 1] vectors: speed is moot, and
        # F.hardsigmoid's backward rounds its 1/6 in float32 even for float64 tensors);
        # relu6 runs in place on the temporary x + 3, never on x
        return F.relu6(x + 3.0, inplace=self.inplace) / 6.0

    def __repr__(self):
        return "Hsigmoid()"


ACTIVATIONS = ("relu", "relu6", "tanh", "sigmoid", "h_swish", "h_sigmoid", None, "none")


def build_activation(act_func, inplace=True):
    """The activation module for OFA's name of it; None (or "none") gives None."""
    if act_func is None or act_func == "none":
        return None
    if act_func == "relu":
        return nn.ReLU(inplace=inplace)
    if act_func == "relu6":
        return nn.ReLU6(inplace=inplace)
    if act_func == "tanh":
        return nn.Tanh()
    if act_func == "sigmoid":
        return nn.Sigmoid()
    if act_func == "h_swish":
        return Hswish(inplace=inplace)
    if act_func == "h_sigmoid":
        return Hsigmoid(inplace=inplace)
    raise ValueError(f"build_activation: act_func = {act_func!r} is not supported; use one of "
                     f"{list(ACTIVATIONS)}")


class ShuffleLayer(nn.Module):
    """Channel shuffle across `groups` (ShuffleNet)."""

    def __init__(self, groups):
        super().__init__()
        _check_int(type(self).__name__, "groups", groups)
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.size()
        if c % self.groups:
            raise ValueError(f"ShuffleLayer: {c} input channels are not divisible by groups = "
                             f"{self.groups}")
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous()
        return x.view(n, c, h, w)

    def __repr__(self):
        return "ShuffleLayer(groups=%d)" % self.groups


class MyGlobalAvgPool2d(nn.Module):
    def __init__(self, keep_dim=True):
        super().__init__()
        self.keep_dim = keep_dim

    def forward(self, x):
        return x.mean(3, keepdim=self.keep_dim).mean(2, keepdim=self.keep_dim)

    def __repr__(self):
        return "MyGlobalAvgPool2d(keep_dim=%s)" % self.keep_dim


class MyModule(nn.Module):
    """OFA's layer interface: forward, module_str, config, build_from_config."""

    def forward(self, x):
        raise NotImplementedError

    @property
    def module_str(self):
        raise NotImplementedError

    @property
    def config(self):
        raise NotImplementedError

    @staticmethod
    def build_from_config(config):
        raise NotImplementedError


class MyNetwork(MyModule):
    CHANNEL_DIVISIBLE = 8  # the one channel-rounding constant (OFA's)

    def zero_last_gamma(self):
        raise NotImplementedError

    @property
    def grouped_block_index(self):
        raise NotImplementedError

    def set_bn_param(self, momentum, eps, gn_channel_per_group=None, **kwargs):
        set_bn_param(self, momentum, eps, gn_channel_per_group, **kwargs)

    def get_bn_param(self):
        return get_bn_param(self)

    def get_parameters(self, keys=None, mode="include"):
        """Trainable parameters; with `keys`, those whose names contain one of the keys
        (mode "include") or none of them (mode "exclude")."""
        if mode not in ("include", "exclude"):
            raise ValueError(f"get_parameters: mode = {mode!r} must be 'include' or 'exclude'")
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if keys is None:
                yield param
            elif any(key in name for key in keys) == (mode == "include"):
                yield param

    def weight_parameters(self):
        return self.get_parameters()


class SEModule(nn.Module):
    """Squeeze-and-excitation: global mean, 1x1 reduce + ReLU, 1x1 expand + Hsigmoid."""

    REDUCTION = 4

    def __init__(self, channel, reduction=None):
        super().__init__()
        _check_int(type(self).__name__, "channel", channel)
        if reduction is not None:
            _check_int(type(self).__name__, "reduction", reduction)
        self.channel = channel
        self.reduction = SEModule.REDUCTION if reduction is None else reduction

        num_mid = make_divisible(self.channel // self.reduction, divisor=MyNetwork.CHANNEL_DIVISIBLE)
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(self.channel, num_mid, 1, 1, 0, bias=True)),
            ("relu", nn.ReLU(inplace=True)),
            ("expand", nn.Conv2d(num_mid, self.channel, 1, 1, 0, bias=True)),
            ("h_sigmoid", Hsigmoid(inplace=True)),
        ]))

    def forward(self, x):
        y = x.mean(3, keepdim=True).mean(2, keepdim=True)
        return x * self.fc(y)

    def __repr__(self):
        return "SE(channel=%d, reduction=%d)" % (self.channel, self.reduction)


# ----------------------------------------------------------------------------- initialisation

MODEL_INITS = ("he_fout", "he_fin")


def init_models(net, model_init="he_fout"):
    """OFA's weight initialisation (ofa.utils.init_models, what OFA's run managers apply to
    a new network): every nn.Conv2d weight from N(0, 2 / (kh * kw * fan)), fan its output
    channels ("he_fout", OFA's default) or input channels ("he_fin"), conv biases zero;
    BatchNorm / GroupNorm weight 1, bias 0; nn.Linear weight from U(-1/sqrt(in), 1/sqrt(in)),
    bias zero. `net` is a module or a list of them. The random draws come from the global
    RNG in module order, as OFA's, so an ofa_fast network and its `ofa` twin initialised
    after the same torch.manual_seed hold the same weights."""
    if isinstance(net, (list, tuple)):
        for sub_net in net:
            init_models(sub_net, model_init)
        return
    if model_init not in MODEL_INITS:
        raise ValueError(f"init_models: model_init = {model_init!r}; allowed: "
                         f"{', '.join(map(repr, MODEL_INITS))}")
    if not isinstance(net, nn.Module):
        raise TypeError(f"init_models: expected an nn.Module or a list of them, got "
                        f"{type(net).__name__}")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan = m.out_channels if model_init == "he_fout" else m.in_channels
                m.weight.normal_(0.0, (2.0 / (kh * kw * fan)) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif type(m) in _NORM_TYPES:  # exact types, as OFA (subclasses keep their values)
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.weight.size(1) ** 0.5
                m.weight.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.zero_()


# ----------------------------------------------------------------------------- BN helpers

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
_NORM_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)


def replace_bn_with_gn(model, gn_channel_per_group):
    """Every nn.BatchNorm2d child becomes an nn.GroupNorm of about gn_channel_per_group
    channels per group, keeping its affine parameters (OFA's rule)."""
    if gn_channel_per_group is None:
        return
    _check_int("replace_bn_with_gn", "gn_channel_per_group", gn_channel_per_group)
    for m in model.modules():
        replace = {}
        for name, child in m.named_children():
            if isinstance(child, nn.BatchNorm2d):
                num_groups = child.num_features // min_divisible_value(child.num_features,
                                                                       gn_channel_per_group)
                gn = nn.GroupNorm(num_groups, child.num_features, eps=child.eps, affine=True)
                with torch.no_grad():
                    gn.weight.copy_(child.weight)
                    gn.bias.copy_(child.bias)
                gn.weight.requires_grad = child.weight.requires_grad
                gn.bias.requires_grad = child.bias.requires_grad
                replace[name] = gn
        m._modules.update(replace)


def set_bn_param(net, momentum, eps, gn_channel_per_group=None, ws_eps=None, **kwargs):
    """Sets momentum and eps of every BatchNorm (eps of every GroupNorm), after turning
    BatchNorm2d into GroupNorm when gn_channel_per_group is given."""
    if ws_eps is not None:
        # OFA swaps convs for its weight-standardised MyConv2d here; ofa_fast's kernels
        # do not standardise, so refuse rather than compute something else
        raise NotImplementedError(f"set_bn_param: ws_eps = {ws_eps!r}: weight standardisation "
                                  "(OFA's MyConv2d) is not supported by ofa_fast")
    replace_bn_with_gn(net, gn_channel_per_group)
    for m in net.modules():
        if type(m) in _BN_TYPES:
            m.momentum = momentum
            m.eps = eps
        elif isinstance(m, nn.GroupNorm):
            m.eps = eps


def get_bn_param(net):
    """The normalisation settings of the first BatchNorm / GroupNorm in `net` (None
    without one), in the form set_bn_param takes."""
    for m in net.modules():
        if isinstance(m, _BN_TYPES):
            return {"momentum": m.momentum, "eps": m.eps, "ws_eps": None}
        if isinstance(m, nn.GroupNorm):
            return {"momentum": None, "eps": m.eps,
                    "gn_channel_per_group": m.num_channels // m.num_groups, "ws_eps": None}
    return None


def copy_bn(target_bn, src_bn):
    """Copies the first channels of src_bn into target_bn: affine parameters, and the
    running statistics when src_bn is a plain BatchNorm1d/2d (num_batches_tracked is
    not copied, as in OFA)."""
    dim = target_bn.num_channels if isinstance(target_bn, nn.GroupNorm) else target_bn.num_features
    src_dim = src_bn.num_channels if isinstance(src_bn, nn.GroupNorm) else src_bn.num_features
    if dim > src_dim:
        raise ValueError(f"copy_bn: the target has {dim} channels, more than the source's {src_dim}")
    with torch.no_grad():
        for name in ("weight", "bias"):
            dst, src = getattr(target_bn, name), getattr(src_bn, name)
            if dst is not None and src is not None:
                dst.copy_(src[:dim])
        if type(src_bn) in _BN_TYPES and src_bn.running_mean is not None:
            target_bn.running_mean.copy_(src_bn.running_mean[:dim])
            target_bn.running_var.copy_(src_bn.running_var[:dim])


def _index_select_(tensor, dim, idx):
    """tensor <- tensor.index_select(dim, idx): in place (same storage, same memory
    format) for a permutation; a new tensor when idx changes the size, as in OFA."""
    selected = torch.index_select(tensor.data, dim, idx)
    if selected.shape == tensor.shape:
        with torch.no_grad():
            tensor.copy_(selected)
    else:
        tensor.data = selected


def adjust_bn_according_to_idx(bn, idx):
    """Reorders (or selects) the channels of bn by idx: affine parameters, and the
    running statistics of a plain BatchNorm1d/2d."""
    for name in ("weight", "bias"):
        if getattr(bn, name) is not None:
            _index_select_(getattr(bn, name), 0, idx)
    if type(bn) in _BN_TYPES and bn.running_mean is not None:
        _index_select_(bn.running_mean, 0, idx)
        _index_select_(bn.running_var, 0, idx)

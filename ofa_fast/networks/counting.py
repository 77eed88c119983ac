"""MACs and parameter counts of a static network, from its config alone (nothing is
built): what a NAS loop needs for thousands of subnets.

The conventions are OFA's (ofa.utils.count_net_flops / count_parameters on the built
network, batch 1): MACs of every convolution (in_channels x output elements x kernel
area / groups) and linear layer (in x out), nothing for batch norm, activations,
pooling, additions and biases; parameters = every trainable tensor's size (weights,
biases, batch-norm affine parameters). Unlike OFA's counter, which sums in float32,
these are exact ints.

    net_config_macs(net.config, image_size=224)   # MobileNetV3 / ProxylessNASNets / ResNets
    net_config_params(supernet.get_active_net_config())
"""
from __future__ import annotations

from ..nn.layers import DOWNSAMPLE_MODES
from ..nn.utils import MyNetwork, SEModule, make_divisible, min_divisible_value
from ._common import is_int

__all__ = ["net_config_macs", "net_config_params", "layer_config_macs_params"]


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _conv_out(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pool_out(size, kernel, stride, padding, ceil_mode):
    # PyTorch's pooling_output_shape
    out = (size + 2 * padding - (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _conv(c_in, c_out, kernel, stride, hw, groups=1, dilation=1, padding=None, bias=False):
    """(macs, params, out_hw) of an nn.Conv2d, counted as OFA's count_convNd does."""
    (kh, kw), (h, w) = _pair(kernel), hw
    ph, pw = (kh // 2 * dilation, kw // 2 * dilation) if padding is None else _pair(padding)
    oh, ow = _conv_out(h, kh, stride, ph, dilation), _conv_out(w, kw, stride, pw, dilation)
    macs = c_in * (c_out * oh * ow) * kh * kw // groups
    params = c_out * (c_in // groups) * kh * kw + (c_out if bias else 0)
    return macs, params, (oh, ow)


def _se(channels):
    mid = make_divisible(channels // SEModule.REDUCTION, divisor=MyNetwork.CHANNEL_DIVISIBLE)
    return 2 * channels * mid, 2 * channels * mid + mid + channels


def _bn_before_weight(config):
    ops = config.get("ops_order", "weight_bn_act").split("_")
    return ops.index("bn") < ops.index("weight")


def _conv_layer(cfg, hw):
    c_in, c_out = cfg["in_channels"], cfg["out_channels"]
    dilation = cfg.get("dilation", 1)
    groups = min_divisible_value(c_in, cfg.get("groups", 1))
    macs, params, hw = _conv(c_in, c_out, cfg.get("kernel_size", 3), cfg.get("stride", 1), hw,
                             groups, dilation, bias=cfg.get("bias", False))
    if cfg.get("use_bn", True):
        params += 2 * (c_in if _bn_before_weight(cfg) else c_out)
    if cfg.get("use_se", False):
        se_macs, se_params = _se(c_out)
        macs, params = macs + se_macs, params + se_params
    return macs, params, hw


def _identity_layer(cfg, hw):
    if not cfg.get("use_bn", False):
        return 0, 0, hw
    return 0, 2 * (cfg["in_channels"] if _bn_before_weight(cfg) else cfg["out_channels"]), hw


def _linear_layer(cfg, hw):
    c_in, c_out = cfg["in_features"], cfg["out_features"]
    params = c_in * c_out + (c_out if cfg.get("bias", True) else 0)
    if cfg.get("use_bn", False):
        params += 2 * (c_in if _bn_before_weight(cfg) else c_out)
    return c_in * c_out, params, hw


def _multi_head_linear_layer(cfg, hw):
    c_in, c_out, heads = cfg["in_features"], cfg["out_features"], cfg.get("num_heads", 1)
    return heads * c_in * c_out, heads * (c_in * c_out + (c_out if cfg.get("bias", True) else 0)), hw


def _mbconv_layer(cfg, hw):
    c_in, c_out = cfg["in_channels"], cfg["out_channels"]
    k, stride = cfg.get("kernel_size", 3), cfg.get("stride", 1)
    expand_ratio, mid = cfg.get("expand_ratio", 6), cfg.get("mid_channels")
    feature_dim = round(c_in * expand_ratio) if mid is None else mid
    macs = params = 0
    if expand_ratio != 1:  # the inverted bottleneck (as MBConvLayer builds it)
        m, p, _ = _conv(c_in, feature_dim, 1, 1, hw)
        macs, params = macs + m, params + p + 2 * feature_dim
    groups = cfg.get("groups")
    groups = feature_dim if groups is None else min_divisible_value(feature_dim, groups)
    m, p, hw = _conv(feature_dim, feature_dim, k, stride, hw, groups)
    macs, params = macs + m, params + p + 2 * feature_dim
    if cfg.get("use_se", False):
        m, p = _se(feature_dim)
        macs, params = macs + m, params + p
    m, p, hw = _conv(feature_dim, c_out, 1, 1, hw)
    return macs + m, params + p + 2 * c_out, hw


def _residual_block(cfg, hw):
    conv = cfg["conv"] if "conv" in cfg else cfg.get("mobile_inverted_conv")
    if conv is None or conv.get("name") == "ZeroLayer":
        return 0, 0, hw
    macs, params, out_hw = layer_config_macs_params(conv, hw)
    shortcut = cfg.get("shortcut")
    if shortcut is not None and shortcut.get("name") != "ZeroLayer":
        m, p, _ = layer_config_macs_params(shortcut, hw)
        macs, params = macs + m, params + p
    return macs, params, out_hw


def _bottleneck_block(cfg, hw):
    c_in, c_out = cfg["in_channels"], cfg["out_channels"]
    k, stride, groups = cfg.get("kernel_size", 3), cfg.get("stride", 1), cfg.get("groups", 1)
    mid = cfg.get("mid_channels")
    feature_dim = round(c_out * cfg.get("expand_ratio", 0.25)) if mid is None else mid
    feature_dim = make_divisible(feature_dim, MyNetwork.CHANNEL_DIVISIBLE)
    macs, params, in_hw = 0, 0, hw
    for c_a, c_b, kernel, s, g in ((c_in, feature_dim, 1, 1, 1),
                                   (feature_dim, feature_dim, k, stride, groups),
                                   (feature_dim, c_out, 1, 1, 1)):
        m, p, hw = _conv(c_a, c_b, kernel, s, hw, g)
        macs, params = macs + m, params + p + 2 * c_b
    if not (stride == 1 and c_in == c_out):  # not an identity shortcut
        mode = cfg.get("downsample_mode", "avgpool_conv")
        if mode not in DOWNSAMPLE_MODES:
            raise ValueError(f"net_config_macs: downsample_mode = {mode!r} is not one of "
                             f"{list(DOWNSAMPLE_MODES)}")
        if mode == "conv":
            m, p, _ = _conv(c_in, c_out, 1, stride, in_hw)
        else:
            pooled = tuple(_pool_out(s, stride, stride, 0, True) for s in in_hw)
            m, p, _ = _conv(c_in, c_out, 1, 1, pooled)
        macs, params = macs + m, params + p + 2 * c_out
    return macs, params, hw


_LAYERS = {
    "ConvLayer": _conv_layer,
    "IdentityLayer": _identity_layer,
    "LinearLayer": _linear_layer,
    "MultiHeadLinearLayer": _multi_head_linear_layer,
    "ZeroLayer": lambda cfg, hw: (0, 0, hw),
    "MBConvLayer": _mbconv_layer,
    "MBInvertedConvLayer": _mbconv_layer,
    "ResidualBlock": _residual_block,
    "MobileInvertedResidualBlock": _residual_block,
    "ResNetBottleneckBlock": _bottleneck_block,
}


def layer_config_macs_params(config, hw):
    """(macs, params, output (h, w)) of the static layer `config` describes, on an
    input of spatial size hw = (h, w)."""
    if config is None:
        return 0, 0, hw
    name = config.get("name") if isinstance(config, dict) else None
    if name not in _LAYERS:
        raise ValueError(f"net_config_macs: {name!r} is not a static layer config; known: "
                         f"{sorted(_LAYERS)}")
    return _LAYERS[name](config, hw)


def _image_hw(image_size):
    hw = _pair(image_size)
    if len(hw) != 2 or not all(is_int(s) and s >= 1 for s in hw):
        raise ValueError(f"net_config_macs: image_size = {image_size!r} must be an int >= 1 or a "
                         "pair (h, w) of them")
    return hw


def _walk(config, image_size):
    """(macs, params) of the static network `config` describes."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError("net_config_macs: config must be a static network config (a dict with a "
                         "'name'), e.g. net.config or supernet.get_active_net_config()")
    name, hw = config["name"], _image_hw(image_size)
    total_macs = total_params = 0

    def add(layer_config, hw):
        nonlocal total_macs, total_params
        macs, params, hw = layer_config_macs_params(layer_config, hw)
        total_macs, total_params = total_macs + macs, total_params + params
        return hw

    if name in ("MobileNetV3", "ProxylessNASNets"):
        hw = add(config["first_conv"], hw)
        for block in config["blocks"]:
            hw = add(block, hw)
        if name == "MobileNetV3":
            hw = add(config["final_expand_layer"], hw)
            hw = add(config["feature_mix_layer"], (1, 1))  # after the global pooling
        else:
            hw = add(config.get("feature_mix_layer"), hw)
        add(config["classifier"], (1, 1))
    elif name == "ResNets":
        for layer in config["input_stem"]:
            hw = add(layer, hw)
        hw = tuple(_pool_out(s, 3, 2, 1, False) for s in hw)  # the max pooling
        for block in config["blocks"]:
            hw = add(block, hw)
        add(config["classifier"], (1, 1))
    else:
        raise ValueError(f"net_config_macs: network {name!r} is not a static network; use one of "
                         "'MobileNetV3', 'ProxylessNASNets', 'ResNets' (a supernet's "
                         "get_active_net_config() gives one)")
    return total_macs, total_params


def net_config_macs(config, image_size=224):
    """MACs of one image (batch 1) of size image_size (an int or (h, w)) through the
    static network `config` describes: what ofa.utils.count_net_flops reports for
    the built network, as an exact int."""
    return _walk(config, image_size)[0]


def net_config_params(config):
    """Trainable parameters of the static network `config` describes: what
    ofa.utils.count_parameters reports for the built network."""
    return _walk(config, 224)[1]

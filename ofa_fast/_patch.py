"""ofa_fast.patch(model): one line that moves an existing OFA model onto ofa_fast.

    net = ofa.imagenet_classification.elastic_nn.networks.OFAMobileNetV3(...)
    swapped = ofa_fast.patch(net)      # same Parameter objects, buffers, hooks, optimizer

Every module of a class from the `ofa` package that ofa_fast has a twin of (the dynamic
ops, the dynamic layers, the static ConvLayer / MBConvLayer / ResNetBottleneckBlock, the
Hswish / Hsigmoid activations) has its class switched in place to the ofa_fast twin
(`module.__class__ = Twin`). The twins have OFA's attributes,
submodule names and parameter names, so the module keeps every Parameter object,
buffer, hook and attribute it had: an optimizer built before the patch, a DDP wrapper,
a registered hook or a state_dict all stay valid. Only forward (and the methods the
twin defines) change. OFA's class-level switches are carried over per module
(KERNEL_TRANSFORM_MODE), and ofa_fast's DynamicBatchNorm2d obeys OFA's
SET_RUNNING_STATISTICS too, so OFA's own set_running_statistics keeps working.
"""
from __future__ import annotations

import importlib
import logging

import torch.nn as nn

from . import nn as _nn

__all__ = ["patch", "unpatch", "PATCHABLE"]

log = logging.getLogger("ofa_fast")

# OFA module path -> class names ofa_fast has a twin of (same name in ofa_fast.nn)
_OFA_MODULES = {
    "ofa.imagenet_classification.elastic_nn.modules.dynamic_op": (
        "DynamicSeparableConv2d", "DynamicConv2d", "DynamicGroupConv2d", "DynamicBatchNorm2d",
        "DynamicGroupNorm", "DynamicSE", "DynamicLinear"),
    "ofa.imagenet_classification.elastic_nn.modules.dynamic_layers": (
        "DynamicMBConvLayer", "DynamicConvLayer", "DynamicLinearLayer",
        "DynamicResNetBottleneckBlock"),
    "ofa.utils.pytorch_modules": ("Hswish", "Hsigmoid"),
    # the static layers of the supernets' stem, first block and head, and of every
    # extracted subnet: ofa_fast's run their depthwise and 1x1 convs with its kernels
    "ofa.utils.layers": ("ConvLayer", "MBConvLayer", "ResNetBottleneckBlock"),
}

# attributes a module must carry for its twin's forward (checked before any swap)
_REQUIRED = {
    "DynamicSeparableConv2d": ("conv", "kernel_size_list", "_ks_set", "stride", "dilation",
                               "active_kernel_size", "max_in_channels"),
    "DynamicConv2d": ("conv", "kernel_size", "stride", "dilation", "active_out_channel",
                      "max_in_channels", "max_out_channels"),
    "DynamicGroupConv2d": ("conv", "kernel_size_list", "groups_list", "in_channels", "out_channels",
                           "stride", "dilation", "active_kernel_size", "active_groups"),
    "DynamicBatchNorm2d": ("bn", "max_feature_dim"),
    "DynamicGroupNorm": ("channel_per_group",),
    "DynamicSE": ("fc", "channel", "reduction"),
    "DynamicLinear": ("linear", "bias", "active_out_features", "max_out_features"),
    "MBConvLayer": ("inverted_bottleneck", "depth_conv", "point_linear"),
    "ResNetBottleneckBlock": ("conv1", "conv2", "conv3", "downsample", "final_act"),
}


def _twin_of(cls):
    for mod_name, names in _OFA_MODULES.items():
        if cls.__module__ == mod_name and cls.__name__ in names:
            twin = getattr(_nn, cls.__name__, None)
            if twin is None:  # a layer module not (yet) provided
                return None
            return twin
    return None


def PATCHABLE():
    """The OFA classes patch() swaps: [(ofa module path, class name)]."""
    return [(m, n) for m, names in _OFA_MODULES.items() for n in names
            if getattr(_nn, n, None) is not None]


def patch(model: nn.Module, *, verbose: bool = False):
    """Switches every OFA module of `model` (itself included) that ofa_fast has a twin
    of to the twin, in place. Returns [(qualified name, "ofa.Class -> ofa_fast.Class")]
    in module order (also logged at INFO, printed with verbose=True). Modules that are
    already ofa_fast's, or that ofa_fast has no twin of, are left alone."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"ofa_fast.patch: expected an nn.Module, got {type(model).__name__}")
    plan = []
    for name, module in model.named_modules(remove_duplicate=True):
        twin = _twin_of(type(module))
        if twin is None:
            continue
        missing = [a for a in _REQUIRED.get(type(module).__name__, ()) if not hasattr(module, a)]
        if missing:
            raise TypeError(f"ofa_fast.patch: module {name or '<root>'} "
                            f"({type(module).__qualname__}) lacks {missing}; it cannot be "
                            "switched to its ofa_fast twin")
        plan.append((name, module, twin))
    swapped = []
    for name, module, twin in plan:
        old = type(module)
        if hasattr(old, "KERNEL_TRANSFORM_MODE") and "KERNEL_TRANSFORM_MODE" not in vars(module):
            # OFA's class-level switch, as the module was built with it
            module.KERNEL_TRANSFORM_MODE = old.KERNEL_TRANSFORM_MODE
        module.__class__ = twin
        module._ofa_fast_patched_from = old
        swapped.append((name or "<root>", f"{old.__module__}.{old.__name__} -> "
                                          f"{twin.__module__}.{twin.__name__}"))
    for entry in swapped:
        log.info("ofa_fast.patch: %s: %s", *entry)
        if verbose:
            print("ofa_fast.patch: %s: %s" % entry)
    return swapped


def unpatch(model: nn.Module):
    """Undoes patch(): every module it switched gets its OFA class back. Returns the
    number of modules switched back."""
    n = 0
    for module in model.modules():
        old = module.__dict__.pop("_ofa_fast_patched_from", None)
        if old is not None:
            module.__class__ = old
            n += 1
    return n


def _ofa_class(path, name):  # used by tests: the OFA class, or None if ofa is missing
    try:
        return getattr(importlib.import_module(path), name)
    except ImportError:
        return None

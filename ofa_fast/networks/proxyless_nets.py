"""OFA's ProxylessNASNets and MobileNetV2 (ofa.imagenet_classification.networks.
proxyless_nets): the static network OFAProxylessNASNets.get_active_subnet returns and
OFA's specialized ProxylessNAS configs build; same constructor, submodules,
state_dict keys, config, module_str."""
from __future__ import annotations

import torch.nn as nn

from ..nn.layers import (ConvLayer, IdentityLayer, LinearLayer, MBConvLayer, ResidualBlock,
                         set_layer_from_config)
from ..nn.utils import MyGlobalAvgPool2d, MyNetwork, make_divisible, val2list
from ._common import (check_bn_param, check_config, check_dropout, check_int, check_modules,
                      check_positive)
from .mobilenet_v3 import MBBlocksMixin

__all__ = ["ProxylessNASNets", "MobileNetV2"]


class ProxylessNASNets(MBBlocksMixin, MyNetwork):
    def __init__(self, first_conv, blocks, feature_mix_layer, classifier):
        super().__init__()
        check_modules(type(self).__name__, first_conv=first_conv,
                      feature_mix_layer=feature_mix_layer, classifier=classifier)
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.feature_mix_layer = feature_mix_layer
        self.global_avg_pool = MyGlobalAvgPool2d(keep_dim=False)
        self.classifier = classifier

    def forward(self, x):
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        if self.feature_mix_layer is not None:
            x = self.feature_mix_layer(x)
        x = self.global_avg_pool(x)
        return self.classifier(x)

    @property
    def module_str(self):
        lines = [self.first_conv.module_str]
        lines += [block.module_str for block in self.blocks]
        if self.feature_mix_layer is not None:  # (OFA fails without one)
            lines.append(self.feature_mix_layer.module_str)
        lines += [repr(self.global_avg_pool), self.classifier.module_str]
        return "\n".join(lines)

    @property
    def config(self):
        return {
            "name": ProxylessNASNets.__name__,
            "bn": self.get_bn_param(),
            "first_conv": self.first_conv.config,
            "blocks": [block.config for block in self.blocks],
            "feature_mix_layer": (None if self.feature_mix_layer is None
                                  else self.feature_mix_layer.config),
            "classifier": self.classifier.config,
        }

    @staticmethod
    def build_from_config(config):
        check_config(ProxylessNASNets, config, ("ProxylessNASNets",),
                     ("first_conv", "blocks", "feature_mix_layer", "classifier"))
        first_conv = set_layer_from_config(config["first_conv"])
        feature_mix_layer = set_layer_from_config(config["feature_mix_layer"])
        classifier = set_layer_from_config(config["classifier"])
        blocks = ProxylessNASNets._build_blocks(config)
        net = ProxylessNASNets(first_conv, blocks, feature_mix_layer, classifier)
        net.set_bn_param(**config.get("bn") or {"momentum": 0.1, "eps": 1e-3})
        return net


class MobileNetV2(ProxylessNASNets):
    def __init__(self, n_classes=1000, width_mult=1.0, bn_param=(0.1, 1e-3), dropout_rate=0.2,
                 ks=None, expand_ratio=None, depth_param=None, stage_width_list=None):
        name = type(self).__name__
        check_int(name, "n_classes", n_classes)
        check_positive(name, "width_mult", width_mult)
        check_bn_param(name, bn_param)
        check_dropout(name, dropout_rate)
        if depth_param is not None:
            check_int(name, "depth_param", depth_param)
        ks = 3 if ks is None else ks
        expand_ratio = 6 if expand_ratio is None else expand_ratio

        divisor = MyNetwork.CHANNEL_DIVISIBLE
        input_channel = make_divisible(32 * width_mult, divisor)
        last_channel = make_divisible(1280 * width_mult, divisor) if width_mult > 1.0 else 1280

        # expand ratio t, width c, blocks n, stride s of each stage
        stages = [
            [1, 16, 1, 1],
            [expand_ratio, 24, 2, 2],
            [expand_ratio, 32, 3, 2],
            [expand_ratio, 64, 4, 2],
            [expand_ratio, 96, 3, 1],
            [expand_ratio, 160, 3, 2],
            [expand_ratio, 320, 1, 1],
        ]
        if depth_param is not None:
            for stage in stages[1:-1]:
                stage[2] = depth_param
        if stage_width_list is not None:
            if not isinstance(stage_width_list, (list, tuple)) or len(stage_width_list) != len(stages):
                raise ValueError(f"{name}: stage_width_list = {stage_width_list!r} must list "
                                 f"{len(stages)} widths (one per stage)")
            for stage, width in zip(stages, stage_width_list):
                stage[1] = width

        # one kernel size per block with an expand ratio other than 1 (the others: 3)
        ks = val2list(ks, sum(n for _, _, n, _ in stages) - 1)
        needed = sum(n for t, _, n, _ in stages if t != 1)
        if len(ks) < needed:
            raise ValueError(f"{name}: ks = {ks!r} must be one kernel size or {needed} of them")
        ks = iter(ks)

        first_conv = ConvLayer(3, input_channel, kernel_size=3, stride=2, use_bn=True,
                               act_func="relu6", ops_order="weight_bn_act")
        blocks = []
        for t, c, n, s in stages:
            output_channel = make_divisible(c * width_mult, divisor)
            for i in range(n):
                stride = s if i == 0 else 1
                kernel_size = 3 if t == 1 else next(ks)
                conv = MBConvLayer(in_channels=input_channel, out_channels=output_channel,
                                   kernel_size=kernel_size, stride=stride, expand_ratio=t)
                shortcut = (IdentityLayer(input_channel, input_channel)
                            if stride == 1 and input_channel == output_channel else None)
                blocks.append(ResidualBlock(conv, shortcut))
                input_channel = output_channel
        feature_mix_layer = ConvLayer(input_channel, last_channel, kernel_size=1, use_bn=True,
                                      act_func="relu6", ops_order="weight_bn_act")
        classifier = LinearLayer(last_channel, n_classes, dropout_rate=dropout_rate)

        super().__init__(first_conv, blocks, feature_mix_layer, classifier)
        self.set_bn_param(*bn_param)

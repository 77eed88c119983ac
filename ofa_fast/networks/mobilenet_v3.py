"""OFA's MobileNetV3 (ofa.imagenet_classification.networks.mobilenet_v3): the static
network OFAMobileNetV3.get_active_subnet returns and OFA's specialized MobileNetV3
configs build; same constructor, submodules, state_dict keys, config, module_str."""
from __future__ import annotations

import copy

import torch.nn as nn

from ..nn.layers import (ConvLayer, IdentityLayer, LinearLayer, MBConvLayer, ResidualBlock,
                         set_layer_from_config)
from ..nn.utils import MyGlobalAvgPool2d, MyNetwork, make_divisible
from ._common import (check_bn_param, check_config, check_dropout, check_int, check_modules,
                      check_positive, load_ofa_state_dict)

__all__ = ["MobileNetV3", "MobileNetV3Large"]


class MBBlocksMixin:
    """What MobileNetV3 and ProxylessNASNets share: a first block, then stages of
    ResidualBlocks (the first block of a stage has no shortcut)."""

    def zero_last_gamma(self):
        """Zeroes the last BN gamma of every static MBConv block with an identity
        shortcut (OFA's rule: a supernet's dynamic blocks are left alone)."""
        for m in self.modules():
            if isinstance(m, ResidualBlock) and isinstance(m.conv, MBConvLayer) \
                    and isinstance(m.shortcut, IdentityLayer):
                m.conv.point_linear.bn.weight.data.zero_()

    @property
    def grouped_block_index(self):
        """Indices of the blocks after the first, one list per stage (a block without
        a shortcut starts a stage)."""
        groups, current = [], []
        for i, block in enumerate(self.blocks[1:], 1):
            if block.shortcut is None and current:
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        return groups

    def load_state_dict(self, state_dict, strict=True, assign=False, **kwargs):
        """Loads OFA's checkpoints too: keys under OFA's older `.mobile_inverted_conv.`
        name go to `.conv.`; entries the state_dict lacks keep their values (OFA's)."""
        return load_ofa_state_dict(self, state_dict, strict=strict, assign=assign)

    @staticmethod
    def _build_blocks(config):
        return [ResidualBlock.build_from_config(block_config) for block_config in config["blocks"]]


class MobileNetV3(MBBlocksMixin, MyNetwork):
    def __init__(self, first_conv, blocks, final_expand_layer, feature_mix_layer, classifier):
        super().__init__()
        check_modules(type(self).__name__, first_conv=first_conv,
                      final_expand_layer=final_expand_layer, feature_mix_layer=feature_mix_layer,
                      classifier=classifier)
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = final_expand_layer
        self.global_avg_pool = MyGlobalAvgPool2d(keep_dim=True)
        self.feature_mix_layer = feature_mix_layer
        self.classifier = classifier

    def forward(self, x):
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        x = self.global_avg_pool(x)
        x = self.feature_mix_layer(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)

    @property
    def module_str(self):
        lines = [self.first_conv.module_str]
        lines += [block.module_str for block in self.blocks]
        lines += [self.final_expand_layer.module_str, repr(self.global_avg_pool),
                  self.feature_mix_layer.module_str, self.classifier.module_str]
        return "\n".join(lines)

    @property
    def config(self):
        return {
            "name": MobileNetV3.__name__,
            "bn": self.get_bn_param(),
            "first_conv": self.first_conv.config,
            "blocks": [block.config for block in self.blocks],
            "final_expand_layer": self.final_expand_layer.config,
            "feature_mix_layer": self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }

    @staticmethod
    def build_from_config(config):
        check_config(MobileNetV3, config, ("MobileNetV3",),
                     ("first_conv", "blocks", "final_expand_layer", "feature_mix_layer", "classifier"))
        first_conv = set_layer_from_config(config["first_conv"])
        final_expand_layer = set_layer_from_config(config["final_expand_layer"])
        feature_mix_layer = set_layer_from_config(config["feature_mix_layer"])
        classifier = set_layer_from_config(config["classifier"])
        blocks = MobileNetV3._build_blocks(config)
        net = MobileNetV3(first_conv, blocks, final_expand_layer, feature_mix_layer, classifier)
        net.set_bn_param(**config.get("bn") or {"momentum": 0.1, "eps": 1e-5})
        return net

    @staticmethod
    def build_net_via_cfg(cfg, input_channel, last_channel, n_classes, dropout_rate):
        """The layers of a MobileNetV3 from a stage table cfg: {stage id: [[kernel size,
        mid channels, out channels, use_se, act_func, stride, expand ratio], ...]}."""
        first_conv = ConvLayer(3, input_channel, kernel_size=3, stride=2, use_bn=True,
                               act_func="h_swish", ops_order="weight_bn_act")
        feature_dim = input_channel
        blocks = []
        for block_config_list in cfg.values():
            for block_config in block_config_list:
                k, mid_channel, out_channel, use_se, act_func, stride, expand_ratio = block_config
                mb_conv = MBConvLayer(feature_dim, out_channel, k, stride, expand_ratio, mid_channel,
                                      act_func, use_se)
                shortcut = (IdentityLayer(out_channel, out_channel)
                            if stride == 1 and out_channel == feature_dim else None)
                blocks.append(ResidualBlock(mb_conv, shortcut))
                feature_dim = out_channel
        final_expand_layer = ConvLayer(feature_dim, feature_dim * 6, kernel_size=1, use_bn=True,
                                       act_func="h_swish", ops_order="weight_bn_act")
        feature_mix_layer = ConvLayer(feature_dim * 6, last_channel, kernel_size=1, bias=False,
                                      use_bn=False, act_func="h_swish")
        classifier = LinearLayer(last_channel, n_classes, dropout_rate=dropout_rate)
        return first_conv, blocks, final_expand_layer, feature_mix_layer, classifier

    @staticmethod
    def adjust_cfg(cfg, ks=None, expand_ratio=None, depth_param=None, stage_width_list=None):
        """OFA's overrides of a stage table (in place, and returned): one kernel size
        and expand ratio for every stage but "0" (mid channels then follow the expand
        ratio; stage widths from stage_width_list), and depth_param blocks per stage
        (the first, then copies of the last)."""
        for i, (stage_id, block_config_list) in enumerate(cfg.items()):
            for block_config in block_config_list:
                if ks is not None and stage_id != "0":
                    block_config[0] = ks
                if expand_ratio is not None and stage_id != "0":
                    block_config[-1] = expand_ratio
                    block_config[1] = None
                    if stage_width_list is not None:
                        block_config[2] = stage_width_list[i]
            if depth_param is not None and stage_id != "0":
                cfg[stage_id] = [block_config_list[0]] + [
                    copy.deepcopy(block_config_list[-1]) for _ in range(depth_param - 1)]
        return cfg


# MobileNetV3-Large's stages: kernel size, mid channels, out channels, use_se, act_func,
# stride, expand ratio (None: from the mid channels)
_LARGE_CFG = {
    "0": [[3, 16, 16, False, "relu", 1, 1]],
    "1": [[3, 64, 24, False, "relu", 2, None],
          [3, 72, 24, False, "relu", 1, None]],
    "2": [[5, 72, 40, True, "relu", 2, None],
          [5, 120, 40, True, "relu", 1, None],
          [5, 120, 40, True, "relu", 1, None]],
    "3": [[3, 240, 80, False, "h_swish", 2, None],
          [3, 200, 80, False, "h_swish", 1, None],
          [3, 184, 80, False, "h_swish", 1, None],
          [3, 184, 80, False, "h_swish", 1, None]],
    "4": [[3, 480, 112, True, "h_swish", 1, None],
          [3, 672, 112, True, "h_swish", 1, None]],
    "5": [[5, 672, 160, True, "h_swish", 2, None],
          [5, 960, 160, True, "h_swish", 1, None],
          [5, 960, 160, True, "h_swish", 1, None]],
}


class MobileNetV3Large(MobileNetV3):
    def __init__(self, n_classes=1000, width_mult=1.0, bn_param=(0.1, 1e-5), dropout_rate=0.2,
                 ks=None, expand_ratio=None, depth_param=None, stage_width_list=None):
        name = type(self).__name__
        check_int(name, "n_classes", n_classes)
        check_positive(name, "width_mult", width_mult)
        check_bn_param(name, bn_param)
        check_dropout(name, dropout_rate)
        if depth_param is not None:
            check_int(name, "depth_param", depth_param)
        if stage_width_list is not None and (not isinstance(stage_width_list, (list, tuple))
                                             or len(stage_width_list) != len(_LARGE_CFG)):
            raise ValueError(f"{name}: stage_width_list = {stage_width_list!r} must list "
                             f"{len(_LARGE_CFG)} widths (one per stage)")

        divisor = MyNetwork.CHANNEL_DIVISIBLE
        input_channel = make_divisible(16 * width_mult, divisor)
        last_channel = make_divisible(1280 * width_mult, divisor) if width_mult > 1.0 else 1280

        cfg = self.adjust_cfg(copy.deepcopy(_LARGE_CFG), ks, expand_ratio, depth_param,
                              stage_width_list)
        for block_config_list in cfg.values():  # the width multiplier on mid and out channels
            for block_config in block_config_list:
                if block_config[1] is not None:
                    block_config[1] = make_divisible(block_config[1] * width_mult, divisor)
                block_config[2] = make_divisible(block_config[2] * width_mult, divisor)

        super().__init__(*self.build_net_via_cfg(cfg, input_channel, last_channel, n_classes,
                                                 dropout_rate))
        self.set_bn_param(*bn_param)

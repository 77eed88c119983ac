"""OFA's ResNets, ResNet50 and ResNet50D (ofa.imagenet_classification.networks.resnets):
the static network OFAResNets.get_active_subnet returns; same constructor,
submodules, state_dict keys, config, module_str."""
from __future__ import annotations

import torch.nn as nn

from ..nn.layers import (ConvLayer, IdentityLayer, LinearLayer, ResidualBlock, ResNetBottleneckBlock,
                         set_layer_from_config)
from ..nn.utils import MyGlobalAvgPool2d, MyNetwork, make_divisible
from ._common import (check_bn_param, check_config, check_dropout, check_int, check_modules,
                      check_positive, load_ofa_state_dict)

__all__ = ["ResNets", "ResNet50", "ResNet50D"]


class ResNets(MyNetwork):
    BASE_DEPTH_LIST = [2, 2, 4, 2]
    STAGE_WIDTH_LIST = [256, 512, 1024, 2048]

    def __init__(self, input_stem, blocks, classifier):
        super().__init__()
        check_modules(type(self).__name__, classifier=classifier)
        self.input_stem = nn.ModuleList(input_stem)
        self.max_pooling = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)
        self.blocks = nn.ModuleList(blocks)
        self.global_avg_pool = MyGlobalAvgPool2d(keep_dim=False)
        self.classifier = classifier

    def forward(self, x):
        for layer in self.input_stem:
            x = layer(x)
        x = self.max_pooling(x)
        for block in self.blocks:
            x = block(x)
        x = self.global_avg_pool(x)
        return self.classifier(x)

    @property
    def module_str(self):
        lines = [layer.module_str for layer in self.input_stem]
        lines.append("max_pooling(ks=3, stride=2)")
        lines += [block.module_str for block in self.blocks]
        lines += [repr(self.global_avg_pool), self.classifier.module_str]
        return "\n".join(lines)

    @property
    def config(self):
        return {
            "name": ResNets.__name__,
            "bn": self.get_bn_param(),
            "input_stem": [layer.config for layer in self.input_stem],
            "blocks": [block.config for block in self.blocks],
            "classifier": self.classifier.config,
        }

    @staticmethod
    def build_from_config(config):
        check_config(ResNets, config, ("ResNets",), ("input_stem", "blocks", "classifier"))
        classifier = set_layer_from_config(config["classifier"])
        input_stem = [set_layer_from_config(layer_config) for layer_config in config["input_stem"]]
        blocks = [set_layer_from_config(block_config) for block_config in config["blocks"]]
        net = ResNets(input_stem, blocks, classifier)
        net.set_bn_param(**config.get("bn") or {"momentum": 0.1, "eps": 1e-5})
        return net

    def zero_last_gamma(self):
        """Zeroes the last BN gamma of every static bottleneck block with an identity
        shortcut (OFA's rule: a supernet's dynamic blocks are left alone)."""
        for m in self.modules():
            if isinstance(m, ResNetBottleneckBlock) and isinstance(m.downsample, IdentityLayer):
                m.conv3.bn.weight.data.zero_()

    @property
    def grouped_block_index(self):
        """Block indices, one list per stage (a block whose shortcut is not an identity
        starts a stage)."""
        groups, current = [], []
        for i, block in enumerate(self.blocks):
            if not isinstance(block.downsample, IdentityLayer) and current:
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        return groups

    def load_state_dict(self, state_dict, strict=True, assign=False, **kwargs):
        """Entries the state_dict lacks keep their values (OFA's behaviour)."""
        return load_ofa_state_dict(self, state_dict, mobile_inverted_conv=False, strict=strict,
                                   assign=assign)


def _check_builder_args(name, n_classes, width_mult, bn_param, dropout_rate, expand_ratio, depth_param):
    check_int(name, "n_classes", n_classes)
    check_positive(name, "width_mult", width_mult)
    check_bn_param(name, bn_param)
    check_dropout(name, dropout_rate)
    if expand_ratio is not None:
        check_positive(name, "expand_ratio", expand_ratio)
    if depth_param is not None:
        check_int(name, "depth_param", depth_param, minimum=0)


def _bottleneck_stages(input_channel, width_mult, expand_ratio, depth_param, downsample_mode):
    divisor = MyNetwork.CHANNEL_DIVISIBLE
    widths = [make_divisible(w * width_mult, divisor) for w in ResNets.STAGE_WIDTH_LIST]
    depths = [3, 4, 6, 3]
    if depth_param is not None:
        depths = [d + depth_param for d in ResNets.BASE_DEPTH_LIST]
    blocks = []
    for depth, width, stage_stride in zip(depths, widths, [1, 2, 2, 2]):
        for i in range(depth):
            blocks.append(ResNetBottleneckBlock(input_channel, width, kernel_size=3,
                                                stride=stage_stride if i == 0 else 1,
                                                expand_ratio=expand_ratio, act_func="relu",
                                                downsample_mode=downsample_mode))
            input_channel = width
    return blocks, input_channel


class ResNet50(ResNets):
    def __init__(self, n_classes=1000, width_mult=1.0, bn_param=(0.1, 1e-5), dropout_rate=0,
                 expand_ratio=None, depth_param=None):
        _check_builder_args(type(self).__name__, n_classes, width_mult, bn_param, dropout_rate,
                            expand_ratio, depth_param)
        expand_ratio = 0.25 if expand_ratio is None else expand_ratio
        input_channel = make_divisible(64 * width_mult, MyNetwork.CHANNEL_DIVISIBLE)
        input_stem = [ConvLayer(3, input_channel, kernel_size=7, stride=2, use_bn=True,
                                act_func="relu", ops_order="weight_bn_act")]
        blocks, input_channel = _bottleneck_stages(input_channel, width_mult, expand_ratio,
                                                   depth_param, "conv")
        classifier = LinearLayer(input_channel, n_classes, dropout_rate=dropout_rate)
        super().__init__(input_stem, blocks, classifier)
        self.set_bn_param(*bn_param)


class ResNet50D(ResNets):
    def __init__(self, n_classes=1000, width_mult=1.0, bn_param=(0.1, 1e-5), dropout_rate=0,
                 expand_ratio=None, depth_param=None):
        _check_builder_args(type(self).__name__, n_classes, width_mult, bn_param, dropout_rate,
                            expand_ratio, depth_param)
        expand_ratio = 0.25 if expand_ratio is None else expand_ratio
        input_channel = make_divisible(64 * width_mult, MyNetwork.CHANNEL_DIVISIBLE)
        mid_input_channel = make_divisible(input_channel // 2, MyNetwork.CHANNEL_DIVISIBLE)
        input_stem = [
            ConvLayer(3, mid_input_channel, 3, stride=2, use_bn=True, act_func="relu"),
            ResidualBlock(ConvLayer(mid_input_channel, mid_input_channel, 3, stride=1, use_bn=True,
                                    act_func="relu"),
                          IdentityLayer(mid_input_channel, mid_input_channel)),
            ConvLayer(mid_input_channel, input_channel, 3, stride=1, use_bn=True, act_func="relu"),
        ]
        blocks, input_channel = _bottleneck_stages(input_channel, width_mult, expand_ratio,
                                                   depth_param, "avgpool_conv")
        classifier = LinearLayer(input_channel, n_classes, dropout_rate=dropout_rate)
        super().__init__(input_stem, blocks, classifier)
        self.set_bn_param(*bn_param)

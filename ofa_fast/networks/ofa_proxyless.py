"""OFA's ProxylessNAS supernet (ofa.imagenet_classification.elastic_nn.networks.
ofa_proxyless) on ofa_fast's dynamic layers: same constructor, attributes, methods,
config, module_str and state_dict keys; OFA's checkpoints load unchanged. The
elastic machinery (and what goes beyond OFA: checked set_active_subnet, active_macs /
active_params) is OFAMobileNetV3's; see ofa_mbv3."""
from __future__ import annotations

import copy

from ..nn.dynamic_layers import DynamicMBConvLayer
from ..nn.layers import ConvLayer, IdentityLayer, LinearLayer, MBConvLayer, ResidualBlock
from ..nn.utils import MyNetwork, make_divisible, val2list
from ._common import check_bn_param, check_dropout, check_int, check_positive
from .ofa_mbv3 import ElasticMBMixin, check_search_space
from .proxyless_nets import ProxylessNASNets

__all__ = ["OFAProxylessNASNets"]

_STAGE_WIDTHS = {
    "google": [32, 16, 24, 32, 64, 96, 160, 320, 1280],  # MobileNetV2's
    "proxyless": [32, 16, 24, 40, 80, 96, 192, 320, 1280],  # ProxylessNAS's
}


class OFAProxylessNASNets(ElasticMBMixin, ProxylessNASNets):
    STATIC_NET = ProxylessNASNets

    def __init__(self, n_classes=1000, bn_param=(0.1, 1e-3), dropout_rate=0.1, base_stage_width=None,
                 width_mult=1.0, ks_list=3, expand_ratio_list=6, depth_list=4):
        """base_stage_width: "google" for MobileNetV2's stage widths; None or
        "proxyless" (OFA: anything else) for ProxylessNAS's."""
        name = type(self).__name__
        check_int(name, "n_classes", n_classes)
        check_bn_param(name, bn_param)
        check_dropout(name, dropout_rate)
        check_positive(name, "width_mult", width_mult)
        if base_stage_width is not None and base_stage_width not in _STAGE_WIDTHS:
            raise ValueError(f"{name}: base_stage_width = {base_stage_width!r} is not one of "
                             f"{[None] + list(_STAGE_WIDTHS)}")
        ks_list, expand_ratio_list, depth_list = check_search_space(name, ks_list, expand_ratio_list,
                                                                    depth_list)
        self.width_mult = width_mult
        self.ks_list = ks_list
        self.expand_ratio_list = expand_ratio_list
        self.depth_list = depth_list

        divisor = MyNetwork.CHANNEL_DIVISIBLE
        base_stage_width = _STAGE_WIDTHS["google" if base_stage_width == "google" else "proxyless"]
        input_channel = make_divisible(base_stage_width[0] * width_mult, divisor)
        first_block_width = make_divisible(base_stage_width[1] * width_mult, divisor)
        last_channel = make_divisible(base_stage_width[-1] * width_mult, divisor)

        first_conv = ConvLayer(3, input_channel, kernel_size=3, stride=2, use_bn=True,
                               act_func="relu6", ops_order="weight_bn_act")
        first_block_conv = MBConvLayer(in_channels=input_channel, out_channels=first_block_width,
                                       kernel_size=3, stride=1, expand_ratio=1, act_func="relu6")
        first_block = ResidualBlock(first_block_conv, None)

        input_channel = first_block_width
        self.block_group_info = []
        blocks = [first_block]
        stride_stages = [2, 2, 2, 1, 2, 1]
        n_block_list = [max(depth_list)] * 5 + [1]
        width_list = [make_divisible(w * width_mult, divisor) for w in base_stage_width[2:-1]]
        for width, n_block, s in zip(width_list, n_block_list, stride_stages):
            self.block_group_info.append([len(blocks) + i for i in range(n_block)])
            for i in range(n_block):
                stride = s if i == 0 else 1
                conv = DynamicMBConvLayer(in_channel_list=val2list(input_channel, 1),
                                          out_channel_list=val2list(width, 1),
                                          kernel_size_list=list(ks_list),
                                          expand_ratio_list=list(expand_ratio_list),
                                          stride=stride, act_func="relu6")
                shortcut = (IdentityLayer(input_channel, input_channel)
                            if stride == 1 and input_channel == width else None)
                blocks.append(ResidualBlock(conv, shortcut))
                input_channel = width

        feature_mix_layer = ConvLayer(input_channel, last_channel, kernel_size=1, use_bn=True,
                                      act_func="relu6")
        classifier = LinearLayer(last_channel, n_classes, dropout_rate=dropout_rate)

        super().__init__(first_conv, blocks, feature_mix_layer, classifier)
        self.set_bn_param(momentum=bn_param[0], eps=bn_param[1])

        self.runtime_depth = [len(block_idx) for block_idx in self.block_group_info]
        self.clear_constraint()

    @staticmethod
    def name():
        return "OFAProxylessNASNets"

    def forward(self, x):
        x = self.first_conv(x)
        x = self.blocks[0](x)
        for idx in self._active_block_indices():
            x = self.blocks[idx](x)
        return self._head(x)

    def _head(self, x):
        x = self.feature_mix_layer(x)
        x = self.global_avg_pool(x)
        return self.classifier(x)

    @property
    def module_str(self):
        lines = [self.first_conv.module_str, self.blocks[0].module_str]
        lines += [self.blocks[idx].module_str for idx in self._active_block_indices()]
        lines += [self.feature_mix_layer.module_str, self.classifier.module_str]
        return "\n".join(lines) + "\n"

    @property
    def config(self):
        return {**super().config, "name": OFAProxylessNASNets.__name__}

    def _sample_depth(self, depth_setting):
        depth_setting[-1] = 1  # the last stage has one block (OFA's)
        return depth_setting

    def _static_head(self):
        return copy.deepcopy(self.feature_mix_layer), copy.deepcopy(self.classifier)

    def get_active_net_config(self):
        """The active subnet's ProxylessNASNets config (ProxylessNASNets.build_from_config
        builds it)."""
        return {
            "name": ProxylessNASNets.__name__,
            "bn": self.get_bn_param(),
            "first_conv": self.first_conv.config,
            "blocks": self._active_block_configs(),
            "feature_mix_layer": self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }

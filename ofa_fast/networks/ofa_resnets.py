"""OFA's ResNet supernet (ofa.imagenet_classification.elastic_nn.networks.ofa_resnets)
on ofa_fast's dynamic layers: same constructor, attributes (depth_list,
expand_ratio_list, width_mult_list, input_stem_skipping, runtime_depth), methods,
config, module_str and state_dict keys; OFA's checkpoints load unchanged.

Beyond OFA:
- set_active_subnet(d=, e=, w=) checks every value against the search space before
  changing anything and raises ValueError naming the bad value and the valid ones.
- get_active_net_config() puts the input stem's identity shortcut in as its config
  (OFA puts the IdentityLayer module itself there, so its config neither builds nor
  serialises).
- active_macs(image_size) / active_params(), as in OFAMobileNetV3.
"""
from __future__ import annotations

import random

import torch

from ..nn.dynamic_layers import DynamicConvLayer, DynamicLinearLayer, DynamicResNetBottleneckBlock
from ..nn.layers import IdentityLayer, ResidualBlock
from ..nn.utils import MyNetwork, make_divisible, val2list
from ._common import (RESNET_SUPERNET_RENAMES, check_bn_param, check_dropout, check_int,
                      expand_setting, is_int, is_number, load_ofa_state_dict, sorted_list,
                      subnet_dtype)
from .compiled import run_optional
from .counting import net_config_macs, net_config_params
from .resnets import ResNets

__all__ = ["OFAResNets"]


class OFAResNets(ResNets):
    def __init__(self, n_classes=1000, bn_param=(0.1, 1e-5), dropout_rate=0, depth_list=2,
                 expand_ratio_list=0.25, width_mult_list=1.0):
        name = type(self).__name__
        check_int(name, "n_classes", n_classes)
        check_bn_param(name, bn_param)
        check_dropout(name, dropout_rate)
        self.depth_list = sorted_list(name, "depth_list", depth_list, lambda v: is_int(v) and v >= 0,
                                      "an int >= 0")
        self.expand_ratio_list = sorted_list(name, "expand_ratio_list", expand_ratio_list,
                                             lambda v: is_number(v) and v > 0, "a positive number")
        self.width_mult_list = sorted_list(name, "width_mult_list", width_mult_list,
                                           lambda v: is_number(v) and v > 0, "a positive number")

        divisor = MyNetwork.CHANNEL_DIVISIBLE
        input_channel = [make_divisible(64 * w, divisor) for w in self.width_mult_list]
        mid_input_channel = [make_divisible(c // 2, divisor) for c in input_channel]
        stage_width_list = [[make_divisible(width * w, divisor) for w in self.width_mult_list]
                            for width in ResNets.STAGE_WIDTH_LIST]
        n_block_list = [base + max(self.depth_list) for base in ResNets.BASE_DEPTH_LIST]

        input_stem = [
            DynamicConvLayer(val2list(3), mid_input_channel, 3, stride=2, use_bn=True, act_func="relu"),
            ResidualBlock(DynamicConvLayer(mid_input_channel, mid_input_channel, 3, stride=1,
                                           use_bn=True, act_func="relu"),
                          IdentityLayer(mid_input_channel, mid_input_channel)),
            DynamicConvLayer(mid_input_channel, input_channel, 3, stride=1, use_bn=True,
                             act_func="relu"),
        ]
        blocks = []
        for depth, width, stage_stride in zip(n_block_list, stage_width_list, [1, 2, 2, 2]):
            for i in range(depth):
                blocks.append(DynamicResNetBottleneckBlock(
                    input_channel, width, expand_ratio_list=list(self.expand_ratio_list),
                    kernel_size=3, stride=stage_stride if i == 0 else 1, act_func="relu",
                    downsample_mode="avgpool_conv"))
                input_channel = width
        classifier = DynamicLinearLayer(input_channel, n_classes, dropout_rate=dropout_rate)

        super().__init__(input_stem, blocks, classifier)
        self.set_bn_param(*bn_param)

        self.input_stem_skipping = 0
        self.runtime_depth = [0] * len(n_block_list)  # blocks skipped at the end of each stage

    @property
    def ks_list(self):
        return [3]

    @staticmethod
    def name():
        return "OFAResNets"

    def _skipped(self, layer):
        """The input stem's residual layer, when the stem's depth is cut."""
        return (self.input_stem_skipping > 0 and isinstance(layer, ResidualBlock)
                and isinstance(layer.shortcut, IdentityLayer))

    def _active_block_indices(self):
        for stage_id, block_idx in enumerate(self.grouped_block_index):
            yield from block_idx[:len(block_idx) - self.runtime_depth[stage_id]]

    def forward(self, x):
        for layer in self.input_stem:
            if not self._skipped(layer):
                x = layer(x)
        x = self.max_pooling(x)
        for idx in self._active_block_indices():
            x = self.blocks[idx](x)
        x = self.global_avg_pool(x)
        return self.classifier(x)

    # ------------------------------------------------------------------ compiled forward
    # (ofa_fast.compile_supernet: one graph for every subnet; see networks/compiled.py)

    def _stem_optional(self):
        """Whether a depth setting can skip the input stem's residual layer."""
        return len(set(self.depth_list)) > 1

    def _always_run(self):
        """Per stage, the number of its leading blocks every depth runs."""
        cut = max(self.depth_list) - min(self.depth_list)
        return [len(block_idx) - cut for block_idx in self.grouped_block_index]

    def _elastic_plan(self):
        """The active subnet as (settings, active): [stem width, stem output width,
        the 4 stage widths, every block's middle width], checked; and a bool tensor with
        one entry per layer a depth setting can skip (the stem's residual layer first),
        true where it runs. A stage's blocks share its width (one symbol in the graph)."""
        owner = f"{type(self).__name__}: compile_supernet"
        (w0,) = self.input_stem[0].active_settings(3)
        if self.input_stem[1].conv.active_settings(w0) != (w0,):
            raise ValueError(f"{owner}: the input stem's residual layer must keep the stem's "
                             f"width {w0}, got {self.input_stem[1].conv.active_out_channel}")
        (w1,) = self.input_stem[2].active_settings(w0)
        stage_widths, mids, active = [], [], []
        if self._stem_optional():
            active.append(not self.input_stem_skipping > 0)
        in_channel = w1
        for stage_id, (block_idx, always) in enumerate(zip(self.grouped_block_index,
                                                           self._always_run())):
            width = self.blocks[block_idx[0]].active_out_channel
            stage_widths.append(width)
            for j, idx in enumerate(block_idx):
                mid, out = self.blocks[idx].active_settings(in_channel)
                if out != width:
                    raise ValueError(f"{owner}: the blocks of stage {stage_id} must share one "
                                     f"width; block {idx} has {out}, the stage's first {width}")
                mids.append(mid)
                if j >= always:
                    active.append(j < len(block_idx) - self.runtime_depth[stage_id])
                in_channel = width
        return [w0, w1] + stage_widths + mids, torch.tensor(active, dtype=torch.bool)

    def _elastic_unused_parameters(self):
        """ids of the parameters of the layers the active subnet skips."""
        layers = [self.input_stem[1]] if self._skipped(self.input_stem[1]) else []
        active = set(self._active_block_indices())
        layers += [block for idx, block in enumerate(self.blocks) if idx not in active]
        return {id(p) for layer in layers for p in layer.parameters()}

    def _elastic_forward(self, x, settings, active):
        """forward(x) of the subnet _elastic_plan() described, traceable as one graph
        for every subnet: settings may be symbolic ints, active a tensor."""
        w0, w1 = settings[0], settings[1]
        stage_widths, mids = settings[2:6], settings[6:]
        x = self.input_stem[0](x, settings=(w0,))
        residual, optional = self.input_stem[1], 0
        if self._stem_optional():
            x = run_optional(residual.conv, active[0], x, (w0,), residual.shortcut)
            optional = 1
        else:
            x = residual.conv(x, settings=(w0,)) + residual.shortcut(x)
        x = self.input_stem[2](x, settings=(w1,))
        x = self.max_pooling(x)
        for width, block_idx, always in zip(stage_widths, self.grouped_block_index,
                                            self._always_run()):
            for j, idx in enumerate(block_idx):
                block_settings = (mids[idx], width)
                if j >= always:
                    x = run_optional(self.blocks[idx], active[optional], x, block_settings)
                    optional += 1
                else:
                    x = self.blocks[idx](x, settings=block_settings)
        x = self.global_avg_pool(x)
        return self.classifier(x)

    @property
    def module_str(self):
        lines = [layer.module_str for layer in self.input_stem if not self._skipped(layer)]
        lines.append("max_pooling(ks=3, stride=2)")
        lines += [self.blocks[idx].module_str for idx in self._active_block_indices()]
        lines += [repr(self.global_avg_pool), self.classifier.module_str]
        return "\n".join(lines)

    @property
    def config(self):
        return {**super().config, "name": OFAResNets.__name__}

    @staticmethod
    def build_from_config(config):
        raise ValueError("a supernet cannot be built from a config (as in OFA); build it with its "
                         "constructor, or build a subnet from get_active_net_config()")

    def load_state_dict(self, state_dict, strict=True, assign=False, **kwargs):
        """Loads OFA's supernet checkpoints with OFA's key renames (dynamic ops saved
        without their inner `.bn.` / `.conv.` / `.linear.`); entries the state_dict
        lacks keep their values, as in OFA, and are listed in missing_keys."""
        return load_ofa_state_dict(self, state_dict, RESNET_SUPERNET_RENAMES,
                                   mobile_inverted_conv=False, strict=strict, assign=assign)

    # ------------------------------------------------------------------ search space

    def _width_layers(self):
        """The layers whose out_channel_list each entry of w indexes: the stem's first
        and last conv, then the first block of each stage."""
        return [self.input_stem[0], self.input_stem[2]] + [
            self.blocks[block_idx[0]] for block_idx in self.grouped_block_index]

    def set_max_net(self):
        self.set_active_subnet(d=max(self.depth_list), e=max(self.expand_ratio_list),
                               w=len(self.width_mult_list) - 1)

    def set_active_subnet(self, d=None, e=None, w=None, **kwargs):
        """d: depth of the input stem then of each stage (5 values, or one for all; the
        stem keeps its middle layer only at max(depth_list)); e: expand ratio of each
        block (len(blocks) values, or one); w: width index into width_mult_list of
        the stem's first and last conv, then of each stage (6 values, or one). None
        keeps the current setting. Every value is checked before anything changes;
        other keyword arguments are ignored, as in OFA."""
        owner = f"{type(self).__name__}.set_active_subnet"
        n_stages = len(ResNets.BASE_DEPTH_LIST)
        depth = expand_setting(owner, "d", d, [self.depth_list] * (n_stages + 1),
                               "depth_list %s" % self.depth_list, n_stages + 1,
                               "stage, the input stem first", integer=True)
        expand_ratio = expand_setting(owner, "e", e, [block.expand_ratio_list for block in self.blocks],
                                      "expand_ratio_list %s" % self.expand_ratio_list,
                                      len(self.blocks), "block")
        width_layers = self._width_layers()
        width_mult = expand_setting(owner, "w", w,
                                    [list(range(len(layer.out_channel_list)))
                                     for layer in width_layers],
                                    "the indices of width_mult_list %s" % self.width_mult_list,
                                    n_stages + 2, "stage, the stem's two convs first", integer=True)

        for block, ratio in zip(self.blocks, expand_ratio):
            if ratio is not None:
                block.active_expand_ratio = ratio
        if width_mult[0] is not None:
            channels = self.input_stem[0].out_channel_list[width_mult[0]]
            self.input_stem[0].active_out_channel = channels
            self.input_stem[1].conv.active_out_channel = channels
        if width_mult[1] is not None:
            self.input_stem[2].active_out_channel = self.input_stem[2].out_channel_list[width_mult[1]]
        if depth[0] is not None:
            self.input_stem_skipping = depth[0] != max(self.depth_list)
        for stage_id, (block_idx, stage_depth, stage_width) in enumerate(
                zip(self.grouped_block_index, depth[1:], width_mult[2:])):
            if stage_depth is not None:
                self.runtime_depth[stage_id] = max(self.depth_list) - stage_depth
            if stage_width is not None:
                for idx in block_idx:
                    self.blocks[idx].active_out_channel = self.blocks[idx].out_channel_list[stage_width]

    def sample_active_subnet(self):
        """A random subnet, set active and returned as {"d": [...], "e": [...], "w":
        [...]}; draws from `random` exactly as OFA does."""
        e = [random.choice(block.expand_ratio_list) for block in self.blocks]
        d = [random.choice([max(self.depth_list), min(self.depth_list)])]
        d += [random.choice(self.depth_list) for _ in ResNets.BASE_DEPTH_LIST]
        w = [random.choice(list(range(len(layer.out_channel_list)))) for layer in self._width_layers()]
        arch_config = {"d": d, "e": e, "w": w}
        self.set_active_subnet(**arch_config)
        return arch_config

    # ------------------------------------------------------------------ subnets

    def get_active_subnet(self, preserve_weight=True):
        """The active subnet as a static ofa_fast ResNets holding copies of the active
        weights, in the supernet's dtype (OFA's comes out float32)."""
        stem_channel = self.input_stem[0].active_out_channel
        with subnet_dtype(self) as dtype:
            input_stem = [self.input_stem[0].get_active_subnet(3, preserve_weight)]
            if self.input_stem_skipping <= 0:
                input_stem.append(ResidualBlock(
                    self.input_stem[1].conv.get_active_subnet(stem_channel, preserve_weight),
                    IdentityLayer(stem_channel, stem_channel)))
            input_stem.append(self.input_stem[2].get_active_subnet(stem_channel, preserve_weight))
            input_channel = self.input_stem[2].active_out_channel

            blocks = []
            for idx in self._active_block_indices():
                blocks.append(self.blocks[idx].get_active_subnet(input_channel, preserve_weight))
                input_channel = self.blocks[idx].active_out_channel
            classifier = self.classifier.get_active_subnet(input_channel, preserve_weight)
        subnet = ResNets(input_stem, blocks, classifier)
        subnet.set_bn_param(**self.get_bn_param())
        return subnet.to(dtype)

    def get_active_net_config(self):
        """The active subnet's ResNets config (ResNets.build_from_config builds it)."""
        stem_channel = self.input_stem[0].active_out_channel
        input_stem = [self.input_stem[0].get_active_subnet_config(3)]
        if self.input_stem_skipping <= 0:
            input_stem.append({
                "name": ResidualBlock.__name__,
                "conv": self.input_stem[1].conv.get_active_subnet_config(stem_channel),
                "shortcut": IdentityLayer(stem_channel, stem_channel).config,
            })
        input_stem.append(self.input_stem[2].get_active_subnet_config(stem_channel))
        input_channel = self.input_stem[2].active_out_channel

        blocks = []
        for idx in self._active_block_indices():
            blocks.append(self.blocks[idx].get_active_subnet_config(input_channel))
            input_channel = self.blocks[idx].active_out_channel
        return {
            "name": ResNets.__name__,
            "bn": self.get_bn_param(),
            "input_stem": input_stem,
            "blocks": blocks,
            "classifier": self.classifier.get_active_subnet_config(input_channel),
        }

    def active_macs(self, image_size=224):
        """MACs of one image (batch 1) of image_size (an int or (h, w)) through the
        active subnet: what ofa.utils.count_net_flops reports for
        get_active_subnet(), as an exact int."""
        return net_config_macs(self.get_active_net_config(), image_size)

    def active_params(self):
        """Trainable parameters of the active subnet: what ofa.utils.count_parameters
        reports for get_active_subnet()."""
        return net_config_params(self.get_active_net_config())

    def re_organize_middle_weights(self, expand_ratio_stage=0):
        """Sorts every block's middle channels by importance (OFA's)."""
        for block in self.blocks:
            block.re_organize_middle_weights(expand_ratio_stage)

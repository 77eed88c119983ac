"""OFA's MobileNetV3 supernet (ofa.imagenet_classification.elastic_nn.networks.ofa_mbv3)
on ofa_fast's dynamic layers: same constructor, attributes (ks_list, expand_ratio_list,
depth_list, block_group_info, runtime_depth), methods, config, module_str and
state_dict keys; OFA's checkpoints load unchanged (with OFA's key renames).

Beyond OFA:
- set_active_subnet checks every value against the search space before changing
  anything, and raises ValueError naming the bad value and the valid ones (OFA stores
  whatever it gets, and silently ignores the tail of a too-long list or leaves blocks
  unset for a too-short one); set_constraint checks its lists the same way.
- active_macs(image_size) / active_params(): the active subnet's MACs and parameter
  count, computed from its config (equal to OFA's counters on the extracted subnet).
"""
from __future__ import annotations

import copy
import random

import torch

from ..nn.dynamic_layers import DynamicMBConvLayer
from ..nn.layers import ConvLayer, IdentityLayer, LinearLayer, MBConvLayer, ResidualBlock
from ..nn.utils import MyNetwork, make_divisible, val2list
from ..ops import transform_chain
from ._common import (SUPERNET_RENAMES, check_bn_param, check_constraint, check_dropout, check_int,
                      check_positive, expand_setting, is_int, is_number, load_ofa_state_dict,
                      sorted_list, subnet_dtype)
from .compiled import run_optional
from .counting import net_config_macs, net_config_params
from .mobilenet_v3 import MobileNetV3

__all__ = ["OFAMobileNetV3"]

_CONSTRAINTS = {"depth": "_depth_include_list", "expand_ratio": "_expand_include_list",
                "kernel_size": "_ks_include_list"}


def check_search_space(owner, ks_list, expand_ratio_list, depth_list):
    """The sorted search-space lists (fresh lists: OFA sorts the caller's in place)."""
    ks_list = sorted_list(owner, "ks_list", ks_list, lambda v: is_int(v) and v >= 1 and v % 2 == 1,
                          "an odd int >= 1")
    expand_ratio_list = sorted_list(owner, "expand_ratio_list", expand_ratio_list,
                                    lambda v: is_number(v) and v > 0, "a positive number")
    depth_list = sorted_list(owner, "depth_list", depth_list, lambda v: is_int(v) and v >= 1,
                             "an int >= 1")
    return ks_list, expand_ratio_list, depth_list


class ElasticMBMixin:
    """The elastic part OFAMobileNetV3 and OFAProxylessNASNets share: blocks[0] is
    static, blocks[1:] are ResidualBlocks of DynamicMBConvLayers in the stages of
    block_group_info, of which the first runtime_depth[i] run."""

    STATIC_NET = None  # the static network class get_active_subnet returns

    # ------------------------------------------------------------------ MyNetwork

    @staticmethod
    def build_from_config(config):
        raise ValueError("a supernet cannot be built from a config (as in OFA); build it with its "
                         "constructor, or build a subnet from get_active_net_config()")

    @property
    def grouped_block_index(self):
        return self.block_group_info

    def load_state_dict(self, state_dict, strict=True, assign=False, **kwargs):
        """Loads OFA's supernet checkpoints, old ones included: OFA's key renames
        (`.mobile_inverted_conv.` -> `.conv.`, dynamic ops saved with or without their
        inner `.bn.` / `.conv.` / `.linear.`); entries the state_dict lacks keep their
        values, as in OFA (e.g. the kernel-transform matrices when a kernel-size-7
        checkpoint loads into a [3, 5, 7] supernet) and are listed in missing_keys. A
        key no rule maps raises ValueError (strict) or is skipped."""
        return load_ofa_state_dict(self, state_dict, SUPERNET_RENAMES, strict=strict, assign=assign)

    def _active_block_indices(self):
        for stage_id, block_idx in enumerate(self.block_group_info):
            yield from block_idx[:self.runtime_depth[stage_id]]

    # ------------------------------------------------------------------ compiled forward
    # (ofa_fast.compile_supernet: one graph for every subnet; see networks/compiled.py)

    def _always_run(self):
        """Per stage, the number of its leading blocks every allowed depth runs (the
        others are optional: torch.cond in the compiled forward)."""
        return [min(allowed) for allowed in self._allowed("depth")]

    def _elastic_plan(self):
        """The active subnet as (settings, active): every elastic block's
        active_settings (4 ints each, in block order), checked; and a bool tensor with
        one entry per block a depth setting can skip, true where it runs."""
        settings, active = [], []
        in_channel = self.blocks[0].conv.out_channels
        for stage_id, (block_idx, always) in enumerate(zip(self.block_group_info,
                                                           self._always_run())):
            for j, idx in enumerate(block_idx):
                conv = self.blocks[idx].conv
                settings.extend(conv.active_settings(in_channel))
                if j >= always:
                    active.append(j < self.runtime_depth[stage_id])
                in_channel = conv.active_out_channel
        return settings, torch.tensor(active, dtype=torch.bool)

    def _elastic_unused_parameters(self):
        """ids of the parameters the active subnet does not use: the skipped blocks'
        and the kernel-transform matrices the active kernel sizes do not take."""
        active = set(self._active_block_indices())
        unused = set()
        for idx in range(1, len(self.blocks)):
            layer = self.blocks[idx].conv
            if idx not in active:
                unused.update(id(p) for p in layer.parameters())
                continue
            dc = layer.depth_conv.conv
            chain = transform_chain(dc._ks_set, layer.active_kernel_size)
            taken = {"%dto%d_matrix" % (a, b) for a, b in zip(chain, chain[1:])}
            unused.update(id(p) for n, p in dc.named_parameters(recurse=False)
                          if n.endswith("_matrix") and n not in taken)
        return unused

    def _elastic_forward(self, x, settings, active):
        """forward(x) of the subnet _elastic_plan() described, traceable as one graph
        for every subnet: settings may be symbolic ints, active a tensor."""
        x = self.blocks[0](self.first_conv(x))
        pos = optional = 0
        for block_idx, always in zip(self.block_group_info, self._always_run()):
            for j, idx in enumerate(block_idx):
                block = self.blocks[idx]
                block_settings = tuple(settings[pos:pos + 4])
                pos += 4
                if j >= always:
                    x = run_optional(block.conv, active[optional], x, block_settings,
                                     block.shortcut)
                    optional += 1
                else:
                    out = block.conv(x, settings=block_settings)
                    x = out if block.shortcut is None else out + block.shortcut(x)
        return self._head(x)

    # ------------------------------------------------------------------ search space

    def _allowed(self, space):
        """Valid values of each entry of set_active_subnet's ks / e (one per elastic
        block) or d (one per stage)."""
        n_elastic = len(self.blocks) - 1
        if space == "kernel_size":
            return [self.ks_list] * n_elastic
        if space == "expand_ratio":
            return [self.expand_ratio_list] * n_elastic
        # a stage with fewer blocks than asked runs them all (OFA's min(blocks, d)); its
        # own block count is valid too (OFAProxylessNASNets' single-block last stage)
        return [self.depth_list if len(idx) >= max(self.depth_list)
                else sorted(set(self.depth_list) | {len(idx)}) for idx in self.block_group_info]

    def _space_name(self, space):
        return {"kernel_size": "ks_list %s" % self.ks_list,
                "expand_ratio": "expand_ratio_list %s" % self.expand_ratio_list,
                "depth": "depth_list %s" % self.depth_list}[space]

    def _what(self, space):
        return "stage" if space == "depth" else "elastic block, blocks[1:]"

    def set_max_net(self):
        self.set_active_subnet(ks=max(self.ks_list), e=max(self.expand_ratio_list),
                               d=max(self.depth_list))

    def set_active_subnet(self, ks=None, e=None, d=None, **kwargs):
        """Kernel size and expand ratio of every elastic block (ks, e: one value for all,
        or one per block of blocks[1:]; None keeps the current one) and the depth of
        every stage (d: one value or one per stage). Every value is checked before
        anything changes. Other keyword arguments are ignored, as in OFA (arch dicts
        often carry the resolution "r" too)."""
        owner = f"{type(self).__name__}.set_active_subnet"
        settings = {}
        for arg, value, space in (("ks", ks, "kernel_size"), ("e", e, "expand_ratio"),
                                  ("d", d, "depth")):
            allowed = self._allowed(space)
            settings[arg] = expand_setting(owner, arg, value, allowed, self._space_name(space),
                                           len(allowed), self._what(space),
                                           integer=space != "expand_ratio")

        for block, k, ratio in zip(self.blocks[1:], settings["ks"], settings["e"]):
            if k is not None:
                block.conv.active_kernel_size = k
            if ratio is not None:
                block.conv.active_expand_ratio = ratio
        for i, depth in enumerate(settings["d"]):
            if depth is not None:
                self.runtime_depth[i] = min(len(self.block_group_info[i]), depth)

    def set_constraint(self, include_list, constraint_type="depth"):
        """Restricts sample_active_subnet to include_list: values (for every block or
        stage) or one list per block / stage. constraint_type: "depth", "expand_ratio"
        or "kernel_size"."""
        owner = f"{type(self).__name__}.set_constraint"
        if constraint_type not in _CONSTRAINTS:
            raise ValueError(f"{owner}: constraint_type = {constraint_type!r} is not one of "
                             f"{list(_CONSTRAINTS)}")
        check_constraint(owner, constraint_type, include_list, self._allowed(constraint_type),
                         self._space_name(constraint_type), self._what(constraint_type),
                         integer=constraint_type != "expand_ratio")
        setattr(self, _CONSTRAINTS[constraint_type], copy.deepcopy(include_list))

    def clear_constraint(self):
        for attr in _CONSTRAINTS.values():
            setattr(self, attr, None)

    def _candidates(self, constraint_type, default, n):
        include = getattr(self, _CONSTRAINTS[constraint_type], None)
        candidates = default if include is None else include
        return candidates if isinstance(candidates[0], list) else [candidates] * n

    def _sample_depth(self, depth_setting):
        return depth_setting

    def sample_active_subnet(self):
        """A random subnet (within the constraints), set active and returned as
        {"ks": [...], "e": [...], "d": [...]}; draws from `random` exactly as OFA does,
        so one seed samples the same subnets in both packages."""
        n_elastic, n_stages = len(self.blocks) - 1, len(self.block_group_info)
        ks = [random.choice(c) for c in self._candidates("kernel_size", self.ks_list, n_elastic)]
        e = [random.choice(c)
             for c in self._candidates("expand_ratio", self.expand_ratio_list, n_elastic)]
        d = [random.choice(c) for c in self._candidates("depth", self.depth_list, n_stages)]
        d = self._sample_depth(d)
        self.set_active_subnet(ks, e, d)
        return {"ks": ks, "e": e, "d": d}

    # ------------------------------------------------------------------ subnets

    def _static_head(self):
        """Deep copies of the static layers after the blocks, in the static
        network's constructor order."""
        raise NotImplementedError

    def get_active_subnet(self, preserve_weight=True):
        """The active subnet as a static network (ofa_fast's MobileNetV3 /
        ProxylessNASNets) holding copies of the active weights, in the supernet's dtype
        (OFA's comes out partly float32)."""
        first_conv = copy.deepcopy(self.first_conv)
        blocks = [copy.deepcopy(self.blocks[0])]
        head = self._static_head()
        input_channel = blocks[0].conv.out_channels
        with subnet_dtype(self) as dtype:
            for idx in self._active_block_indices():
                block = self.blocks[idx]
                conv = block.conv.get_active_subnet(input_channel, preserve_weight)
                blocks.append(ResidualBlock(conv, copy.deepcopy(block.shortcut)))
                input_channel = blocks[-1].conv.out_channels
        subnet = self.STATIC_NET(first_conv, blocks, *head)
        subnet.set_bn_param(**self.get_bn_param())
        return subnet.to(dtype)

    def _active_block_configs(self):
        configs = [self.blocks[0].config]
        input_channel = configs[0]["conv"]["out_channels"]
        for idx in self._active_block_indices():
            block = self.blocks[idx]
            configs.append({
                "name": ResidualBlock.__name__,
                "conv": block.conv.get_active_subnet_config(input_channel),
                "shortcut": block.shortcut.config if block.shortcut is not None else None,
            })
            input_channel = block.conv.active_out_channel
        return configs

    def active_macs(self, image_size=224):
        """MACs of one image (batch 1) of image_size (an int or (h, w)) through the
        active subnet: what ofa.utils.count_net_flops reports for
        get_active_subnet(), as an exact int (see ofa_fast.networks.counting)."""
        return net_config_macs(self.get_active_net_config(), image_size)

    def active_params(self):
        """Trainable parameters of the active subnet: what ofa.utils.count_parameters
        reports for get_active_subnet() (the supernet's kernel-transform matrices and
        inactive channels are not part of it)."""
        return net_config_params(self.get_active_net_config())

    def re_organize_middle_weights(self, expand_ratio_stage=0):
        """Sorts every elastic block's middle channels by importance (OFA's)."""
        for block in self.blocks[1:]:
            block.conv.re_organize_middle_weights(expand_ratio_stage)


class OFAMobileNetV3(ElasticMBMixin, MobileNetV3):
    STATIC_NET = MobileNetV3

    def __init__(self, n_classes=1000, bn_param=(0.1, 1e-5), dropout_rate=0.1, base_stage_width=None,
                 width_mult=1.0, ks_list=3, expand_ratio_list=6, depth_list=4):
        """base_stage_width is accepted and ignored, as in OFA (MobileNetV3's stage
        widths are fixed)."""
        name = type(self).__name__
        check_int(name, "n_classes", n_classes)
        check_bn_param(name, bn_param)
        check_dropout(name, dropout_rate)
        check_positive(name, "width_mult", width_mult)
        ks_list, expand_ratio_list, depth_list = check_search_space(name, ks_list, expand_ratio_list,
                                                                    depth_list)
        self.width_mult = width_mult
        self.ks_list = ks_list
        self.expand_ratio_list = expand_ratio_list
        self.depth_list = depth_list

        divisor = MyNetwork.CHANNEL_DIVISIBLE
        base_stage_width = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
        final_expand_width = make_divisible(base_stage_width[-2] * width_mult, divisor)
        last_channel = make_divisible(base_stage_width[-1] * width_mult, divisor)
        width_list = [make_divisible(w * width_mult, divisor) for w in base_stage_width[:-2]]

        stride_stages = [1, 2, 2, 2, 1, 2]
        act_stages = ["relu", "relu", "relu", "h_swish", "h_swish", "h_swish"]
        se_stages = [False, False, True, False, True, True]
        n_block_list = [1] + [max(depth_list)] * 5

        input_channel, first_block_dim = width_list[0], width_list[1]
        first_conv = ConvLayer(3, input_channel, kernel_size=3, stride=2, act_func="h_swish")
        first_block_conv = MBConvLayer(in_channels=input_channel, out_channels=first_block_dim,
                                       kernel_size=3, stride=stride_stages[0], expand_ratio=1,
                                       act_func=act_stages[0], use_se=se_stages[0])
        first_block = ResidualBlock(first_block_conv,
                                    IdentityLayer(first_block_dim, first_block_dim)
                                    if input_channel == first_block_dim else None)

        self.block_group_info = []
        blocks = [first_block]
        feature_dim = first_block_dim
        stages = zip(width_list[2:], n_block_list[1:], stride_stages[1:], act_stages[1:],
                     se_stages[1:])
        for width, n_block, s, act_func, use_se in stages:
            self.block_group_info.append([len(blocks) + i for i in range(n_block)])
            for i in range(n_block):
                stride = s if i == 0 else 1
                conv = DynamicMBConvLayer(in_channel_list=val2list(feature_dim),
                                          out_channel_list=val2list(width),
                                          kernel_size_list=list(ks_list),
                                          expand_ratio_list=list(expand_ratio_list),
                                          stride=stride, act_func=act_func, use_se=use_se)
                shortcut = (IdentityLayer(feature_dim, feature_dim)
                            if stride == 1 and feature_dim == width else None)
                blocks.append(ResidualBlock(conv, shortcut))
                feature_dim = width

        final_expand_layer = ConvLayer(feature_dim, final_expand_width, kernel_size=1,
                                       act_func="h_swish")
        feature_mix_layer = ConvLayer(final_expand_width, last_channel, kernel_size=1, bias=False,
                                      use_bn=False, act_func="h_swish")
        classifier = LinearLayer(last_channel, n_classes, dropout_rate=dropout_rate)

        super().__init__(first_conv, blocks, final_expand_layer, feature_mix_layer, classifier)
        self.set_bn_param(momentum=bn_param[0], eps=bn_param[1])

        self.runtime_depth = [len(block_idx) for block_idx in self.block_group_info]
        self.clear_constraint()

    @staticmethod
    def name():
        return "OFAMobileNetV3"

    def forward(self, x):
        x = self.first_conv(x)
        x = self.blocks[0](x)
        for idx in self._active_block_indices():
            x = self.blocks[idx](x)
        return self._head(x)

    def _head(self, x):
        x = self.final_expand_layer(x)
        x = self.global_avg_pool(x)
        x = self.feature_mix_layer(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)

    @property
    def module_str(self):
        lines = [self.first_conv.module_str, self.blocks[0].module_str]
        lines += [self.blocks[idx].module_str for idx in self._active_block_indices()]
        lines += [self.final_expand_layer.module_str, self.feature_mix_layer.module_str,
                  self.classifier.module_str]
        return "\n".join(lines) + "\n"

    @property
    def config(self):
        return {**super().config, "name": OFAMobileNetV3.__name__}

    def _static_head(self):
        return (copy.deepcopy(self.final_expand_layer), copy.deepcopy(self.feature_mix_layer),
                copy.deepcopy(self.classifier))

    def get_active_net_config(self):
        """The active subnet's MobileNetV3 config (MobileNetV3.build_from_config builds it)."""
        return {
            "name": MobileNetV3.__name__,
            "bn": self.get_bn_param(),
            "first_conv": self.first_conv.config,
            "blocks": self._active_block_configs(),
            "final_expand_layer": self.final_expand_layer.config,
            "feature_mix_layer": self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }

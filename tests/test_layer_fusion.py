"""The dynamic layers' eval-mode conv + BN (+ activation) folding equals the unfused
forward (and OFA's), training-mode BN is never folded, and no layer forward copies a
weight (train or eval)."""
import copy

import pytest
import torch

import ofa_fast
from ofa_fast.nn import (DynamicConvLayer, DynamicMBConvLayer, DynamicResNetBottleneckBlock,
                         fusion)

from _helpers import NoWeightCopies, assert_same_run, module_run


def layers():
    torch.manual_seed(0)
    return {
        "mbconv_se": (DynamicMBConvLayer([16], [24], [3, 5, 7], [3, 4, 6], 1, "h_swish", True),
                      dict(active_kernel_size=5, active_expand_ratio=4), 16),
        "mbconv_s2": (DynamicMBConvLayer([16], [24], [3, 5, 7], [3, 4, 6], 2, "relu6", False),
                      dict(active_kernel_size=7, active_expand_ratio=6, active_out_channel=16), 12),
        "conv1x1": (DynamicConvLayer([16], [32], 1, 1, act_func="h_swish"), {}, 16),
        "resnet_conv": (DynamicResNetBottleneckBlock([16], [32], [0.25, 0.5], 3, 2, "relu", "conv"),
                        dict(active_expand_ratio=0.5), 16),
        "resnet_avgpool": (DynamicResNetBottleneckBlock([16], [32], [0.25, 0.5], 3, 2, "relu",
                                                        "avgpool_conv"), {}, 12),
    }


def randomise_bn(layer):
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def prepared(name, cl):
    """Layer `name` in float64 eval mode with trained-looking BN, its active setting,
    and an input in the memory format asked for."""
    layer, active, in_ch = layers()[name]
    layer = layer.double().eval()
    randomise_bn(layer)
    for k, v in active.items():
        setattr(layer, k, v)
    x = torch.randn(2, in_ch, 9, 9, dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    return layer, x


@pytest.mark.parametrize("name", list(layers()))
@pytest.mark.parametrize("cl", [False, True])
def test_eval_fusion_equals_unfused(name, cl):
    layer, x = prepared(name, cl)
    fused = module_run(layer, x)
    with fusion(False):
        unfused = module_run(layer, x)
    assert_same_run(fused, unfused, rtol=1e-9, atol=1e-9)


def test_fusion_switch_restores():
    assert ofa_fast.nn.fusion_enabled()
    with fusion(False):
        assert not ofa_fast.nn.fusion_enabled()
        with fusion(True):
            assert ofa_fast.nn.fusion_enabled()
        assert not ofa_fast.nn.fusion_enabled()
    assert ofa_fast.nn.fusion_enabled()


def test_fusion_skips_the_bn_modules():
    layer, active, in_ch = layers()["mbconv_se"]
    layer.eval()
    seen = []

    def hook(module, args):
        seen.append(module)

    for m in layer.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_pre_hook(hook)
    x = torch.randn(1, in_ch, 8, 8)
    with torch.no_grad():
        layer(x)
        assert len(seen) == 0  # pointwise BNs folded, the depthwise BN fused with its act
        seen.clear()
        with fusion(False):
            layer(x)
        assert len(seen) == 3


def test_training_bn_is_never_folded():
    layer, active, in_ch = layers()["mbconv_se"]
    layer.train()
    bns = [m for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [b.running_mean.clone() for b in bns]
    layer(torch.randn(2, in_ch, 8, 8))
    assert all(not torch.equal(b.running_mean, m) for b, m in zip(bns, before))


@pytest.mark.parametrize("name", list(layers()))
@pytest.mark.parametrize("train", [True, False])
def test_layer_forward_makes_no_weight_copy(name, train):
    layer, active, in_ch = layers()[name]
    for k, v in active.items():
        setattr(layer, k, v)
    layer.train(train)
    x = torch.randn(2, in_ch, 8, 8)
    with NoWeightCopies(layer.parameters()):
        layer(x)


@pytest.mark.parametrize("name", list(layers()))
@pytest.mark.parametrize("cl", [False, True])
def test_inference_fusion_equals_unfused(name, cl):
    # under no_grad the fold runs as one GEMM + activation op (pointwise_conv2d_act)
    layer, x = prepared(name, cl)
    with torch.no_grad():
        y1 = layer(x)
        with fusion(False):
            y2 = layer(x)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)


def test_inference_fold_follows_weight_updates():
    # in place, and through .data as OFA's set_running_statistics / copy_bn write
    layer, x = prepared("mbconv_se", False)
    with torch.no_grad():
        y1 = layer(x)
        assert torch.equal(layer(x), y1)
        layer.inverted_bottleneck.conv.conv.weight.mul_(2)  # an optimizer step, in place
        layer.point_linear.bn.bn.running_mean.data[:8].add_(0.5)
        y2 = layer(x)
        with fusion(False):
            torch.testing.assert_close(y2, layer(x), rtol=1e-10, atol=1e-10)
        assert not torch.allclose(y1, y2)
        layer.active_expand_ratio = 3  # another active block
        with fusion(False):
            ref = layer(x)
        torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["mbconv_se", "resnet_conv"])
@pytest.mark.parametrize("train", [True, False])
def test_layers_compile_without_graph_break(name, train):
    layer, active, in_ch = layers()[name]
    for k, v in active.items():
        setattr(layer, k, v)
    layer.train(train)
    twin = copy.deepcopy(layer)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, in_ch, 8, 8)
    torch.testing.assert_close(compiled(x), twin(x), rtol=1e-5, atol=1e-5)
    for (n, a), (_, b) in zip(layer.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(a, b, msg=lambda m: f"{n}: {m}")  # running stats updated alike


def test_set_running_statistics_mode_is_never_fused(monkeypatch):
    # OFA's set_running_statistics runs the model with full-size BN (the class switch) in
    # whatever mode: every BN module must run, none folded away
    layer, x = prepared("mbconv_se", False)
    layer.active_expand_ratio = 6  # full-size channels, as the switch needs
    seen = []
    for m in layer.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda module, args: seen.append(module))
    monkeypatch.setattr(ofa_fast.nn.DynamicBatchNorm2d, "SET_RUNNING_STATISTICS", True)
    with torch.no_grad():
        layer(x)
    assert len(seen) == 3

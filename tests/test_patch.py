"""ofa_fast.patch(model) on supernets built with the `ofa` package: it swaps the dynamic
ops, layers and activations for ofa_fast's in place, keeps the very same Parameter
objects and buffers, and afterwards the model's outputs and gradients equal the
unpatched model's (train and eval mode, random subnets)."""
import copy
import random

import pytest
import torch

import ofa_fast

from _helpers import assert_same_run, module_run

networks = pytest.importorskip(
    "ofa.imagenet_classification.elastic_nn.networks",
    reason="the `ofa` package (pip install ofa torchvision pillow) is the parity oracle")
ofa_dynamic_op = pytest.importorskip("ofa.imagenet_classification.elastic_nn.modules.dynamic_op")

def mbv3():
    torch.manual_seed(0)
    return networks.OFAMobileNetV3(n_classes=10, dropout_rate=0, width_mult=1.0,
                                   ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                                   depth_list=[2, 3, 4]).double()


def resnet():
    torch.manual_seed(0)
    return networks.OFAResNets(n_classes=10, dropout_rate=0, depth_list=[0, 1, 2],
                               expand_ratio_list=[0.2, 0.25, 0.35],
                               width_mult_list=[0.65, 0.8, 1.0]).double()


def perturb_bn(net):
    # non-trivial running statistics and affine parameters, as after training
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def run(net, x, train):
    return module_run(net.train(train), x)


def assert_same(a, b):
    # a deep net in train mode with a batch of one or two amplifies float64 rounding
    # through its BN layers (ofa_fast's fused BN + act sums in another order)
    assert_same_run(a, b, relative=1e-8)


@pytest.mark.parametrize("build,settings", [
    (mbv3, [dict(ks=7, e=6, d=4), dict(ks=3, e=3, d=2), "random", "random"]),
    (resnet, [dict(d=2, e=0.35, w=2), dict(d=0, e=0.2, w=0), "random"]),
], ids=["OFAMobileNetV3", "OFAResNets"])
def test_patched_supernet_matches_unpatched(build, settings):
    ref = build()
    perturb_bn(ref)
    net = copy.deepcopy(ref)
    params_before = [id(p) for p in net.parameters()]
    buffers_before = [id(b) for b in net.buffers()]
    swapped = ofa_fast.patch(net)
    assert swapped and all(" -> ofa_fast." in what for _, what in swapped)
    assert [id(p) for p in net.parameters()] == params_before
    assert [id(b) for b in net.buffers()] == buffers_before
    names = {what.split(" -> ")[1].rsplit(".", 1)[1] for _, what in swapped}
    if build is mbv3:
        assert {"DynamicMBConvLayer", "DynamicSeparableConv2d", "DynamicConv2d",
                "DynamicBatchNorm2d", "DynamicSE", "Hswish", "ConvLayer", "MBConvLayer"} <= names
    else:
        assert {"DynamicResNetBottleneckBlock", "DynamicConvLayer", "DynamicConv2d",
                "DynamicBatchNorm2d", "DynamicLinearLayer", "DynamicLinear"} <= names
    assert list(net.state_dict()) == list(ref.state_dict())
    rng = random.Random(0)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for i, s in enumerate(settings):
        if s == "random":
            random.seed(rng.random())
            cfg = ref.sample_active_subnet()
            net.set_active_subnet(**cfg)
        else:
            ref.set_active_subnet(**s)
            net.set_active_subnet(**s)
        for train in (True, False):
            assert_same(run(net, x[: 1 + i % 2], train), run(ref, x[: 1 + i % 2], train))


def test_optimizer_built_before_patch_keeps_working():
    ref = mbv3()
    net = copy.deepcopy(ref)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ofa_fast.patch(net)
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    for cfg in (dict(ks=5, e=4, d=3), dict(ks=7, e=6, d=4)):
        for model, opt_ in ((ref, opt_ref), (net, opt)):
            model.set_active_subnet(**cfg)
            opt_.zero_grad()
            model(x).square().mean().backward()
            opt_.step()
    for (n, a), (_, b) in zip(ref.state_dict().items(), net.state_dict().items()):
        torch.testing.assert_close(b.double(), a.double(), rtol=1e-8, atol=1e-8,
                                   msg=lambda m: f"{n}: {m}")


def test_patch_is_idempotent_and_unpatch_restores():
    net = mbv3()
    classes = [type(m) for m in net.modules()]
    first = ofa_fast.patch(net)
    assert ofa_fast.patch(net) == []  # nothing of ofa's left
    assert ofa_fast.unpatch(net) == len(first)
    assert [type(m) for m in net.modules()] == classes


def test_obeys_ofa_set_running_statistics(monkeypatch):
    # OFA's set_running_statistics switches ITS DynamicBatchNorm2d class to full BN
    net = mbv3()
    ofa_fast.patch(net)
    net.set_active_subnet(ks=3, e=3, d=2)
    net.train()
    bn = net.blocks[1].conv.inverted_bottleneck.bn.bn
    before = bn.running_mean.clone()
    monkeypatch.setattr(ofa_dynamic_op.DynamicBatchNorm2d, "SET_RUNNING_STATISTICS", True)
    with pytest.raises(RuntimeError):  # full-size BN on the active slice, as in OFA
        net(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert torch.equal(bn.running_mean, before)


def test_kernel_transform_mode_carried_over(monkeypatch):
    monkeypatch.setattr(ofa_dynamic_op.DynamicSeparableConv2d, "KERNEL_TRANSFORM_MODE", None)
    ref = mbv3()
    net = copy.deepcopy(ref)
    ofa_fast.patch(net)
    monkeypatch.setattr(ofa_dynamic_op.DynamicSeparableConv2d, "KERNEL_TRANSFORM_MODE", 1)
    assert not [n for n, _ in net.named_parameters() if n.endswith("_matrix")]
    ref.set_active_subnet(ks=3, e=4, d=3)
    net.set_active_subnet(ks=3, e=4, d=3)
    monkeypatch.setattr(ofa_dynamic_op.DynamicSeparableConv2d, "KERNEL_TRANSFORM_MODE", None)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(net.eval()(x), ref.eval()(x), rtol=1e-8, atol=1e-8)


def test_patch_rejects_non_modules():
    with pytest.raises(TypeError, match="expected an nn.Module, got int"):
        ofa_fast.patch(3)

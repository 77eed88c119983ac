"""OFA's dynamic layers at OFA-MobileNetV3 / ResNet-50 shapes (batch 16, 128x128 input
resolution): ofa_fast's layer against its `ofa` twin (same config, same weights, same
active setting), forward (eval mode, as in subnet validation) and forward + backward
(train mode, as in a supernet training step), in one run. `ofa_fast_unfused` is
ofa_fast with its fusions switched off (ofa_fast.nn.fusion(False): eval-mode conv + BN
folding, BN + activation, the pointwise conv's activation epilogue): the gain of fusing.

    pytest benchmarks/test_bench_layers.py --benchmark-only
"""
import pytest
import torch

import ofa_fast
from _bench import record, sync

ofa_layers = pytest.importorskip(
    "ofa.imagenet_classification.elastic_nn.modules.dynamic_layers",
    reason="the `ofa` package (pip install ofa torchvision pillow) is the baseline")

BATCH = 16
# name -> (layer class name, constructor kwargs, active settings, input [C, H])
LAYERS = {
    "MBConv k7 e6 24@32 hswish+SE": ("DynamicMBConvLayer", dict(
        in_channel_list=[24], out_channel_list=[24], kernel_size_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6], stride=1, act_func="h_swish", use_se=True),
        dict(active_kernel_size=7, active_expand_ratio=6), (24, 32)),
    "MBConv k7 e6 40@16 hswish+SE": ("DynamicMBConvLayer", dict(
        in_channel_list=[40], out_channel_list=[40], kernel_size_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6], stride=1, act_func="h_swish", use_se=True),
        dict(active_kernel_size=7, active_expand_ratio=6), (40, 16)),
    "MBConv k7 e6 80@8 relu": ("DynamicMBConvLayer", dict(
        in_channel_list=[80], out_channel_list=[80], kernel_size_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6], stride=1, act_func="relu", use_se=False),
        dict(active_kernel_size=7, active_expand_ratio=6), (80, 8)),
    "MBConv k3 e3 24@32 relu": ("DynamicMBConvLayer", dict(
        in_channel_list=[24], out_channel_list=[24], kernel_size_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6], stride=1, act_func="relu", use_se=False),
        dict(active_kernel_size=3, active_expand_ratio=3), (24, 32)),
    "MBConv k5 e4 s2 40@16 hswish+SE": ("DynamicMBConvLayer", dict(
        in_channel_list=[40], out_channel_list=[80], kernel_size_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6], stride=2, act_func="h_swish", use_se=True),
        dict(active_kernel_size=5, active_expand_ratio=4), (40, 16)),
    "ConvLayer 1x1 160->960@4": ("DynamicConvLayer", dict(
        in_channel_list=[160], out_channel_list=[960], kernel_size=1, act_func="h_swish"),
        {}, (160, 4)),
    "ConvLayer 3x3 s2 3->32@128": ("DynamicConvLayer", dict(
        in_channel_list=[3], out_channel_list=[32], kernel_size=3, stride=2, act_func="relu"),
        {}, (3, 128)),
    "LinearLayer 1280->1000": ("DynamicLinearLayer", dict(
        in_features_list=[1280], out_features=1000), {}, (1280, 0)),
    "ResNetBottleneck 256@16 e0.25": ("DynamicResNetBottleneckBlock", dict(
        in_channel_list=[256], out_channel_list=[256], expand_ratio_list=[0.2, 0.25, 0.35],
        kernel_size=3, stride=1), dict(active_expand_ratio=0.25), (256, 16)),
}
IMPLS = ["ofa_fast", "ofa_fast_unfused", "ofa"]


def build(name, impl, train):
    cls_name, kwargs, active, (C, H) = LAYERS[name]
    ofa_m = getattr(ofa_layers, cls_name)(**kwargs)
    if impl == "ofa":
        m = ofa_m
    else:
        m = getattr(ofa_fast.nn, cls_name).build_from_config(ofa_m.config)
        m.load_state_dict(ofa_m.state_dict())
    for k, v in active.items():
        setattr(m, k, v)
    m.train(train)
    x = torch.randn(BATCH, C) if H == 0 else torch.randn(BATCH, C, H, H)
    return m, x.requires_grad_(train)


def cases():
    for name in LAYERS:
        for mode in ("fwd", "fwdbwd"):
            for impl in IMPLS:
                yield pytest.param(name, mode, impl, id=f"{name}-{mode}-{impl}".replace(" ", "_"))


@pytest.mark.parametrize("name,mode,impl", list(cases()))
def test_layer(benchmark, name, mode, impl):
    train = mode == "fwdbwd"
    m, x = build(name, impl, train)
    params = list(m.parameters())
    grad = torch.randn_like(m(x).detach()) if train else None
    fuse = impl != "ofa_fast_unfused"

    def run():
        with ofa_fast.nn.fusion(fuse):
            if not train:
                with torch.no_grad():
                    m(x)
            else:
                x.grad = None
                for p in params:
                    p.grad = None
                m(x).backward(grad)
        sync("cpu")

    benchmark.group = f"layer {name} {mode}"
    benchmark.pedantic(run, rounds=7, warmup_rounds=1, iterations=1)
    record(benchmark, benchmark.group, impl)

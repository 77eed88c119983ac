"""Elastic depthwise conv at OFA-MobileNetV3 layer shapes (batch 16): ofa_fast's
DynamicSeparableConv2d (NCHW and channels_last input) against OFA's own module and
against plain F.conv2d on the cropped filter in both memory formats, forward and
forward + backward, in one run.

    pytest benchmarks/test_bench_dwconv.py --benchmark-only
"""
import pytest
import torch
import torch.nn.functional as F

import ofa_fast
from _bench import LAYER_BATCH as BATCH, LAYER_SHAPES as SHAPES, op_round, record

try:
    from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import (
        DynamicSeparableConv2d as OfaConv)
except Exception:  # pragma: no cover - the baseline is a test extra
    OfaConv = None

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}
IMPLS = ["ofa_fast", "ofa_fast_cl", "ofa", "F.conv2d", "F.conv2d_cl"]


def cases():
    for device in DEVICES:
        for dtype in DTYPES[device]:
            for C, H in SHAPES:
                for k in (3, 5, 7):
                    for mode in ("fwd", "fwdbwd"):
                        for impl in IMPLS + (["ofa_fast_triton"] if device == "cuda" else []):
                            dt = str(dtype).replace("torch.", "")
                            yield pytest.param(device, dtype, C, H, k, mode, impl,
                                               id=f"{device}-{dt}-C{C}x{H}-k{k}-{mode}-{impl}")


def build(device, dtype, C, H, k, impl):
    """The forward callable, its input (in the impl's memory format) and its parameters."""
    x = torch.randn(BATCH, C, H, H, device=device, dtype=dtype)
    if impl.endswith("_cl"):
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    if impl.startswith("ofa_fast"):
        m = ofa_fast.nn.DynamicSeparableConv2d(C, [3, 5, 7]).to(device, dtype)
        backend = "triton" if impl == "ofa_fast_triton" else "auto"
        if backend == "triton" and ofa_fast.backend._why_unusable("triton", device):
            pytest.skip(ofa_fast.backend._why_unusable("triton", device))

        def fwd():
            with ofa_fast.use_backend(backend):
                return m(x, k)
        return fwd, x, list(m.parameters())
    if impl == "ofa":
        if OfaConv is None:
            pytest.skip("the `ofa` package is not installed")
        m = OfaConv(C, [3, 5, 7]).to(device, dtype)
        return (lambda: m(x, k)), x, list(m.parameters())
    w = torch.randn(C, 1, k, k, device=device, dtype=dtype, requires_grad=True)
    return (lambda: F.conv2d(x, w, None, 1, k // 2, 1, C)), x, [w]


@pytest.mark.parametrize("device,dtype,C,H,k,mode,impl", list(cases()))
def test_dwconv(benchmark, device, dtype, C, H, k, mode, impl):
    fwd, x, params = build(device, dtype, C, H, k, impl)
    grad = torch.randn_like(fwd().detach())

    run = op_round(fwd, x, params, grad, mode, device)
    dt = str(dtype).replace("torch.", "")
    benchmark.group = f"{device} {dt} C={C} {H}x{H} k={k} {mode}"
    # CPU forwards take about a millisecond: 40 rounds keep their medians steady on a
    # shared machine (7 moved single entries by 20%); forward + backward rounds are longer
    rounds = 50 if device != "cpu" else 40 if mode == "fwd" else 10
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=3, iterations=1)
    record(benchmark, benchmark.group, impl)

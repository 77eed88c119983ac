"""Batch norm + activation in training mode (batch statistics) at OFA-MobileNetV3 layer
shapes (batch 16): ofa_fast's one op (ofa_fast.ops.batch_norm_act, what its layers run)
against OFA's DynamicBatchNorm2d followed by OFA's activation module, each on NCHW and
on channels_last input, forward and forward + backward, in one run.

    pytest benchmarks/test_bench_bn_act.py --benchmark-only

The channels_last rows guard a layout the training loop offers (`channels_last: true`):
a backward that lost its vectorisation there once made a whole supernet step 1.45x
slower than in NCHW.
"""
import pytest
import torch

import ofa_fast
from _bench import LAYER_BATCH as BATCH, LAYER_SHAPES as SHAPES, op_round, record

try:
    from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import (
        DynamicBatchNorm2d as OfaBN)
    from ofa.utils import build_activation as ofa_activation
except Exception:  # pragma: no cover - the baseline is a test extra
    OfaBN = None

IMPLS = ["ofa_fast", "ofa_fast_cl", "ofa", "ofa_cl"]


def cases():
    for C, H in SHAPES:
        for act in ("relu", "h_swish"):
            for mode in ("fwd", "fwdbwd"):
                for impl in IMPLS:
                    yield pytest.param(C, H, act, mode, impl, id=f"C{C}x{H}-{act}-{mode}-{impl}")


def build(C, H, act, impl):
    """The forward callable, its input (in the impl's memory format) and its parameters."""
    x = torch.randn(BATCH, C, H, H)
    if impl.endswith("_cl"):
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    if impl.startswith("ofa_fast"):
        bn = torch.nn.BatchNorm2d(C)
        bn.weight.data.uniform_(0.5, 1.5)

        def fwd():
            with ofa_fast.use_backend("cpu"):
                return ofa_fast.ops.batch_norm_act(x, bn, act)
        if ofa_fast.backend._why_unusable("cpu", "cpu"):
            pytest.skip(ofa_fast.backend._why_unusable("cpu", "cpu"))
        return fwd, x, list(bn.parameters())
    if OfaBN is None:
        pytest.skip("the `ofa` package is not installed")
    bn = OfaBN(C)
    bn.bn.weight.data.uniform_(0.5, 1.5)
    a = ofa_activation(act)
    return (lambda: a(bn(x))), x, list(bn.parameters())


@pytest.mark.parametrize("C,H,act,mode,impl", list(cases()))
def test_bn_act(benchmark, C, H, act, mode, impl):
    fwd, x, params = build(C, H, act, impl)
    y = fwd()
    assert y is not None, "batch_norm_act did not apply"
    grad = torch.randn_like(y.detach())

    run = op_round(fwd, x, params, grad, mode)
    benchmark.group = f"bn_act C={C} {H}x{H} {act} {mode}"
    benchmark.pedantic(run, rounds=40 if mode == "fwd" else 20, warmup_rounds=3, iterations=1)
    record(benchmark, benchmark.group, impl)

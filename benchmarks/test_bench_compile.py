"""torch.compile on an OFA-MobileNetV3 supernet (ks [3, 5, 7], e [3, 4, 6], d [2, 3, 4]):
one training step per round with a new random subnet (the same sequence for every impl),
forward, cross-entropy, backward, SGD with momentum; in one run:

- ofa_fast:          ofa_fast's supernet, eager
- ofa_fast_compiled: ofa_fast.compile_supernet(net): one graph for every subnet, compiled
                     in the warmup round
- ofa:               the `ofa` package's supernet (same weights), eager
- ofa_compiled:      torch.compile(ofa_net): Dynamo specialises on the subnet, so each
                     round's new subnet compiles anew, and the round's time includes it

Compilations (graphs Dynamo hands the backend: torch._dynamo.utils.counters["stats"]
["unique_graphs"]) over warmup + timed rounds are printed at the end, beside the ratios.

    pytest benchmarks/test_bench_compile.py --benchmark-only

Environment: OFA_FAST_BENCH_COMPILE_BACKEND (default inductor; aot_eager compiles much
faster but runs slower than eager, so only its counts mean anything),
OFA_FAST_BENCH_COMPILE_SHAPE="batch,size" (default 8,96), OFA_FAST_BENCH_THREADS (see
conftest.py). With Dynamo's default recompile_limit (8), `ofa_compiled` would
fall back to eager after 8 subnets; the rounds here stay below it.
"""
import copy
import os

import pytest
import torch
from torch._dynamo.utils import counters

import ofa_fast
from _bench import COMPILATIONS, record, supernet_step

ofa_nets = pytest.importorskip(
    "ofa.imagenet_classification.elastic_nn.networks",
    reason="the `ofa` package (pip install ofa torchvision pillow) is the baseline")

BACKEND = os.environ.get("OFA_FAST_BENCH_COMPILE_BACKEND", "inductor")
BATCH, SIZE = (int(v) for v in os.environ.get("OFA_FAST_BENCH_COMPILE_SHAPE", "8,96").split(","))
CLASSES, SEED = 1000, 0
ROUNDS, WARMUP = 5, 1
IMPLS = ["ofa_fast", "ofa_fast_compiled", "ofa", "ofa_compiled"]
KWARGS = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    theirs = ofa_nets.OFAMobileNetV3(**copy.deepcopy(KWARGS))
    ours = ofa_fast.networks.OFAMobileNetV3(**KWARGS)
    ours.load_state_dict(theirs.state_dict())
    return {"ofa_fast": ours, "ofa": theirs}


def model(nets, impl):
    """(the module to call, the network to set subnets on and optimise)."""
    net = copy.deepcopy(nets["ofa" if impl in ("ofa", "ofa_compiled") else "ofa_fast"]).train()
    if impl == "ofa_fast_compiled":
        return ofa_fast.compile_supernet(net, backend=BACKEND), net
    if impl == "ofa_compiled":
        return torch.compile(net, backend=BACKEND), net
    return net, net


@pytest.mark.parametrize("impl", IMPLS)
def test_compile_step(benchmark, nets, impl):
    call, net = model(nets, impl)
    step = supernet_step(net, call, BATCH, SIZE, CLASSES, SEED)

    graphs = counters["stats"]["unique_graphs"]
    benchmark.group = f"compile step ofa_mbv3_d234_e346_k357 {BACKEND} b{BATCH} {SIZE}px"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    if "compiled" in impl:
        compilations = counters["stats"]["unique_graphs"] - graphs
        benchmark.extra_info["compilations"] = compilations
        COMPILATIONS[benchmark.group][impl] = (compilations, ROUNDS + WARMUP)
    record(benchmark, benchmark.group, impl)

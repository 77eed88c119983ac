"""OFA's specialized (static) networks, as users deploy and fine-tune them: forward in eval
mode under no_grad ("eval") and one fine-tuning step ("finetune": train mode, forward,
cross-entropy, backward, SGD with momentum), batch 8 at the network's own image size,
fp32. Three nets of OFA's zoo (ofa_fast.zoo.specialized_ids): a large and a small
MobileNetV3 and a ProxylessNAS net.

Impls, interleaved per net and mode, in one run, all with the same weights:
- ofa_fast:         ofa_fast.ofa_specialized(net_id)
- ofa:              the `ofa` package's MobileNetV3 / ProxylessNASNets built from the same
                    net config
- ofa_fast_patched: a copy of that `ofa` net after ofa_fast.patch(model) (its static
                    layers switched to ofa_fast's)

    pytest benchmarks/test_bench_specialized.py --benchmark-only
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import ofa_fast
from ofa_fast import zoo
from _bench import record

ofa_networks = pytest.importorskip(
    "ofa.imagenet_classification.networks",
    reason="the `ofa` package (pip install ofa torchvision pillow) is the baseline")

NETS = ["flops-595M_top1-80.0_finetune-75", "note10_lat-8ms_top1-71.4_finetune-25",
        "cpu_lat-11ms_top1-72.0_finetune-25"]
BATCH, CLASSES = 8, 1000
ROUNDS, WARMUP = 5, 2
IMPLS = ["ofa_fast", "ofa", "ofa_fast_patched"]

_NETS = {}  # the current net's three models and image size (one net held at a time)


def build(net_id, impl):
    if net_id not in _NETS:
        _NETS.clear()
        ours, size = ofa_fast.ofa_specialized(net_id)
        config, _ = zoo.specialized_config(net_id)
        theirs = getattr(ofa_networks, config["name"]).build_from_config(copy.deepcopy(config))
        theirs.load_state_dict(ours.state_dict())
        patched = copy.deepcopy(theirs)
        ofa_fast.patch(patched)
        _NETS[net_id] = ({"ofa_fast": ours, "ofa": theirs, "ofa_fast_patched": patched}, size)
    models, size = _NETS[net_id]
    return models[impl], size


def cases():
    for net_id in NETS:
        for mode in ("eval", "finetune"):
            for impl in IMPLS:
                yield pytest.param(net_id, mode, impl, id=f"{net_id}-{mode}-{impl}")


@pytest.mark.parametrize("net_id,mode,impl", list(cases()))
def test_specialized(benchmark, net_id, mode, impl):
    net, size = build(net_id, impl)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, size, size, generator=g)
    labels = torch.randint(CLASSES, (BATCH,), generator=g)
    if mode == "eval":
        net.eval()

        def run():
            with torch.no_grad():
                net(x)
    else:
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)

        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), labels).backward()
            opt.step()

    benchmark.group = f"specialized {mode} {net_id} ({size}px)"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    record(benchmark, benchmark.group, impl)

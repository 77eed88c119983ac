"""One supernet training step for the four supernets of OFA's zoo (ofa_fast.zoo.OFA_NETS):
set a random active subnet, forward at batch 16, 128x128, fp32, cross-entropy on random
labels (1000 classes), backward, SGD step with momentum.

Impls, interleaved per network, in one run:
- ofa_fast:         ofa_fast.ofa_net(name)
- ofa:              the `ofa` package's supernet class with the same arguments
- ofa_fast_patched: a copy of that `ofa` supernet after ofa_fast.patch(model) (named
                    ofa_fast_* so the ratio table prints its speed-up over `ofa`)
- ofa_fast_cl:      ofa_fast's network and its input in channels_last (`ofa-fast train`'s
                    `channels_last: true`; OFA's baseline stays NCHW)
All four start from the same weights (OFA's state_dict loaded into ours) and run the
same sequence of subnets: each draws its configs from its own random.Random(SEED) and
calls set_active_subnet, the same call in both packages.

    pytest benchmarks/test_bench_supernet.py --benchmark-only

Threads: torch's default; OFA_FAST_BENCH_THREADS=n sets n. On a shared 2-core machine
whose other core is busy, two threads can make a step 10-100x slower (a parallel
region waits for a descheduled thread); one thread is the stable figure then.
"""
import copy

import pytest
import torch

import ofa_fast
from ofa_fast.zoo import OFA_NETS
from _bench import record, supernet_step

ofa_nets = pytest.importorskip(
    "ofa.imagenet_classification.elastic_nn.networks",
    reason="the `ofa` package (pip install ofa torchvision pillow) is the baseline")

BATCH, SIZE, CLASSES = 16, 128, 1000
SEED = 0
ROUNDS, WARMUP = 5, 1
IMPLS = ["ofa_fast", "ofa", "ofa_fast_patched", "ofa_fast_cl"]


_NETS = {}  # the current network's three models (one network held at a time)


def build(name, impl):
    if name not in _NETS:
        _NETS.clear()
        cls_name, kwargs, _ = OFA_NETS[name]
        torch.manual_seed(0)
        theirs = getattr(ofa_nets, cls_name)(**copy.deepcopy(kwargs))
        ours = ofa_fast.ofa_net(name)
        ours.load_state_dict(theirs.state_dict())
        patched = copy.deepcopy(theirs)
        ofa_fast.patch(patched)
        ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
        _NETS[name] = {"ofa_fast": ours, "ofa": theirs, "ofa_fast_patched": patched,
                       "ofa_fast_cl": ours_cl}
    return _NETS[name][impl]


def cases():
    for name in OFA_NETS:
        for impl in IMPLS:
            yield pytest.param(name, impl, id=f"{name}-{impl}")


@pytest.mark.parametrize("name,impl", list(cases()))
def test_supernet_step(benchmark, name, impl):
    net = build(name, impl).train()
    fmt = torch.channels_last if impl.endswith("_cl") else torch.contiguous_format
    step = supernet_step(net, net, BATCH, SIZE, CLASSES, SEED, memory_format=fmt)

    benchmark.group = f"supernet step {name}"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    record(benchmark, benchmark.group, impl)

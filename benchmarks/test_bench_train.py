"""Training throughput of `ofa-fast train`'s loop (images per second), ofa_fast's supernet
against the `ofa` package's, interleaved step by step in one run.

Each step is what the run does in its last phase (elastic expand: a random subnet of the
whole search space per step), on the embedded synthetic set: a batch of 64 from
ofa_fast.train.data, resized to a random size of {40, 48} (elastic resolution; the default run trains at 48), then
ofa_fast.train.loop.train_step: forward, label-smoothed cross entropy plus distillation
from the largest network (the teacher, of the same package), backward, SGD with
momentum and weight decay. Both supernets start from the same weights and see the same
batches, sizes and subnets (the run's own sampling, space.subnet_rng).

    pytest benchmarks/test_bench_train.py --benchmark-only -s

Cases: OFA_FAST_BENCH_TRAIN_NETS (comma-separated, default the MobileNetV3 w1.0 supernet;
"all": the four), subnets per step 1 and 2 (the depth / expand phases' dynamic batch
size in OFA's schedule). Threads: torch's default; OFA_FAST_BENCH_THREADS=n sets n.
"""
import os
import statistics
import time

import pytest
import torch

from _bench import RESULTS

pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks",
                    reason="the `ofa` package (pip install ofa torchvision pillow) is the baseline")

from ofa_fast.train import data as D  # noqa: E402
from ofa_fast.train.loop import param_groups, train_step  # noqa: E402
from ofa_fast.train.space import (NETWORKS, Phase, build_supernet, sample_subnet,  # noqa: E402
                                  space_of, subnet_rng)

BATCH, SIZES, CLASSES = 64, (40, 48), 10
STEPS, WARMUP = 8, 2


def _nets():
    names = os.environ.get("OFA_FAST_BENCH_TRAIN_NETS", "ofa_mbv3_d234_e346_k357_w1.0")
    return list(NETWORKS) if names == "all" else [n.strip() for n in names.split(",")]


@pytest.fixture(scope="module")
def batches():
    train_set, _, _ = D.build_datasets("synthetic", max(SIZES), train_samples=BATCH * 4,
                                       val_samples=BATCH)
    return list(D.train_loader(train_set, batch_size=BATCH, epoch=0))


def _setup(name, package, init_state):
    net = build_supernet(name, CLASSES, package=package)
    net.load_state_dict(init_state)
    teacher = build_supernet(name, CLASSES, package=package)
    teacher.load_state_dict(init_state)
    teacher.set_max_net()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(param_groups(net, 3e-5), lr=0.01, momentum=0.9, nesterov=True)
    return net.train(), teacher.train(), opt


@pytest.mark.parametrize("subnets", [1, 2])
@pytest.mark.parametrize("name", _nets())
def test_train_throughput(benchmark, batches, name, subnets):
    torch.manual_seed(0)
    init_state = build_supernet(name, CLASSES).state_dict()
    impls = {"ofa_fast": _setup(name, "ofa_fast", init_state), "ofa": _setup(name, "ofa", init_state)}
    space = space_of(impls["ofa_fast"][0])
    candidates = Phase("expand" if space.family == "mbv3" else "width").resolve(space)
    times = {k: [] for k in impls}
    counter = {"step": 0}

    def step_pair():
        i = counter["step"]
        counter["step"] += 1
        images, labels = batches[i % len(batches)]
        size = subnet_rng(0, i, 1).choice(SIZES)
        rng = subnet_rng(0, i)
        archs = [sample_subnet(space, candidates, rng) for _ in range(subnets)]
        for impl, (net, teacher, opt) in impls.items():  # interleaved: same machine state
            t0 = time.perf_counter()
            x = D.resize_batch(images, size)
            train_step(net, net, opt, x, labels, archs, teacher=teacher, kd_ratio=1.0)
            if i >= WARMUP:
                times[impl].append(time.perf_counter() - t0)

    benchmark.group = f"train {name} subnets/step={subnets}"
    benchmark.pedantic(step_pair, rounds=STEPS + WARMUP, iterations=1)
    lines = []
    for impl, ts in times.items():
        median = statistics.median(ts)
        RESULTS[benchmark.group][impl] = median
        benchmark.extra_info[f"{impl}_images_per_s"] = BATCH / median
        lines.append(f"{impl} {BATCH / median:.0f} img/s")
    ratio = statistics.median(times["ofa"]) / statistics.median(times["ofa_fast"])
    benchmark.extra_info["speedup_vs_ofa"] = ratio
    print(f"\n{benchmark.group}: " + ", ".join(lines) + f" -> x{ratio:.2f} vs ofa")

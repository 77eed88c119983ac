"""Shared by the benchmark suites: where results are recorded for the ratio table."""
import collections
import random

import torch
import torch.nn.functional as F

from ofa_fast.train.space import sample_subnet, space_of

# OFA-MobileNetV3 layer shapes (channels, spatial size) and batch of the per-op suites
LAYER_SHAPES = [(144, 32), (240, 16), (480, 8)]
LAYER_BATCH = 16

RESULTS = collections.defaultdict(dict)  # group -> impl -> median seconds
COMPILATIONS = collections.defaultdict(dict)  # group -> impl -> (compilations, steps)


def record(benchmark, group, impl):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[group][impl] = stats.stats.median


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def op_round(fwd, x, params, grad, mode, device="cpu"):
    """One benchmark round of an op's callable: the forward under no_grad ("fwd"), or
    forward + backward ("fwdbwd") with fresh gradients each round, as in a training step
    (no accumulation)."""
    def run():
        if mode == "fwd":
            with torch.no_grad():
                fwd()
        else:
            x.grad = None
            for p in params:
                p.grad = None
            fwd().backward(grad)
        sync(device)

    return run


def random_config(net, rng):
    """A random subnet of `net` (OFA's or ofa_fast's: the same attributes), from `rng`:
    the whole search space, as `ofa-fast train` samples it."""
    space = space_of(net)
    return sample_subnet(space, space.dims, rng)


def supernet_step(net, call, batch, size, classes, seed, memory_format=torch.contiguous_format):
    """One training step of a supernet, as a closure: a random subnet (the same sequence
    for every impl, from random.Random(seed)) set on `net`, forward through `call` (net
    or a compiled wrapper) on fixed random images (in `memory_format`), cross entropy,
    backward, SGD with momentum."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=memory_format)
    labels = torch.randint(classes, (batch,), generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    rng = random.Random(seed)

    def step():
        net.set_active_subnet(**random_config(net, rng))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(call(x), labels).backward()
        opt.step()
        sync("cpu")

    return step

"""Shared by the benchmark suites: where results are recorded for the ratio table."""
import collections

import torch

RESULTS = collections.defaultdict(dict)  # group -> impl -> median seconds
COMPILATIONS = collections.defaultdict(dict)  # group -> impl -> (compilations, steps)


def record(benchmark, group, impl):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[group][impl] = stats.stats.median


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()

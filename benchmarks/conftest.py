"""Benchmark configuration: each benchmark records its median under (group, impl), and a
table of ratios against the `ofa` package and plain PyTorch is printed at the end of
the session (the ratio in one run is the figure; absolute times are noise here)."""
import os

import pytest
import torch

from _bench import COMPILATIONS, RESULTS


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """OFA_FAST_BENCH_THREADS=n runs a suite with n torch threads (default: torch's). On a
    shared 2-core machine whose other core is busy, one thread is the stable figure."""
    before = torch.get_num_threads()
    n = os.environ.get("OFA_FAST_BENCH_THREADS")
    if n:
        torch.set_num_threads(int(n))
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("ofa_fast ratios (time of the other / time of ofa_fast; > 1: ofa_fast is faster)")
    for group in sorted(RESULTS):
        impls = RESULTS[group]
        ours = {k: v for k, v in impls.items() if k.startswith("ofa_fast")}
        others = {k: v for k, v in impls.items() if not k.startswith("ofa_fast")}
        if not ours or not others:
            continue
        best_torch = min((v for k, v in others.items() if k.startswith("F.conv2d")), default=None)
        parts = []
        for name, t in sorted(ours.items()):
            cells = [f"{name} {t * 1e3:.2f} ms"]
            if "ofa" in others:
                cells.append(f"x{others['ofa'] / t:.1f} vs ofa")
            for other in sorted(k for k in others if k.startswith("ofa_")):  # e.g. ofa_compiled
                cells.append(f"x{others[other] / t:.1f} vs {other}")
            if best_torch is not None:
                cells.append(f"x{best_torch / t:.2f} vs best F.conv2d")
            parts.append(", ".join(cells))
        tr.write_line(f"{group}: " + " | ".join(parts))
    for group in sorted(COMPILATIONS):
        cells = [f"{impl} {n} compilation(s) in {steps} steps"
                 for impl, (n, steps) in sorted(COMPILATIONS[group].items())]
        tr.write_line(f"{group}: " + " | ".join(cells))

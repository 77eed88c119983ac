"""GPU report: the elastic depthwise conv at OFA-MobileNetV3 layer shapes (batch 16) on
the visible GPU. ofa_fast's module on the `cuda` and `triton` backends against OFA's own
module and plain F.conv2d (cropped filter) in its fastest memory format, interleaved in
one run, timed with CUDA events (median). Prints one table; writes a CSV if asked.

    python benchmarks/gpu_report.py [--csv out.csv] [--reps 30]
"""
from __future__ import annotations

import argparse
import csv
import statistics

import torch
import torch.nn.functional as F

import ofa_fast

try:
    from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import (
        DynamicSeparableConv2d as OfaConv)
except Exception:
    OfaConv = None

SHAPES = [(144, 32), (240, 16), (480, 8)]
BATCH = 16


def timed(fns, reps):
    """Median ms of each callable, calls interleaved round by round."""
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (and Triton JIT)
        fn()
        fn()
    torch.cuda.synchronize()
    for _ in range(reps):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(t) for name, t in times.items()}


def run(reps, csv_path=None):
    dev = "cuda"
    usable = ofa_fast.usable_backends("cuda")
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for C, H in SHAPES:
            for k in (3, 5, 7):
                x = torch.randn(BATCH, C, H, H, device=dev, dtype=dtype, requires_grad=True)
                xcl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
                ours = ofa_fast.nn.DynamicSeparableConv2d(C, [3, 5, 7]).to(dev, dtype)
                g = torch.randn(BATCH, C, H, H, device=dev, dtype=dtype)
                gcl = g.to(memory_format=torch.channels_last)
                w = torch.randn(C, 1, k, k, device=dev, dtype=dtype, requires_grad=True)
                fns = {}
                for name in ("cuda", "triton"):
                    if name not in usable:
                        continue

                    def fwd(name=name, xx=x):
                        with ofa_fast.use_backend(name), torch.no_grad():
                            ours(xx, k)

                    def fb(name=name, xx=x, gg=g):
                        with ofa_fast.use_backend(name):
                            ours(xx, k).backward(gg)

                    fns[f"{name} fwd"] = fwd
                    fns[f"{name} fb"] = fb
                    fns[f"{name} cl fwd"] = lambda name=name: fwd(name, xcl)
                    fns[f"{name} cl fb"] = lambda name=name: fb(name, xcl, gcl)
                if OfaConv is not None:
                    base = OfaConv(C, [3, 5, 7]).to(dev, dtype)
                    fns["ofa fb"] = lambda: base(x, k).backward(g)
                fns["F.conv2d fb"] = lambda: F.conv2d(x, w, None, 1, k // 2, 1, C).backward(g)
                fns["F.conv2d cl fb"] = lambda: F.conv2d(xcl, w, None, 1, k // 2, 1, C).backward(gcl)
                t = timed(fns, reps)
                best_torch = min(t["F.conv2d fb"], t["F.conv2d cl fb"])
                nbytes = 2 * x.numel() * x.element_size() + C * k * k * x.element_size()
                for name in ("cuda", "triton"):
                    for fmt in ("", " cl"):
                        if f"{name}{fmt} fb" not in t:
                            continue
                        fb_ms = t[f"{name}{fmt} fb"]
                        rows.append({
                            "dtype": str(dtype).replace("torch.", ""), "shape": f"{C}x{H}", "k": k,
                            "backend": name + fmt.replace(" ", "_"),
                            "fwd_ms": t[f"{name}{fmt} fwd"],
                            "fwd_GBps": nbytes / (t[f"{name}{fmt} fwd"] * 1e-3) / 1e9,
                            "fb_ms": fb_ms,
                            "ofa_fb_ms": t.get("ofa fb", float("nan")),
                            "vs_ofa": t.get("ofa fb", float("nan")) / fb_ms,
                            "torch_best_fb_ms": best_torch,
                            "vs_torch_best": best_torch / fb_ms,
                        })
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    name = torch.cuda.get_device_name(0)
    print(f"\n=== ofa_fast GPU report: {name}, batch {BATCH}, fwd+bwd (fb) vs `ofa` and best-layout "
          f"F.conv2d; fwd GB/s = (input + output + filter bytes) / fwd time ===")
    print(f"{'dtype':<9}{'shape':<8}{'k':>2} {'backend':<10}{'fwd ms':>8}{'GB/s':>7}{'fb ms':>8}"
          f"{'ofa ms':>9}{'vs ofa':>8}{'torch ms':>9}{'vs torch':>9}")
    for r in rows:
        print(f"{r['dtype']:<9}{r['shape']:<8}{r['k']:>2} {r['backend']:<10}{r['fwd_ms']:>8.3f}"
              f"{r['fwd_GBps']:>7.0f}{r['fb_ms']:>8.3f}{r['ofa_fb_ms']:>9.3f}{r['vs_ofa']:>7.1f}x"
              f"{r['torch_best_fb_ms']:>9.3f}{r['vs_torch_best']:>8.2f}x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--csv", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_report: no CUDA GPU visible")
    run(a.reps, a.csv)

"""The `ofa-fast` command (also `python -m ofa_fast`).

    ofa-fast info    version, torch/CUDA/Triton, which backends are built and usable,
                     and what `auto` picks
    ofa-fast demo    DynamicSeparableConv2d forward + backward on every usable backend,
                     timed against OFA's own module (the `ofa` package) in one run; then
                     an OFA DynamicMBConvLayer switched to ofa_fast by ofa_fast.patch(),
                     timed against the unpatched layer
    ofa-fast train   trains an OFA supernet end to end: progressive shrinking in one
                     run, distillation, elastic resolution, DDP (torchrun), resumable
                     checkpoints; `ofa-fast train --help`, ofa_fast.train
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time

import torch

import ofa_fast
from ofa_fast import _ext, backend


def _version_of(module_name):
    if importlib.util.find_spec(module_name) is None:
        return None
    try:
        from importlib.metadata import version

        return version(module_name)
    except Exception:
        return "installed"


def info_lines():
    lines = [f"ofa_fast {ofa_fast.__version__}"]
    cuda = torch.version.cuda or "none (CPU-only build)"
    lines.append(f"torch {torch.__version__}, CUDA {cuda}, triton {_version_of('triton') or 'not installed'}")
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)} "
                     f"(sm_{''.join(map(str, torch.cuda.get_device_capability(0)))})")
    else:
        lines.append("GPU: none visible")
    if _ext.C is None:
        lines.append(f"compiled extension: NOT loaded ({_ext.load_error})")
    else:
        archs = _ext.cuda_archs() if _ext.has_cuda_kernels() else "not built"
        lines.append(f"compiled extension: {_ext.C.__file__}")
        lines.append(f"  CPU kernels: built; CUDA kernels: {archs}")
    lines.append("backends:")
    for name in backend.BACKENDS[:-1]:
        why = backend._why_unusable(name, None)
        lines.append(f"  {name:<10} {'usable' if why is None else 'not usable: ' + why}")
    lines.append(f"selected: {backend.get_backend()}")
    picks = [f"cpu float32 -> {backend.auto_choice('cpu', torch.float32)}",
             f"cpu bfloat16 -> {backend.auto_choice('cpu', torch.bfloat16)}"]
    if torch.cuda.is_available():
        picks += [f"cuda {dt} -> {backend.auto_choice('cuda', getattr(torch, dt))}"
                  for dt in ("float32", "bfloat16")]
    lines.append("auto picks: " + "; ".join(picks))
    return lines


def _time(fn, repeat):
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def demo(batch, channels, size, kernel_sizes, repeat, file=None):
    """Times forward+backward of ofa_fast's module on each usable backend against OFA's
    module, interleaved in one run; prints ms and the speed-up."""
    file = file or sys.stdout
    try:
        from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import (
            DynamicSeparableConv2d as Baseline)
        base_name = "ofa"
    except Exception:  # the oracle is optional here: fall back to the reference backend
        Baseline, base_name = None, "reference backend"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"DynamicSeparableConv2d forward+backward, batch {batch}, {channels} channels, "
          f"{size}x{size}, baseline: {base_name}", file=file)
    print(f"{'device':<7}{'backend':<11}{'k':>3}{'ofa_fast ms':>13}{'baseline ms':>13}"
          f"{'speed-up':>10}{'max |diff|':>12}", file=file)
    for device in devices:
        for name in backend.usable_backends(device):
            if name in ("auto", "reference") or (name == "triton" and device == "cpu"):
                continue
            for k in kernel_sizes:
                ours = ofa_fast.nn.DynamicSeparableConv2d(channels, [3, 5, 7]).to(device)
                base = Baseline(channels, [3, 5, 7]).to(device) if Baseline else \
                    ofa_fast.nn.DynamicSeparableConv2d(channels, [3, 5, 7]).to(device)
                base.load_state_dict(ours.state_dict())
                x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)

                def step(module, backend_name):
                    x.grad = None  # fresh gradients, as in a training step
                    module.zero_grad(set_to_none=True)
                    with ofa_fast.use_backend(backend_name):
                        module(x, k).sum().backward()

                def run_ours():
                    step(ours, name)

                def run_base():
                    step(base, "reference")  # the `ofa` module ignores the backend

                t_ours, t_base = [], []
                for _ in range(repeat):  # interleaved: both see the same machine state
                    t_ours += _time(run_ours, 1)
                    t_base += _time(run_base, 1)
                with ofa_fast.use_backend(name):
                    diff = (ours(x, k) - base(x, k)).abs().max().item()
                mo, mb = statistics.median(t_ours) * 1e3, statistics.median(t_base) * 1e3
                print(f"{device:<7}{name:<11}{k:>3}{mo:>13.2f}{mb:>13.2f}{mb / mo:>9.1f}x{diff:>12.2e}",
                      file=file)


def demo_layer(batch, size, repeat, file=None):
    """An `ofa` DynamicMBConvLayer (k=7, expand 6, SE, h_swish) against a deep copy of it
    switched to ofa_fast by ofa_fast.patch(): forward + backward, interleaved."""
    file = file or sys.stdout
    try:
        from ofa.imagenet_classification.elastic_nn.modules.dynamic_layers import \
            DynamicMBConvLayer
    except Exception:
        print("DynamicMBConvLayer demo skipped: the `ofa` package is not installed", file=file)
        return
    torch.manual_seed(0)
    theirs = DynamicMBConvLayer([24], [24], [3, 5, 7], [3, 4, 6], 1, "h_swish", use_se=True)
    theirs.active_kernel_size, theirs.active_expand_ratio = 7, 6
    ours = copy.deepcopy(theirs)
    swapped = ofa_fast.patch(ours)
    x = torch.randn(batch, 24, size, size, requires_grad=True)

    def step(module):
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    t_ours, t_base = [], []
    for _ in range(repeat):
        t_ours += _time(lambda: step(ours), 1)
        t_base += _time(lambda: step(theirs), 1)
    diff = (ours(x) - theirs(x)).abs().max().item()
    mo, mb = statistics.median(t_ours) * 1e3, statistics.median(t_base) * 1e3
    print(f"\nofa DynamicMBConvLayer (24 -> 24, k=7, expand 6, SE, h_swish), batch {batch}, "
          f"{size}x{size}, forward+backward; ofa_fast.patch() swapped {len(swapped)} modules",
          file=file)
    print(f"{'ofa_fast ms':>13}{'ofa ms':>13}{'speed-up':>10}{'max |diff|':>12}", file=file)
    print(f"{mo:>13.2f}{mb:>13.2f}{mb / mo:>9.1f}x{diff:>12.2e}", file=file)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ofa-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, built and usable backends, what auto picks")
    d = sub.add_parser("demo", help="module forward+backward on each backend against ofa")
    d.add_argument("--batch", type=int, default=16)
    d.add_argument("--channels", type=int, default=144)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--kernel-sizes", type=int, nargs="+", default=[3, 5, 7], choices=[3, 5, 7])
    d.add_argument("--repeat", type=int, default=5)
    from ofa_fast import train as train_mod

    t = sub.add_parser("train", help="train an OFA supernet (progressive shrinking)",
                       description=train_mod.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    train_mod.add_arguments(t)
    args = parser.parse_args(argv)
    if args.command == "train":
        return train_mod.main(args)
    if args.command == "info":
        print("\n".join(info_lines()))
    elif args.command == "demo":
        for name, v in (("batch", args.batch), ("channels", args.channels), ("size", args.size),
                        ("repeat", args.repeat)):
            if v < 1:
                parser.error(f"--{name} = {v}: must be >= 1")
        demo(args.batch, args.channels, args.size, args.kernel_sizes, args.repeat)
        demo_layer(args.batch, args.size, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loads the compiled extension ofa_fast._C, or records why it is missing.

`import ofa_fast` never fails because of it: without _C the package warns once and
the `auto` backend falls back to Triton (on a GPU) or to the PyTorch reference.
"""
from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch before the extension)

C = None
load_error: str | None = None

try:
    from . import _C as C  # noqa: N812  (registers torch.ops.ofa_fast.*)
except Exception as e:  # ImportError, or an OSError/undefined symbol from a stale build
    C = None
    load_error = f"{type(e).__name__}: {e}"
    warnings.warn(
        "ofa_fast: the compiled kernels (ofa_fast._C) could not be loaded "
        f"({load_error}); falling back to Triton on GPUs and to the PyTorch reference "
        "otherwise. Reinstall with `pip install --no-build-isolation .` to build them.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_cpu_kernels() -> bool:
    return C is not None


def has_cuda_kernels() -> bool:
    return C is not None and bool(getattr(C, "WITH_CUDA", 0))


def cuda_archs() -> str:
    return getattr(C, "CUDA_ARCHS", "") if C is not None else ""

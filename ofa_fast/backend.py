"""Which implementation runs the ops: one switch, three ways to set it.

Backends: ``reference`` (plain PyTorch, the specification), ``cpu`` (C++ kernels),
``cuda`` (CUDA kernels), ``triton`` (Triton kernels) and ``auto`` (default: the fastest
usable one for each call's device and dtype).

Set it with :func:`set_backend`, for a block with ``with use_backend(name):``, or
with the environment variable ``OFA_FAST_BACKEND`` read at import. The setting is
process-wide (a plain module global, so torch.compile guards on it instead of
breaking the graph).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from . import _ext

BACKENDS = ("reference", "cpu", "cuda", "triton", "auto")

# dtypes each backend computes in; anything else goes to the reference
_DTYPES = {
    "reference": None,  # whatever PyTorch supports
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float16, torch.bfloat16, torch.float64),
    "triton": (torch.float32, torch.float16, torch.bfloat16),
}


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """Triton's CPU interpreter is on (TRITON_INTERPRET=1, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Facts about this process, fixed at import so traced code only reads globals.
_HAS_TRITON = _triton_installed()
_HAS_GPU = torch.cuda.is_available()


def _why_unusable(name: str, device_type: str | None) -> str | None:
    """None if backend `name` can run on `device_type` ('cpu', 'cuda'; None: on any
    device of this machine), else the reason it cannot."""
    if name == "reference":
        return None
    if name == "cpu":
        if not _ext.has_cpu_kernels():
            return f"the compiled extension is not loaded ({_ext.load_error})"
        if device_type not in (None, "cpu"):
            return f"it runs CPU tensors only, not {device_type}"
        return None
    if name == "cuda":
        if not _ext.has_cuda_kernels():
            why = _ext.load_error or "ofa_fast was built without CUDA kernels"
            return f"no CUDA kernels are built ({why})"
        if not _HAS_GPU:
            return "no CUDA GPU is visible"
        if device_type not in (None, "cuda"):
            return f"it runs CUDA tensors only, not {device_type}"
        return None
    if name == "triton":
        if not _HAS_TRITON:
            return "triton is not installed"
        if device_type == "cpu" or (device_type is None and not _HAS_GPU):
            if not triton_interpret():
                return "CPU tensors need Triton's interpreter (TRITON_INTERPRET=1 before import)"
            return None
        if device_type not in (None, "cuda"):
            return f"it runs CUDA tensors (or CPU ones under TRITON_INTERPRET=1), not {device_type}"
        if not _HAS_GPU:
            return "no CUDA GPU is visible"
        return None
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def usable_backends(device_type: str | None = None) -> list[str]:
    """Backends that can run here (on `device_type` if given), `auto` included."""
    return [b for b in BACKENDS if b == "auto" or _why_unusable(b, device_type) is None]


def _validate(name) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown ofa_fast backend {name!r}; choose from {', '.join(BACKENDS)}")
    why = None if name == "auto" else _why_unusable(name, None)
    if why is not None:
        raise RuntimeError(
            f"ofa_fast backend {name!r} is not usable here: {why}. "
            f"Usable backends: {', '.join(usable_backends())}"
        )
    return name


_current: str = "auto"
_env_backend = os.environ.get("OFA_FAST_BACKEND", "").strip()
_env_pending = bool(_env_backend)  # validated at first use: import never fails


def set_backend(name: str) -> None:
    """Selects the backend for every following op call in this process."""
    global _current, _env_pending
    _current = _validate(name)
    _env_pending = False


def get_backend() -> str:
    """The configured backend name (``auto`` unless set)."""
    _apply_env()
    return _current


@contextlib.contextmanager
def use_backend(name: str):
    """``with ofa_fast.use_backend("reference"): ...`` runs the block on that backend."""
    global _current
    _apply_env()
    previous = _current
    _current = _validate(name)
    try:
        yield
    finally:
        _current = previous


def _apply_env() -> None:
    global _current, _env_pending
    if _env_pending:
        _env_pending = False
        try:
            _current = _validate(_env_backend)
        except (ValueError, RuntimeError) as e:
            raise type(e)(f"OFA_FAST_BACKEND={_env_backend!r}: {e}") from None


def auto_choice(device_type: str, dtype: torch.dtype) -> str:
    """What `auto` runs for a tensor of this device and dtype."""
    if device_type == "cuda":
        order = ("cuda", "triton")
    elif device_type == "cpu":
        order = ("cpu",)  # Triton's interpreter is for tests, never the fast path
    else:
        order = ()
    for b in order:
        if _why_unusable(b, device_type) is None and dtype in _DTYPES[b]:
            return b
    return "reference"


def resolve(device_type: str, dtype: torch.dtype) -> str:
    """The concrete backend an op call on (device_type, dtype) runs on."""
    _apply_env()
    if _current == "auto":
        return auto_choice(device_type, dtype)
    why = _why_unusable(_current, device_type)
    if why is not None:
        raise RuntimeError(
            f"ofa_fast backend {_current!r} cannot run this call: {why}. "
            f"Usable for {device_type} tensors: {', '.join(usable_backends(device_type))}"
        )
    allowed = _DTYPES[_current]
    if allowed is not None and dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise RuntimeError(
            f"ofa_fast backend {_current!r} does not compute in {str(dtype).replace('torch.', '')}; "
            f"it takes {names}. Use backend 'reference' or 'auto' for this dtype."
        )
    return _current

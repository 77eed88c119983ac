"""Host-side helpers shared by the Triton op modules."""
from __future__ import annotations

import triton
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton
from torch._subclasses.functional_tensor import FunctionalTensor

from ..backend import triton_interpret

_INTERPRET = triton_interpret()


def tracing_under_interpreter(*tensors) -> bool:
    """True for a fake-tensor run (opcheck's fake test, shape propagation) under
    TRITON_INTERPRET=1: wrap_triton then hands back the raw interpreted kernel, which
    would read the fake tensors' data, so the launch is skipped (a fake run only needs
    the output's shape and format). Functional tracing (AOTDispatcher, torch.compile)
    cannot record an interpreted kernel at all: that raises instead of tracing a graph
    without it. On a GPU, wrap_triton traces every launch itself."""
    if not _INTERPRET:
        return False
    if any(isinstance(t, FunctionalTensor) for t in tensors):
        raise RuntimeError(
            "ofa_fast: the Triton ops cannot be traced (torch.compile, AOTDispatcher) under "
            "TRITON_INTERPRET=1, since wrap_triton does not capture interpreted kernels; "
            "call them eagerly, or trace on a GPU")
    return any(t.device.type == "meta" or is_fake(t) for t in tensors)


def np2(n: int) -> int:
    """The next power of two >= max(1, n)."""
    return triton.next_power_of_2(max(1, n))


def launcher(kernel):
    """wrap_triton(kernel), what the ops launch through (traceable by torch.compile), except
    for a kernel that Triton's interpreter made (TRITON_INTERPRET=1): that one is launched
    as it is, as wrap_triton itself does in recent PyTorch (2.14), where PyTorch 2.11 (the
    GPU machines' version) raises "wrap_triton only works on functions annotated with
    triton.jit"."""
    if _INTERPRET and not isinstance(kernel, (JITFunction, Autotuner)):
        return kernel
    return wrap_triton(kernel)

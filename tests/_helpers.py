"""Shared test helpers: which backends run where, sample inputs, tolerances."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ofa_fast
from ofa_fast import backend as _backend

HAS_CUDA = torch.cuda.is_available()
NO_CUDA_REASON = ("no CUDA GPU here: the CUDA kernels are compiled (CI checks that) but can "
                  "only run where a GPU is present (their device code runs on the CPU emulator "
                  "in test_cuda_emulated.py)")

# float tolerance of max|actual - expected| relative to max|expected|
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def assert_close(actual, expected, dtype, what=""):
    """Compares against a float64 reference, scaled by the reference's magnitude."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    if not a.numel():
        return
    scale = max(e.abs().max().item(), 1e-3)
    err = (a - e).abs().max().item() / scale
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:.1g} ({dtype})"


def backend_params(device: str, dtypes=None):
    """pytest params (backend, dtype) for the compiled/Triton backends on `device`;
    unusable ones are skipped with the reason."""
    params = []
    names = ["cpu", "triton"] if device == "cpu" else ["cuda", "triton"]
    for name in names:
        why = _backend._why_unusable(name, device)
        allowed = _backend._DTYPES[name]
        for dt in dtypes or allowed:
            if dt not in allowed:
                continue
            marks = [pytest.mark.skip(reason=f"backend {name!r} unusable: {why}")] if why else []
            if device == "cuda" and not HAS_CUDA:
                marks = [pytest.mark.skip(reason=NO_CUDA_REASON)]
            params.append(pytest.param(name, dt, marks=marks,
                                       id=f"{name}-{str(dt).replace('torch.', '')}"))
    return params


@dataclasses.dataclass(frozen=True)
class ConvCase:
    N: int
    C: int
    C_max: int
    H: int
    W: int
    K: int
    k: int
    stride: int
    dilation: int
    channels_last: bool

    @property
    def padding(self):
        return self.k // 2

    def valid(self):
        need = self.dilation * (self.k - 1) + 1 - 2 * self.padding
        return self.H >= need and self.W >= need

    def __str__(self):
        fmt = "cl" if self.channels_last else "nchw"
        return (f"N{self.N}C{self.C}of{self.C_max}_{self.H}x{self.W}_K{self.K}k{self.k}"
                f"_s{self.stride}d{self.dilation}_{fmt}")


def conv_cases(full: bool = True):
    """Sample inputs: every kernel size, stride and dilation, channels below the max,
    batch 1, images from 1x1 to 33x33 (odd and even, non-square), both formats.
    full=False: a small subset for slow backends (Triton's interpreter)."""
    cases = []
    sizes = [(1, 1), (2, 3), (7, 5), (8, 8), (16, 15), (33, 33)] if full else [(1, 1), (7, 5), (8, 8)]
    for (H, W), k, s, d, cl in itertools.product(sizes, (3, 5, 7), (1, 2), (1, 2), (False, True)):
        if not full and (d == 2 and s == 2):
            continue
        N = 1 if (H * W) % 2 else 2
        C = 5 if (H + k) % 2 else 12
        case = ConvCase(N, C, C + 3, H, W, 7, k, s, d, cl)
        if case.valid():
            cases.append(case)
    cases.append(ConvCase(2, 24, 24, 12, 10, 7, 7, 1, 1, True))  # C = C_max, vector-wide channels
    cases.append(ConvCase(1, 37, 40, 9, 20, 5, 3, 2, 1, True))  # K = 5
    cases.append(ConvCase(2, 20, 32, 40, 40, 7, 5, 1, 1, False))  # wide rows (several vectors)
    return cases


def make_conv_inputs(case: ConvCase, dtype, device, requires_grad=True):
    x = torch.randn(case.N, case.C, case.H, case.W, dtype=dtype, device=device)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(case.C_max, 1, case.K, case.K, dtype=dtype, device=device)
    return x.requires_grad_(requires_grad), w.requires_grad_(requires_grad)


def fmt_of(t):
    if t.is_contiguous():
        return "contiguous"
    if t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "other"


def parameters_sharing_storage(module):
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


# ---- one forward + backward of a module, compared with its twin's -------------------

def module_run(module, x, call=None, seed=0):
    """Output, input gradient, parameter gradients and buffers after one forward and
    backward of `module` on a copy of x (call(module, x) if given, else module(x)), with
    a fixed ramp as the output's gradient and dropout masks drawn from `seed`."""
    module.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    inp = leaf.clone()  # in-place dropout / activations may write into it
    y = call(module, inp) if call is not None else module(inp)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return y.detach(), leaf.grad, grads, {n: b.clone() for n, b in module.named_buffers()}


def _close_relative(a, b, what, tol):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if not b.numel():
        return
    scale = max(b.abs().max().item(), 1e-6)
    err = (a.double() - b.double()).abs().max().item() / scale
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def assert_same_run(a, b, rtol=1e-10, atol=1e-10, relative=None):
    """Two module_run results agree: elementwise (rtol, atol), or with relative=tol as
    max |a - b| / max |b| per tensor (for deep nets, whose BN layers in train mode with
    tiny batches amplify float rounding elementwise)."""
    (ya, gxa, gpa, bufa), (yb, gxb, gpb, bufb) = a, b

    def check(p, q, what):
        if relative is not None:
            _close_relative(p, q, what, relative)
        else:
            torch.testing.assert_close(p.double(), q.double(), rtol=rtol, atol=atol,
                                       msg=lambda m: f"{what}: {m}")

    check(ya, yb, "output")
    check(gxa, gxb, "grad of the input")
    assert gpa.keys() == gpb.keys(), set(gpa) ^ set(gpb)
    for n in gpa:
        check(gpa[n], gpb[n], f"grad of {n}")
    assert bufa.keys() == bufb.keys(), set(bufa) ^ set(bufb)
    for n in bufa:
        check(bufa[n], bufb[n], f"buffer {n}")


# ---- no copies of the weight --------------------------------------------------

_COPY_OPS = {
    torch.ops.aten.clone.default, torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default,
    torch.ops.aten.copy.default, torch.ops.aten.index_select.default, torch.ops.aten.cat.default,
    torch.ops.aten.stack.default, torch.ops.aten.index.Tensor,
}


class NoWeightCopies(TorchDispatchMode):
    """Fails on any copy/clone/contiguous of a tensor sharing storage with a parameter."""

    def __init__(self, params):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in params}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        is_copy = func in _COPY_OPS or func.name().split("::")[-1].split(".")[0].endswith("_copy")
        if is_copy:
            for a in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() in self.storages:
                    raise AssertionError(f"{func} copies a tensor sharing storage with a parameter")
        return func(*args, **kwargs)


__all__ = ["NoWeightCopies", "assert_same_run", "module_run", "ConvCase", "HAS_CUDA", "NO_CUDA_REASON", "assert_close", "backend_params",
           "conv_cases", "make_conv_inputs", "fmt_of", "ofa_fast"]

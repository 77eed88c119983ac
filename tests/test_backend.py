"""The backend switch (set_backend, use_backend, OFA_FAST_BACKEND), what `auto` picks, and
`import ofa_fast` without the compiled extension."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ofa_fast
from ofa_fast import backend


def run_python(code, **env):
    full_env = dict(os.environ)
    full_env.pop("OFA_FAST_BACKEND", None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=300)


def test_set_get_and_context_manager():
    assert ofa_fast.get_backend() == "auto"
    ofa_fast.set_backend("reference")
    assert ofa_fast.get_backend() == "reference"
    with ofa_fast.use_backend("auto"):
        assert ofa_fast.get_backend() == "auto"
        with ofa_fast.use_backend("reference"):
            assert ofa_fast.get_backend() == "reference"
        assert ofa_fast.get_backend() == "auto"
    assert ofa_fast.get_backend() == "reference"
    with pytest.raises(RuntimeError):
        with ofa_fast.use_backend("auto"):
            raise RuntimeError("restored even on error")
    assert ofa_fast.get_backend() == "reference"


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown ofa_fast backend 'fastest'.*reference, cpu, cuda, triton, auto"):
        ofa_fast.set_backend("fastest")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is visible")
def test_unusable_backend_lists_usable_ones():
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not usable here: .*Usable backends: reference"):
        ofa_fast.set_backend("cuda")


def test_backend_that_cannot_run_a_call():
    if backend._why_unusable("cpu", None):
        pytest.skip("no compiled kernels")
    ofa_fast.set_backend("cpu")
    x = torch.randn(1, 4, 5, 5, dtype=torch.bfloat16)
    w = torch.randn(4, 1, 3, 3, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"backend 'cpu' does not compute in bfloat16; it takes float32, float64"):
        ofa_fast.ops.dwconv2d(x, w, 3)
    with ofa_fast.use_backend("auto"):  # auto sends what no kernel takes to the reference
        assert backend.auto_choice("cpu", torch.bfloat16) == "reference"
        ofa_fast.ops.dwconv2d(x, w, 3)


def test_auto_picks_the_compiled_cpu_kernels():
    expected = "cpu" if backend._why_unusable("cpu", "cpu") is None else "reference"
    assert backend.auto_choice("cpu", torch.float32) == expected
    assert backend.resolve("cpu", torch.float64) == expected


def test_environment_variable():
    out = run_python("""
        import ofa_fast
        print(ofa_fast.get_backend())
    """, OFA_FAST_BACKEND="reference")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"
    bad = run_python("""
        import ofa_fast, torch
        ofa_fast.ops.dwconv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3), 3)
    """, OFA_FAST_BACKEND="warp-drive")
    assert bad.returncode != 0
    assert "OFA_FAST_BACKEND='warp-drive'" in bad.stderr and "choose from" in bad.stderr


def test_import_without_the_extension_warns_once_and_falls_back():
    out = run_python("""
        import sys, warnings
        sys.modules["ofa_fast._C"] = None          # as if the build had failed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import ofa_fast
            import ofa_fast.ops
        import torch
        msgs = [str(w.message) for w in caught if "ofa_fast" in str(w.message)]
        print(len(msgs))
        print(ofa_fast.backend.auto_choice("cpu", torch.float32))
        print(",".join(ofa_fast.usable_backends("cpu")))
        conv = ofa_fast.nn.DynamicSeparableConv2d(8, [3, 5, 7])
        x = torch.randn(2, 6, 9, 9, requires_grad=True)
        conv(x, 3).sum().backward()
        print(tuple(x.grad.shape))
    """, TRITON_INTERPRET="0")
    assert out.returncode == 0, out.stderr
    count, choice, usable, shape = out.stdout.splitlines()
    assert count == "1"
    assert choice == "reference"
    assert "cpu" not in usable.split(",")
    assert shape == "(2, 6, 9, 9)"

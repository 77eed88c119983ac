"""`ofa-fast info` / `python -m ofa_fast info` and the demo."""
import importlib.util
import subprocess
import sys

import torch

import ofa_fast
from ofa_fast import cli


def test_info_lists_versions_backends_and_auto_choice():
    text = "\n".join(cli.info_lines())
    assert f"ofa_fast {ofa_fast.__version__}" in text
    assert f"torch {torch.__version__}" in text
    for name in ("reference", "cpu", "cuda", "triton"):
        assert f"  {name}" in text
    assert "auto picks: cpu float32 -> " in text


def test_python_dash_m_info():
    out = subprocess.run([sys.executable, "-m", "ofa_fast", "info"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "backends:" in out.stdout


def test_demo_runs_and_reports_each_backend(capsys):
    cli.main(["demo", "--batch", "2", "--channels", "8", "--size", "8", "--kernel-sizes", "3", "7",
              "--repeat", "1"])
    out = capsys.readouterr().out
    assert "speed-up" in out
    rows = [line for line in out.splitlines() if line.startswith("cpu ")]
    assert len(rows) == 2 * (1 if "cpu" in ofa_fast.usable_backends("cpu") else 0)
    if importlib.util.find_spec("ofa") is not None:
        assert "ofa_fast.patch() swapped 11 modules" in out
        speed_up, diff = out.strip().splitlines()[-1].split()[-2:]
        assert float(diff) < 1e-4


def test_demo_rejects_bad_arguments(capsys):
    try:
        cli.main(["demo", "--batch", "0"])
    except SystemExit as e:
        assert e.code == 2
    assert "--batch = 0: must be >= 1" in capsys.readouterr().err

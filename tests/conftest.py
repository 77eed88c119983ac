"""Test configuration.

Without a GPU, Triton kernels run on the CPU under Triton's interpreter, which must be
switched on before triton is imported: so here, before anything imports ofa_fast.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import ofa_fast  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _seed_and_restore_backend():
    torch.manual_seed(0)
    before = ofa_fast.get_backend()
    yield
    ofa_fast.set_backend(before)

"""Triton kernels of ofa_fast, installed as ``ofa_fast.triton_kernels`` (never as a
top-level ``triton_kernels`` module: that name belongs to another package).

Each module holds one op's ``@triton.jit`` kernels and its host helpers; the op
wrappers in ``ofa_fast.ops`` register them with ``torch.library.triton_op``. Importing
these modules imports triton: ofa_fast only does so when the Triton backend is usable.
"""

"""OFA's kernel-transform chain (ofa_fast.ops.kernel_transform): every backend against
the reference, forward and the gradients of the weight and of every matrix."""
import pytest
import torch

import ofa_fast
from ofa_fast.ops import kernel_transform, kernel_transform_reference

from _helpers import HAS_CUDA, NO_CUDA_REASON, assert_close, backend_params

CHAINS = [([7, 5, 3], 10, 12), ([7, 5], 12, 12), ([5, 3], 3, 8), ([7, 3], 17, 20),
          ([9, 7, 5, 3], 4, 6), ([7, 5, 3], 1, 1)]


def check(backend, dtype, device, chain, C, C_max):
    K = chain[0]
    w = torch.randn(C_max, 1, K, K, dtype=dtype, device=device, requires_grad=True)
    mats = [torch.randn(b * b, b * b, dtype=dtype, device=device, requires_grad=True)
            for b in chain[1:]]
    with ofa_fast.use_backend(backend):
        f = kernel_transform(w, mats, chain, C)
    assert f.shape == (C, 1, chain[-1], chain[-1]) and f.dtype == dtype
    g = torch.randn_like(f)
    grads = torch.autograd.grad(f, [w] + mats, g)
    w64 = w.detach().double().cpu().requires_grad_()
    m64 = [m.detach().double().cpu().requires_grad_() for m in mats]
    f64 = kernel_transform_reference(w64, m64, chain, C)
    want = torch.autograd.grad(f64, [w64] + m64, g.double().cpu())
    assert_close(f, f64, dtype, f"{chain} filter")
    for i, (a, b) in enumerate(zip(grads, want)):
        assert_close(a, b, dtype, f"{chain} grad {'weight' if i == 0 else f'matrix {i - 1}'}")


@pytest.mark.parametrize("chain,C,C_max", CHAINS)
@pytest.mark.parametrize("backend,dtype", backend_params("cpu", [torch.float32, torch.float64]))
def test_cpu_and_triton_match_reference(backend, dtype, chain, C, C_max):
    check(backend, dtype, "cpu", chain, C, C_max)


@pytest.mark.cuda
@pytest.mark.parametrize("chain,C,C_max", CHAINS)
@pytest.mark.parametrize("backend,dtype", backend_params("cuda"))
def test_gpu_matches_reference(backend, dtype, chain, C, C_max):
    check(backend, dtype, "cuda", chain, C, C_max)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA, reason=NO_CUDA_REASON))])
def test_gradcheck_fp64(device):
    w = torch.randn(5, 1, 7, 7, dtype=torch.float64, device=device, requires_grad=True)
    mats = [torch.randn(n, n, dtype=torch.float64, device=device, requires_grad=True) for n in (25, 9)]
    with ofa_fast.use_backend("cpu" if device == "cpu" else "cuda"):
        assert torch.autograd.gradcheck(lambda w, a, b: kernel_transform(w, [a, b], [7, 5, 3], 3),
                                        (w, *mats))


def test_opcheck():
    if ofa_fast.backend._why_unusable("cpu", "cpu"):
        pytest.skip("no compiled kernels")
    w = torch.randn(6, 1, 7, 7, requires_grad=True)
    mats = [torch.randn(25, 25, requires_grad=True), torch.randn(9, 9, requires_grad=True)]
    torch.library.opcheck(torch.ops.ofa_fast.kernel_transform.default, (w, mats, [7, 5, 3], 4))
    g = torch.randn(4, 1, 3, 3)
    torch.library.opcheck(torch.ops.ofa_fast.kernel_transform_backward.default,
                          (g, w.detach(), [m.detach() for m in mats], [7, 5, 3], 4))


def test_reads_weight_through_strides():
    # a non-contiguous max weight (a view) gives the same filter as its contiguous copy
    base = torch.randn(8, 1, 9, 9)
    w = base[:, :, 1:8, 1:8]
    assert not w.is_contiguous()
    mats = [torch.randn(25, 25), torch.randn(9, 9).t()]
    for name in ("cpu", "reference"):
        with ofa_fast.use_backend(name):
            got = kernel_transform(w, mats, [7, 5, 3], 6)
        torch.testing.assert_close(got, kernel_transform_reference(w.contiguous(), mats, [7, 5, 3], 6))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_input(backend):
    w = torch.randn(8, 1, 7, 7)
    m = [torch.eye(25), torch.eye(9)]
    with ofa_fast.use_backend(backend):
        with pytest.raises(ValueError, match=r"start at the weight's K = 7"):
            kernel_transform(w, m, [5, 3], 4)
        with pytest.raises(ValueError, match=r"strictly decreasing odd"):
            kernel_transform(w, m, [7, 4, 3], 4)
        with pytest.raises(ValueError, match=r"2 steps but 1 transform"):
            kernel_transform(w, m[:1], [7, 5, 3], 4)
        with pytest.raises(ValueError, match=r"7to5 transform matrix must be \[25, 25\], got shape \(9, 9\)"):
            kernel_transform(w, [torch.eye(9), torch.eye(9)], [7, 5, 3], 4)
        with pytest.raises(ValueError, match=r"channels = 9 must be between 1 and 8"):
            kernel_transform(w, m, [7, 5, 3], 9)
        with pytest.raises(ValueError, match=r"must match the weight"):
            kernel_transform(w, [torch.eye(25).double(), torch.eye(9)], [7, 5, 3], 4)

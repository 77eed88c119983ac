"""The depthwise conv on a centre crop of the max weight (ofa_fast.ops.dwconv2d and
the composite elastic_dwconv2d): every backend against the reference, forward and
every gradient; gradcheck, opcheck, torch.compile, the no-copy rule, bad input."""
import pytest
import torch

import ofa_fast
from ofa_fast.ops import dwconv2d, dwconv2d_reference, elastic_dwconv2d

from _helpers import (HAS_CUDA, NO_CUDA_REASON, ConvCase, NoWeightCopies, assert_close,
                      backend_params, conv_cases, fmt_of, make_conv_inputs)

CPU_CASES = conv_cases(full=True)
SMALL_CASES = conv_cases(full=False)


def reference_results(x, w, case, grad):
    """Output and gradients of the reference in float64 on the CPU."""
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = w.detach().double().cpu().requires_grad_()
    y = dwconv2d_reference(x64, w64, case.k, case.stride, case.dilation, case.padding)
    gx, gw = torch.autograd.grad(y, (x64, w64), grad.double().cpu())
    return y, gx, gw


def check_against_reference(backend, dtype, device, case):
    x, w = make_conv_inputs(case, dtype, device)
    with ofa_fast.use_backend(backend):
        y = dwconv2d(x, w, case.k, case.stride, case.dilation)
    grad = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    y_ref, gx_ref, gw_ref = reference_results(x, w, case, grad)
    assert_close(y, y_ref, dtype, f"{case} output")
    assert_close(gx, gx_ref, dtype, f"{case} grad input")
    assert_close(gw, gw_ref, dtype, f"{case} grad weight")
    # the output and the input gradient keep the input's memory format
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt), f"{case}: output is {fmt_of(y)}, input {fmt_of(x)}"
    assert gx.is_contiguous(memory_format=fmt), f"{case}: grad input is {fmt_of(gx)}"
    assert y.dtype == dtype and gw.dtype == dtype and gw.shape == w.shape


@pytest.mark.parametrize("case", CPU_CASES, ids=str)
@pytest.mark.parametrize("backend,dtype", [p for p in backend_params("cpu") if p.values[0] == "cpu"])
def test_cpu_matches_reference(backend, dtype, case):
    check_against_reference(backend, dtype, "cpu", case)


@pytest.mark.parametrize("case", SMALL_CASES, ids=str)
@pytest.mark.parametrize("backend,dtype",
                         [p for p in backend_params("cpu", [torch.float32]) if p.values[0] == "triton"])
def test_triton_interpreted_matches_reference(backend, dtype, case):
    check_against_reference(backend, dtype, "cpu", case)


# half-precision storage with float32 accumulation (the interpreter has no bf16 arithmetic)
@pytest.mark.parametrize("case", SMALL_CASES[::6], ids=str)
def test_triton_interpreted_float16(case):
    if ofa_fast.backend._why_unusable("triton", "cpu"):
        pytest.skip(ofa_fast.backend._why_unusable("triton", "cpu"))
    check_against_reference("triton", torch.float16, "cpu", case)


@pytest.mark.cuda
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
@pytest.mark.parametrize("backend,dtype", backend_params("cuda"))
def test_gpu_matches_reference(backend, dtype, case):
    check_against_reference(backend, dtype, "cuda", case)


def test_gradient_of_weight_lands_in_active_crop():
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    w = torch.randn(8, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    dwconv2d(x, w, 3).sum().backward()
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[:5, :, 2:5, 2:5] = True
    assert (w.grad[~mask] == 0).all()
    assert (w.grad[mask] != 0).all()


# ---- fp64 gradcheck -------------------------------------------------------------

GRADCHECK_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON))]


@pytest.mark.parametrize("device", GRADCHECK_DEVICES)
@pytest.mark.parametrize("k,stride,dilation,cl", [(3, 1, 1, False), (5, 2, 1, True), (7, 1, 2, False),
                                                  (3, 2, 2, True)])
def test_gradcheck_fp64(device, k, stride, dilation, cl):
    backend = "cpu" if device == "cpu" else "cuda"
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, device=device)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 1, 7, 7, dtype=torch.float64, device=device, requires_grad=True)
    mats = {"7to5": torch.randn(25, 25, dtype=torch.float64, device=device, requires_grad=True),
            "5to3": torch.randn(9, 9, dtype=torch.float64, device=device, requires_grad=True)}

    def f(x, w, m75, m53):
        return elastic_dwconv2d(x, w, k, [3, 5, 7], {"7to5": m75, "5to3": m53}, stride, dilation)

    with ofa_fast.use_backend(backend):
        assert torch.autograd.gradcheck(f, (x, w, mats["7to5"], mats["5to3"]))


@pytest.mark.parametrize("k", [3, 5])
def test_triton_interpreted_elastic_gradients(k):
    if ofa_fast.backend._why_unusable("triton", "cpu"):
        pytest.skip(ofa_fast.backend._why_unusable("triton", "cpu"))
    # the Triton kernels compute in float32 (no gradcheck): their analytic gradients of
    # the whole elastic op against the float64 reference's
    x = torch.randn(1, 3, 6, 5, requires_grad=True)
    w = torch.randn(4, 1, 7, 7, requires_grad=True)
    mats = {"7to5": torch.randn(25, 25, requires_grad=True), "5to3": torch.randn(9, 9, requires_grad=True)}
    with ofa_fast.use_backend("triton"):
        y = elastic_dwconv2d(x, w, k, [3, 5, 7], mats)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, mats["7to5"], mats["5to3"]), g, allow_unused=True)
    with ofa_fast.use_backend("reference"):
        x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        m64 = {n: m.detach().double().requires_grad_() for n, m in mats.items()}
        y64 = elastic_dwconv2d(x64, w64, k, [3, 5, 7], m64)
    want = torch.autograd.grad(y64, (x64, w64, m64["7to5"], m64["5to3"]), g.double(), allow_unused=True)
    assert_close(y, y64, torch.float32, "output")
    for a, b, name in zip(got, want, ("x", "weight", "7to5", "5to3")):
        if b is None:
            assert a is None or not a.abs().max(), name
        else:
            assert_close(a, b, torch.float32, f"grad {name}")


# ---- opcheck ----------------------------------------------------------------

def opcheck_samples(device):
    for case in [c for c in CPU_CASES if c.H * c.W >= 35][:8]:
        x, w = make_conv_inputs(case, torch.float32, device)
        yield case, (x, w, case.k, case.stride, case.dilation, case.padding)


@pytest.mark.parametrize("device", GRADCHECK_DEVICES)
def test_opcheck_compiled_ops(device):
    if ofa_fast.backend._why_unusable("cpu" if device == "cpu" else "cuda", device):
        pytest.skip("compiled kernels not usable")
    for case, args in opcheck_samples(device):
        torch.library.opcheck(torch.ops.ofa_fast.dwconv2d.default, args)
        x, w = args[0], args[1]
        go = torch.randn_like(torch.ops.ofa_fast.dwconv2d(*args))
        bargs = (go, x.detach(), w.detach()) + args[2:]
        torch.library.opcheck(torch.ops.ofa_fast.dwconv2d_backward_input.default, bargs)
        torch.library.opcheck(torch.ops.ofa_fast.dwconv2d_backward_weight.default, bargs)
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(torch.ops.ofa_fast.dwconv2d_backward.default, bargs + (mask,))


def test_opcheck_triton_op_interpreted():
    if ofa_fast.backend._why_unusable("triton", "cpu"):
        pytest.skip(ofa_fast.backend._why_unusable("triton", "cpu"))
    case = SMALL_CASES[len(SMALL_CASES) // 2]
    x, w = make_conv_inputs(case, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.ofa_fast.dwconv2d_triton.default,
                          (x, w, case.k, case.stride, case.dilation, case.padding),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---- torch.compile ----------------------------------------------------------

@pytest.mark.parametrize("cl", [False, True])
def test_compiles_without_graph_break(cl):
    torch._dynamo.reset()
    conv = ofa_fast.nn.DynamicSeparableConv2d(16, [3, 5, 7], stride=2)

    def step(x, k):
        return conv(x, k).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for k in (7, 5, 3):
        x = torch.randn(2, 12, 11, 11)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_()
        out = compiled(x, k)
        out.backward()
        gx = x.grad.clone()
        x.grad = None
        step(x, k).backward()
        torch.testing.assert_close(out, step(x, k), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, x.grad, rtol=1e-5, atol=1e-5)


def test_compiles_with_inductor():
    torch._dynamo.reset()
    conv = ofa_fast.nn.DynamicSeparableConv2d(8, [3, 5, 7])
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    compiled = torch.compile(lambda x: conv(x, 5).relu().sum(), fullgraph=True)
    out = compiled(x)
    out.backward()
    ref_x = x.detach().clone().requires_grad_()
    ref = conv(ref_x, 5).relu().sum()
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-5)


# ---- no copies of the weight --------------------------------------------------

def no_copy_backends():
    out = []
    for name in ("cpu", "triton"):
        why = ofa_fast.backend._why_unusable(name, "cpu")
        out.append(pytest.param(name, marks=[pytest.mark.skip(reason=why)] if why else []))
    return out


@pytest.mark.parametrize("backend", no_copy_backends())
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("cl", [False, True])
def test_forward_makes_no_weight_copy(backend, k, cl):
    conv = ofa_fast.nn.DynamicSeparableConv2d(24, [3, 5, 7])
    x = torch.randn(2, 16, 8, 8)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    with ofa_fast.use_backend(backend), NoWeightCopies(conv.parameters()):
        conv(x, k)


def test_no_copy_check_catches_a_copy():
    # the reference backend slices and copies the weight as OFA does: the check must see it
    conv = ofa_fast.nn.DynamicSeparableConv2d(24, [3, 5, 7])
    with ofa_fast.use_backend("reference"), pytest.raises(AssertionError, match="copies"):
        with NoWeightCopies(conv.parameters()):
            conv(torch.randn(1, 16, 8, 8), 3)


# ---- bad input ----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_input(backend):
    w = torch.randn(8, 1, 7, 7)
    x = torch.randn(2, 8, 9, 9)
    with ofa_fast.use_backend(backend):
        with pytest.raises(ValueError, match=r"input has 9 channels.*between 1 and 8"):
            dwconv2d(torch.randn(2, 9, 9, 9), w, 3)
        with pytest.raises(ValueError, match=r"kernel_size = 9 .*\[1, 7\]"):
            dwconv2d(x, w, 9)
        with pytest.raises(ValueError, match=r"kernel_size = 4 .*odd"):
            dwconv2d(x, w, 4)
        with pytest.raises(ValueError, match=r"4-D .*3-D tensor"):
            dwconv2d(torch.randn(8, 9, 9), w, 3)
        with pytest.raises(TypeError, match=r"dtype torch.float64 differs from weight dtype torch.float32"):
            dwconv2d(x.double(), w, 3)
        with pytest.raises(ValueError, match=r"\[C_max, 1, K, K\]"):
            dwconv2d(x, torch.randn(8, 2, 7, 7), 3)
        with pytest.raises(ValueError, match=r"K = 6 is even"):
            dwconv2d(x, torch.randn(8, 1, 6, 6), 3)
        with pytest.raises(ValueError, match=r"stride = 0"):
            dwconv2d(x, w, 3, stride=0)
        with pytest.raises(ValueError, match=r"too small"):
            dwconv2d(torch.randn(1, 8, 2, 2), w, 7, dilation=2)
        with pytest.raises(ValueError, match=r"kernel_size 5 is not in kernel_size_list \[3, 7\]"):
            elastic_dwconv2d(x, w, 5, [3, 7])
        with pytest.raises(ValueError, match=r"\[9, 9\], got shape \(25, 25\)"):
            elastic_dwconv2d(x, w, 3, [3, 5, 7], {"7to5": torch.eye(25), "5to3": torch.eye(25)})
        with pytest.raises(KeyError, match=r"'5to3' is missing"):
            elastic_dwconv2d(x, w, 3, [3, 5, 7], {"7to5": torch.eye(25)})


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)
def test_bad_input_devices():
    with pytest.raises(ValueError, match=r"same device"):
        dwconv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3, device="cuda"), 3)


def test_compiled_op_checks_its_arguments():
    # the C++ ops check too when called directly, naming the bad value
    if ofa_fast.backend._why_unusable("cpu", "cpu"):
        pytest.skip("no compiled kernels")
    w = torch.randn(8, 1, 7, 7)
    with pytest.raises(RuntimeError, match=r"input has 9 channels"):
        torch.ops.ofa_fast.dwconv2d(torch.randn(1, 9, 8, 8), w, 3, 1, 1, 1)
    with pytest.raises(RuntimeError, match=r"kernel_size = 6"):
        torch.ops.ofa_fast.dwconv2d(torch.randn(1, 8, 8, 8), w, 6, 1, 1, 1)
    with pytest.raises(RuntimeError, match=r"not supported on the CPU"):
        torch.ops.ofa_fast.dwconv2d(torch.randn(1, 8, 8, 8).half(), w.half(), 3, 1, 1, 1)
    with pytest.raises(RuntimeError, match=r"grad_output has shape"):
        torch.ops.ofa_fast.dwconv2d_backward_input(torch.randn(1, 8, 7, 7), torch.randn(1, 8, 8, 8),
                                                  w, 3, 1, 1, 1)


def test_empty_batch():
    x = torch.randn(0, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 1, 7, 7, requires_grad=True)
    y = dwconv2d(x, w, 5)
    assert y.shape == (0, 4, 8, 8)
    y.sum().backward()
    assert (w.grad == 0).all()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("k,K,stride,dilation,padding,size", [
    (3, 7, 1, 1, 0, 9), (5, 5, 2, 1, 4, 7), (7, 7, 1, 2, 9, 6), (31, 31, 1, 3, 45, 5),
    (31, 31, 2, 3, 45, 12), (1, 3, 2, 1, 0, 5), (1, 7, 1, 1, 2, 4)])
@pytest.mark.parametrize("cl", [False, True])
def test_explicit_padding_and_large_kernels(backend, k, K, stride, dilation, padding, size, cl):
    # OFA pads by k // 2; the op takes any padding, kernel sizes up to 31
    if ofa_fast.backend._why_unusable(backend, "cpu"):
        pytest.skip(ofa_fast.backend._why_unusable(backend, "cpu"))
    x = torch.randn(2, 17, size, size + 1, dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(19, 1, K, K, dtype=torch.float64, requires_grad=True)
    with ofa_fast.use_backend(backend):
        y = dwconv2d(x, w, k, stride, dilation, padding)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w), g)
    y_ref = dwconv2d_reference(x, w, k, stride, dilation, padding)
    want = torch.autograd.grad(y_ref, (x, w), g)
    assert_close(y, y_ref, torch.float64, "output")
    assert_close(got[0], want[0], torch.float64, "grad input")
    assert_close(got[1], want[1], torch.float64, "grad weight")


# float32 channels_last with whole 16-channel blocks takes the in-place forward (no
# tiles) at k = 3, at stride 2 and at k = 5 on wide rows; the rest, and a narrower last
# block, the tiles. Every split of a row into blocks and borders, against the reference.
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (8, 8), (16, 15), (24, 33), (33, 40)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("k,stride", [(3, 1), (5, 1), (7, 1), (3, 2), (5, 2), (7, 2)])
@pytest.mark.parametrize("C", [16, 40])
def test_cpu_channels_last_whole_blocks(C, k, stride, size):
    case = ConvCase(2, C, C + 8, size[0], size[1], 7, k, stride, 1, True)
    if not case.valid():
        pytest.skip("no output at this size")
    check_against_reference("cpu", torch.float32, "cpu", case)


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 0), (3, 2, 4), (5, 2, 1), (5, 1, 9), (7, 2, 6)])
@pytest.mark.parametrize("size", [(3, 4), (9, 26)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cpu_channels_last_whole_blocks_any_padding(k, stride, padding, size):
    x = torch.randn(2, 32, *size).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(32, 1, 7, 7, requires_grad=True)
    if size[0] + 2 * padding < k or size[1] + 2 * padding < k:
        pytest.skip("no output at this size")
    with ofa_fast.use_backend("cpu"):
        y = dwconv2d(x, w, k, stride, 1, padding)
    y_ref = dwconv2d_reference(x.double(), w.double(), k, stride, 1, padding)
    assert_close(y, y_ref, torch.float32, "output")
    assert y.is_contiguous(memory_format=torch.channels_last)


# At stride 1 the float32 kernels read their tensors in place where that is faster than
# the tiles: channels_last whole channel blocks (rows in bands across the blocks, a few
# rows each when the image has many channels; a narrower last block through tiles), and
# NCHW along the rows at k = 3 (forward on rows of 16+ outputs, backward on 24+); the
# rest takes the tiles (at stride 1 their register-blocked filter gradient).
# Forward, each gradient alone (the other masked off) and both, every padding up to
# k - 1 (and one beyond, which takes the tiles), against the float64 reference.
@pytest.mark.parametrize("mask", [(True, True), (True, False), (False, True)],
                         ids=["both", "input", "weight"])
@pytest.mark.parametrize("C,H,W", [(16, 5, 16), (40, 9, 33), (168, 7, 64), (32, 1, 24), (24, 6, 32)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_cpu_in_place_paths(cl, k, C, H, W, mask):
    fmt = torch.channels_last if cl else torch.contiguous_format
    w = torch.randn(C + 8, 1, 7, 7)
    for padding in range(k + 1):
        if H + 2 * padding < k or W + 2 * padding < k:
            continue
        x = torch.randn(2, C, H, W).to(memory_format=fmt)
        x64 = x.double().requires_grad_()
        w64 = w.double().requires_grad_()
        y64 = dwconv2d_reference(x64, w64, k, 1, 1, padding)
        what = f"k={k} C={C} {H}x{W} padding={padding} {fmt}"
        y = torch.ops.ofa_fast.dwconv2d(x, w, k, 1, 1, padding)
        assert_close(y, y64, torch.float32, f"{what}: output")
        assert y.is_contiguous(memory_format=fmt)
        g = torch.randn(y64.shape).to(memory_format=fmt)
        gx_ref, gw_ref = torch.autograd.grad(y64, (x64, w64), g.double())
        gx, gw = torch.ops.ofa_fast.dwconv2d_backward(g, x, w, k, 1, 1, padding, list(mask))
        what += f" mask={mask}"
        if mask[0]:
            assert_close(gx, gx_ref, torch.float32, f"{what}: grad input")
            assert gx.is_contiguous(memory_format=fmt)
        else:
            assert gx.numel() == 0
        if mask[1]:
            assert_close(gw, gw_ref, torch.float32, f"{what}: grad weight")
        else:
            assert gw.numel() == 0


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("k,W", [(3, 20), (3, 16), (5, 30), (3, 8)])
def test_cpu_weight_gradient_never_meets_unread_input(k, W, cl):
    # an inf in the last column reaches only the taps some output reads it through:
    # the vector lanes past the row's end (NCHW: W = 20, 30) must not multiply it by zero
    x = torch.randn(2, 16, 6, W)
    x[:, :, :, W - 1] = float("inf")
    if cl:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(16, 1, 7, 7)
    g = torch.randn(2, 16, 6, W)
    _, gw = torch.ops.ofa_fast.dwconv2d_backward(g, x, w, k, 1, 1, k // 2, [False, True])
    x64 = x.double()
    w64 = w.double().requires_grad_()
    (gw_ref,) = torch.autograd.grad(dwconv2d_reference(x64, w64, k, 1, 1, k // 2), (w64,), g.double())
    assert torch.equal(gw.isnan(), gw_ref.isnan()) and torch.equal(gw.isinf(), gw_ref.isinf())
    finite = gw_ref.isfinite()
    crop = gw_ref[:, :, 3 - k // 2:4 + k // 2, 3 - k // 2:4 + k // 2]
    assert crop.isfinite().any() and not crop.isfinite().all()
    assert_close(gw[finite], gw_ref[finite], torch.float32, "finite taps")


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("k,stride", [(3, 1), (7, 1), (5, 2)])
def test_cpu_padding_never_meets_nonfinite_input(k, stride, cl):
    # the zero padding is zero times the filter: an inf or a nan in the image reaches
    # only the outputs whose window covers it, never one through a padded tap
    x = torch.randn(2, 32, 9, 10)
    x[0, :, 0, 0] = float("inf")
    x[1, :, 8, 9] = float("nan")
    if cl:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(32, 1, 7, 7)
    with ofa_fast.use_backend("cpu"):
        y = dwconv2d(x, w, k, stride)
    y_ref = dwconv2d_reference(x.double(), w.double(), k, stride, 1, k // 2)
    assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.isinf(), y_ref.isinf())
    finite = y_ref.isfinite()
    assert finite.sum() > y.numel() // 2
    assert_close(y[finite], y_ref[finite], torch.float32, "finite outputs")

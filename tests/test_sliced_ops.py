"""The channel-sliced linear and pointwise-conv ops on every backend against the
reference (OFA's slice-copy-and-call): forward and every gradient, fp64 gradcheck,
opcheck, torch.compile, no weight copies, bad input."""
import pytest
import torch

import ofa_fast
from ofa_fast.ops import pointwise_conv2d, sliced_linear
from ofa_fast.ops.linear import pointwise_conv2d_reference, sliced_linear_reference

from _helpers import (HAS_CUDA, NO_CUDA_REASON, NoWeightCopies, assert_close, backend_params,
                      fmt_of)

# (M or N, in, in_max, out, out_max, H, W); H = W = 0 marks a linear case
LINEAR_CASES = [(1, 1, 1, 1, 1), (5, 7, 9, 6, 10), (16, 24, 24, 40, 40), (3, 33, 48, 17, 64),
                (0, 4, 8, 3, 5)]
CONV_CASES = [(1, 7, 9, 6, 10, 1, 1), (2, 7, 9, 6, 10, 3, 4), (3, 16, 24, 40, 48, 8, 8),
              (1, 24, 24, 24, 24, 5, 7), (2, 5, 8, 3, 4, 1, 1),
              # NCHW batches of tiny images run as one GEMM in rows layout (3x5 is the
              # largest such image); one input channel stays on the per-image path
              (8, 16, 24, 40, 48, 3, 5), (2, 1, 4, 3, 5, 3, 3),
              # NCHW, one batched GEMM for the images (the weight gradient: a batched GEMM
              # summed, then per-image GEMMs as the weight grows, then as images grow)
              (8, 16, 24, 40, 48, 7, 7), (4, 96, 96, 80, 80, 4, 5), (2, 8, 8, 64, 64, 8, 9),
              # NCHW, per-image GEMMs (64 x 32 x 33 outputs per image)
              (2, 8, 12, 64, 64, 32, 33)]
FORMATS = ["nchw", "cl", "strided"]


def _layout(x, fmt):
    if fmt == "cl":
        return x.to(memory_format=torch.channels_last)
    if fmt == "strided":  # a view with odd strides (every other pixel of a bigger input)
        big = torch.zeros(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3], dtype=x.dtype,
                          device=x.device)
        big[:, :, ::2, ::2] = x
        return big[:, :, ::2, ::2]
    return x


def _run(fn, args, grad):
    args = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    for a in args:
        if isinstance(a, torch.Tensor):
            a.retain_grad()
    y = fn(*args)
    y.backward(grad)
    return y, [a.grad for a in args if isinstance(a, torch.Tensor)]


def check_linear(backend, dtype, device, case, with_bias):
    M, i, i_max, o, o_max = case
    x = torch.randn(M, i, dtype=dtype, device=device)
    w = torch.randn(o_max, i_max, dtype=dtype, device=device)
    b = torch.randn(o_max, dtype=dtype, device=device) if with_bias else None
    g = torch.randn(M, o, dtype=dtype, device=device)
    args = [x, w] + ([b] if with_bias else [])
    f = (lambda x, w, b=None: sliced_linear(x, w, b, o))
    ref = (lambda x, w, b=None: sliced_linear_reference(x, w, b, o))
    with ofa_fast.use_backend(backend):
        y, grads = _run(f, args, g)
    y_ref, grads_ref = _run(ref, [a.double() for a in args], g.double())
    assert_close(y, y_ref, dtype, "output")
    for name, a, e in zip(("input", "weight", "bias"), grads, grads_ref):
        assert_close(a, e, dtype, f"grad {name}")


def check_conv(backend, dtype, device, case, fmt, with_bias, stride=1):
    N, i, i_max, o, o_max, H, W = case
    x = _layout(torch.randn(N, i, H, W, dtype=dtype, device=device), fmt)
    w = torch.randn(o_max, i_max, 1, 1, dtype=dtype, device=device)
    b = torch.randn(o_max, dtype=dtype, device=device) if with_bias else None
    OH, OW = (H - 1) // stride + 1, (W - 1) // stride + 1
    g = torch.randn(N, o, OH, OW, dtype=dtype, device=device)
    with ofa_fast.use_backend(backend):
        y = pointwise_conv2d(x, w, b, o, stride)
        # (one input channel: the input is both NCHW- and channels_last-contiguous)
        assert backend == "reference" or min(OH, OW) == 1 or o == 1 or i == 1 \
            or fmt_of(y) == ("channels_last" if fmt == "cl" else "contiguous")
    args = [x, w] + ([b] if with_bias else [])
    f = (lambda x, w, b=None: pointwise_conv2d(x, w, b, o, stride))
    with ofa_fast.use_backend(backend):
        y, grads = _run(f, args, g)
    ref = (lambda x, w, b=None: pointwise_conv2d_reference(x[:, :, ::stride, ::stride], w, b, o))
    y_ref, grads_ref = _run(ref, [a.double() for a in args], g.double())
    assert_close(y, y_ref, dtype, "output")
    for name, a, e in zip(("input", "weight", "bias"), grads, grads_ref):
        assert_close(a, e, dtype, f"grad {name}")


CPU_COMPILED = [p for p in backend_params("cpu") if p.id.startswith("cpu-")]
TRITON_CPU = [p for p in backend_params("cpu", [torch.float32, torch.float16])
              if p.id.startswith("triton-")]


@pytest.mark.parametrize("backend,dtype", CPU_COMPILED)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_cpu(backend, dtype, case, with_bias):
    check_linear(backend, dtype, "cpu", case, with_bias)


@pytest.mark.parametrize("backend,dtype", CPU_COMPILED)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_pointwise_cpu(backend, dtype, case, fmt, with_bias):
    check_conv(backend, dtype, "cpu", case, fmt, with_bias)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_pointwise_stride_2(backend, fmt):
    check_conv(backend, torch.float64, "cpu", (2, 7, 9, 6, 10, 7, 6), fmt, False, stride=2)


@pytest.mark.parametrize("backend,dtype", TRITON_CPU)
@pytest.mark.parametrize("with_bias", [True, False])
def test_triton_interpreted(backend, dtype, with_bias):
    check_linear(backend, dtype, "cpu", (5, 7, 9, 6, 10), with_bias)
    for fmt in FORMATS:
        check_conv(backend, dtype, "cpu", (2, 7, 9, 6, 10, 3, 4), fmt, with_bias)


@pytest.mark.parametrize("backend,dtype", backend_params("cuda"))
@pytest.mark.parametrize("with_bias", [True, False])
def test_gpu(backend, dtype, with_bias):
    for case in LINEAR_CASES:
        check_linear(backend, dtype, "cuda", case, with_bias)
    for case in CONV_CASES:
        for fmt in FORMATS:
            check_conv(backend, dtype, "cuda", case, fmt, with_bias)


def test_gradient_lands_in_active_block():
    w = torch.randn(10, 9, 1, 1, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    pointwise_conv2d(torch.randn(2, 7, 3, 3), w, b, 6).sum().backward()
    assert (w.grad[6:] == 0).all() and (w.grad[:, 7:] == 0).all()
    assert (w.grad[:6, :7] != 0).all()
    assert (b.grad[6:] == 0).all() and (b.grad[:6] == 18).all()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("fmt", ["nchw", "cl"])
def test_gradcheck_fp64(backend, fmt):
    x = _layout(torch.randn(2, 5, 3, 4, dtype=torch.float64), fmt).requires_grad_()
    w = torch.randn(7, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    with ofa_fast.use_backend(backend):
        assert torch.autograd.gradcheck(lambda x, w, b: pointwise_conv2d(x, w, b, 4), (x, w, b))
        assert torch.autograd.gradgradcheck(lambda x, w: pointwise_conv2d(x, w, None, 4), (x, w)) \
            if backend == "reference" else True
        assert torch.autograd.gradcheck(lambda x, w, b: sliced_linear(x, w, b, 4), (x2, w2, b))


def opcheck_samples():
    for fmt in ("nchw", "cl"):
        x = _layout(torch.randn(2, 7, 3, 4), fmt).requires_grad_()
        yield torch.ops.ofa_fast.pointwise_conv2d.default, (
            x, torch.randn(10, 9, 1, 1, requires_grad=True), torch.randn(10, requires_grad=True), 6)
        yield torch.ops.ofa_fast.pointwise_conv2d.default, (
            x, torch.randn(10, 9, 1, 1, requires_grad=True), None, 10)
    yield torch.ops.ofa_fast.sliced_linear.default, (
        torch.randn(4, 7, requires_grad=True), torch.randn(10, 9, requires_grad=True),
        torch.randn(10, requires_grad=True), 6)
    yield torch.ops.ofa_fast.sliced_linear.default, (
        torch.randn(4, 9, requires_grad=True), torch.randn(10, 9, requires_grad=True), None, 1)


@pytest.mark.skipif(not ofa_fast._ext.has_cpu_kernels(), reason="the compiled extension is not loaded")
def test_opcheck_compiled_ops():
    for op, args in opcheck_samples():
        torch.library.opcheck(op, args)


def test_opcheck_triton_ops_interpreted():
    why = ofa_fast.backend._why_unusable("triton", "cpu")
    if why:
        pytest.skip(why)
    triton_of = {torch.ops.ofa_fast.pointwise_conv2d.default:
                 torch.ops.ofa_fast.pointwise_conv2d_triton.default,
                 torch.ops.ofa_fast.sliced_linear.default: torch.ops.ofa_fast.sliced_linear_triton.default}
    for op, args in opcheck_samples():
        # the AOT test cannot trace kernels that run in the interpreter
        torch.library.opcheck(triton_of[op], args,
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))


@pytest.mark.skipif(not ofa_fast._ext.has_cpu_kernels(), reason="the compiled extension is not loaded")
def test_compiles_without_graph_break():
    lin = ofa_fast.nn.DynamicLinear(24, 10)
    conv = ofa_fast.nn.DynamicConv2d(16, 24)

    def step(x, out):
        y = conv(x, out)
        return lin(y.mean((2, 3)), 7).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 12, 5, 5)
    for out in (16, 20):
        torch.testing.assert_close(compiled(x, out), step(x, out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [p.values[0] for p in CPU_COMPILED[:1] + TRITON_CPU[:1]])
@pytest.mark.parametrize("fmt", ["nchw", "cl"])
def test_no_weight_copy(backend, fmt):
    conv = ofa_fast.nn.DynamicConv2d(16, 24)
    lin = ofa_fast.nn.DynamicLinear(16, 10)
    se = ofa_fast.nn.DynamicSE(16)
    x = _layout(torch.randn(2, 12, 5, 5), fmt)
    params = list(conv.parameters()) + list(lin.parameters()) + list(se.parameters())
    with ofa_fast.use_backend(backend), NoWeightCopies(params):
        conv(x, 20)
        lin(torch.randn(3, 12), 7)
        se(x)


def test_no_copy_check_catches_ofa_copy():
    conv = ofa_fast.nn.DynamicConv2d(16, 24)
    with ofa_fast.use_backend("reference"), pytest.raises(AssertionError, match="copies"):
        with NoWeightCopies(conv.parameters()):
            conv(torch.randn(1, 12, 4, 4), 20)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_input(backend):
    w, x = torch.randn(10, 9, 1, 1), torch.randn(2, 7, 3, 3)
    with ofa_fast.use_backend(backend):
        with pytest.raises(ValueError, match=r"out_channels = 11 is not allowed; it must be an int "
                                             r"between 1 and 10"):
            pointwise_conv2d(x, w, None, 11)
        with pytest.raises(ValueError, match=r"input has 12 channels; it must have between 1 and 9"):
            pointwise_conv2d(torch.randn(1, 12, 2, 2), w, None, 3)
        with pytest.raises(ValueError, match=r"weight must be \[out_max, in_max, 1, 1\]"):
            pointwise_conv2d(x, torch.randn(10, 9, 3, 3), None, 3)
        with pytest.raises(ValueError, match=r"stride = 0"):
            pointwise_conv2d(x, w, None, 3, 0)
        with pytest.raises(ValueError, match=r"bias must be a tensor of shape \(10,\)"):
            pointwise_conv2d(x, w, torch.randn(6), 3)
        with pytest.raises(TypeError, match=r"input dtype torch.float64 differs"):
            pointwise_conv2d(x.double(), w, None, 3)
        with pytest.raises(ValueError, match=r"out_features = 0 is not allowed"):
            sliced_linear(torch.randn(2, 9), w[:, :, 0, 0], None, 0)
        with pytest.raises(ValueError, match=r"input has 10 features; it must have between 1 and 9"):
            sliced_linear(torch.randn(2, 10), w[:, :, 0, 0], None, 3)


@pytest.mark.skipif(not ofa_fast._ext.has_cpu_kernels(), reason="the compiled extension is not loaded")
def test_compiled_op_checks_its_arguments():
    w = torch.randn(10, 9, 1, 1)
    with pytest.raises(RuntimeError, match=r"out = 11 is not allowed"):
        torch.ops.ofa_fast.pointwise_conv2d(torch.randn(2, 7, 3, 3), w, None, 11)
    with pytest.raises(RuntimeError, match=r"input has 10 features/channels"):
        torch.ops.ofa_fast.sliced_linear(torch.randn(2, 10), w[:, :, 0, 0], None, 3)
    with pytest.raises(RuntimeError, match=r"grad_output has shape"):
        torch.ops.ofa_fast.pointwise_conv2d_backward(torch.randn(2, 5, 2, 3), torch.randn(2, 7, 3, 3),
                                                     w, [True, True, False])


def test_leading_dims_of_linear():
    x = torch.randn(2, 3, 7)
    w = torch.randn(10, 9)
    torch.testing.assert_close(sliced_linear(x, w, None, 4), x @ w[:4, :7].T)


@pytest.mark.skipif(not ofa_fast._ext.has_cpu_kernels(), reason="the compiled extension is not loaded")
@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "h_swish"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_act(activation, fmt, stride):
    from ofa_fast.ops import pointwise_conv2d_act
    x = _layout(torch.randn(3, 7, 9, 10, dtype=torch.float64) * 3, fmt)
    w = torch.randn(300, 9, 1, 1, dtype=torch.float64)
    b = torch.randn(300, dtype=torch.float64)
    act = {"none": lambda t: t, "relu": torch.relu, "relu6": lambda t: t.clamp(0, 6),
           "h_swish": torch.nn.functional.hardswish}[activation]
    expected = act(pointwise_conv2d_reference(x[:, :, ::stride, ::stride], w, b, 260))
    y = pointwise_conv2d_act(x, w, b, 260, stride, activation)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    with ofa_fast.use_backend("reference"):
        assert pointwise_conv2d_act(x, w, b, 260, stride, activation) is None
    with pytest.raises(ValueError, match=r"activation = 'gelu' is not allowed"):
        pointwise_conv2d_act(x, w, b, 260, stride, "gelu")


@pytest.mark.skipif(not ofa_fast._ext.has_cpu_kernels(), reason="the compiled extension is not loaded")
def test_opcheck_pointwise_act():
    for fmt in ("nchw", "cl"):
        x = _layout(torch.randn(2, 7, 3, 4), fmt)
        torch.library.opcheck(torch.ops.ofa_fast.pointwise_conv2d_act.default,
                              (x, torch.randn(10, 9, 1, 1), torch.randn(10), 6, "h_swish"))
    with pytest.raises(RuntimeError, match=r"activation 'tanh' is not allowed"):
        torch.ops.ofa_fast.pointwise_conv2d_act(x, torch.randn(10, 9, 1, 1), None, 6, "tanh")

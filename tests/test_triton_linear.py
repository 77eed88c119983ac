"""The Triton kernels of the channel-sliced linear layer and pointwise (1x1) conv
(ofa_fast.triton_kernels.linear), called directly: forward and every gradient against
float64 PyTorch on the active slice of the max weight, every input layout, edge sizes,
the split weight-gradient reduction, fake-tensor runs and bad input.

Without a GPU they run under Triton's interpreter (tests/conftest.py), so the shapes
are small; bf16 is skipped there (the interpreter has no bf16 arithmetic)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ofa_fast import backend as _backend

from _helpers import HAS_CUDA, fmt_of
from _helpers import assert_close as _assert_close

_WHY = _backend._why_unusable("triton", "cuda" if HAS_CUDA else "cpu")
if _WHY:
    pytest.skip(f"Triton backend unusable: {_WHY}", allow_module_level=True)

from ofa_fast.triton_kernels import linear as L  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"
BF16_SKIP = pytest.mark.skipif(
    not HAS_CUDA, reason="Triton's CPU interpreter has no bf16 arithmetic; bf16 runs on a GPU only")
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=BF16_SKIP)]


def assert_close(actual, expected, dtype, what):
    """_helpers.assert_close, also for empty tensors (only their shapes compare)."""
    if expected.numel() == 0:
        assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    else:
        _assert_close(actual, expected, dtype, what)


def max_weight(out_max, in_max, dtype, kind, pointwise=False):
    """The max weight [out_max, in_max] (+ [1, 1]): contiguous, a transpose of a
    contiguous tensor, or a slice of a bigger one (strides that are not the shape's)."""
    if kind == "contiguous":
        w = torch.randn(out_max, in_max, dtype=dtype, device=DEVICE)
    elif kind == "transposed":
        w = torch.randn(in_max, out_max, dtype=dtype, device=DEVICE).t()
    else:  # every other row and column of a bigger tensor
        w = torch.randn(2 * out_max + 1, 2 * in_max, dtype=dtype, device=DEVICE)[1::2, ::2]
    assert w.shape == (out_max, in_max)
    return w[:, :, None, None] if pointwise else w


def weight_slice_grad_check(gw, gw_ref, out, inn, dtype, what):
    assert gw.shape == gw_ref.shape and gw.dtype == dtype, what
    assert_close(gw, gw_ref, dtype, what)
    outside = torch.ones(gw.shape[:2], dtype=torch.bool, device=gw.device)
    outside[:out, :inn] = False
    assert (gw.reshape(gw.shape[:2])[outside] == 0).all(), f"{what}: nonzero outside the slice"


# ---- linear --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LinearCase:
    M: int
    inn: int
    in_max: int
    out: int
    out_max: int
    bias: bool = True
    weight: str = "contiguous"  # contiguous | transposed | sliced
    x: str = "contiguous"  # contiguous | transposed | sliced
    grad: str = "contiguous"  # contiguous | expanded

    def __str__(self):
        return (f"M{self.M}_in{self.inn}of{self.in_max}_out{self.out}of{self.out_max}"
                f"{'_bias' if self.bias else ''}_w-{self.weight}_x-{self.x}_g-{self.grad}")


LINEAR_CASES = [
    LinearCase(1, 1, 1, 1, 1),
    LinearCase(1, 17, 40, 5, 33, weight="transposed"),
    LinearCase(37, 50, 60, 45, 70, bias=False),
    LinearCase(20, 64, 64, 48, 48, weight="sliced", x="transposed"),  # in = in_max, out = out_max
    LinearCase(150, 19, 24, 130, 131, x="sliced", grad="expanded"),  # two N tiles, two M tiles
    LinearCase(640, 20, 33, 10, 12, weight="transposed"),  # long reduction: split weight grad
    LinearCase(0, 5, 8, 3, 4),  # empty batch
]


def make_x(M, inn, dtype, kind):
    if kind == "contiguous":
        return torch.randn(M, inn, dtype=dtype, device=DEVICE)
    if kind == "transposed":
        return torch.randn(inn, M, dtype=dtype, device=DEVICE).t()
    return torch.randn(M, 2 * inn + 1, dtype=dtype, device=DEVICE)[:, 1::2]


def make_grad(shape, dtype, kind):
    if kind == "contiguous":
        return torch.randn(shape, dtype=dtype, device=DEVICE)
    # what .sum() hands back: one value per channel, stride 0 along every other dim
    channel = torch.randn(shape[1], dtype=dtype, device=DEVICE)
    view = [1] * len(shape)
    view[1] = shape[1]
    return channel.view(view).expand(shape)


def linear_reference(x, w, b, out, gy):
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    y = F.linear(x64, w64[:out, :x.shape[1]], None if b64 is None else b64[:out])
    grads = torch.autograd.grad(y, [t for t in (x64, w64, b64) if t is not None], gy.double(),
                                allow_unused=True)
    gx, gw = grads[0], grads[1]
    gb = grads[2] if b is not None else None
    # unused inputs (an empty batch) get None: their gradients are zeros
    gx = torch.zeros_like(x64) if gx is None else gx
    gw = torch.zeros_like(w64) if gw is None else gw
    return y, gx, gw, gb


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_sliced_linear_matches_reference(case, dtype):
    x = make_x(case.M, case.inn, dtype, case.x)
    w = max_weight(case.out_max, case.in_max, dtype, case.weight)
    b = torch.randn(case.out_max, dtype=dtype, device=DEVICE) if case.bias else None
    gy = make_grad((case.M, case.out), dtype, case.grad)
    y_ref, gx_ref, gw_ref, gb_ref = linear_reference(x, w, b, case.out, gy)

    y = L.sliced_linear_forward(x, w, b, case.out)
    assert y.is_contiguous() and y.dtype == dtype
    assert_close(y, y_ref, dtype, f"{case} output")
    gx = L.sliced_linear_backward_input(gy, w, case.inn)
    assert gx.is_contiguous() and gx.dtype == dtype
    assert_close(gx, gx_ref, dtype, f"{case} grad input")
    gw = L.sliced_linear_backward_weight(gy, x, w)
    weight_slice_grad_check(gw, gw_ref, case.out, case.inn, dtype, f"{case} grad weight")
    gb = L.sliced_linear_backward_bias(gy, case.out_max)
    gb_want = torch.zeros(case.out_max, dtype=torch.float64)
    gb_want[:case.out] = gy.double().sum(0).cpu()
    assert gb.shape == (case.out_max,) and gb.dtype == dtype
    assert_close(gb, gb_want, dtype, f"{case} grad bias")
    assert (gb[case.out:] == 0).all()
    if gb_ref is not None:
        assert_close(gb, gb_ref, dtype, f"{case} grad bias (autograd)")


def test_linear_in_features_zero_gives_bias():
    # no active input channels: the output is the bias slice, the weight gradient zero
    x = torch.randn(3, 0, device=DEVICE)
    w = torch.randn(5, 4, device=DEVICE)
    b = torch.randn(5, device=DEVICE)
    assert_close(L.sliced_linear_forward(x, w, b, 4), b[:4].expand(3, 4), torch.float32, "bias")
    assert (L.sliced_linear_backward_weight(torch.randn(3, 4, device=DEVICE), x, w) == 0).all()


# ---- pointwise conv --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PointwiseCase:
    N: int
    C: int
    C_max: int
    O: int
    O_max: int
    H: int
    W: int
    layout: str  # nchw | cl | nchw_view | cl_view (x[:, :, ::2, ::2] of the format)
    bias: bool = True
    weight: str = "contiguous"
    grad: str = "contiguous"

    def __str__(self):
        return (f"N{self.N}C{self.C}of{self.C_max}O{self.O}of{self.O_max}_{self.H}x{self.W}_"
                f"{self.layout}{'_bias' if self.bias else ''}_w-{self.weight}_g-{self.grad}")


POINTWISE_CASES = [
    PointwiseCase(2, 20, 24, 25, 30, 9, 7, "nchw"),
    PointwiseCase(2, 20, 24, 25, 30, 9, 7, "cl", bias=False, weight="transposed"),
    PointwiseCase(2, 17, 17, 40, 40, 5, 6, "nchw_view", weight="sliced"),  # C = C_max, O = O_max
    PointwiseCase(3, 17, 32, 9, 16, 4, 5, "cl_view", grad="expanded"),
    PointwiseCase(1, 5, 8, 3, 3, 1, 1, "nchw"),  # N = 1, 1x1 image
    PointwiseCase(1, 33, 40, 18, 24, 1, 1, "cl", weight="transposed"),
    PointwiseCase(1, 40, 48, 130, 136, 12, 12, "nchw"),  # several tiles along O and pixels
    PointwiseCase(2, 24, 24, 16, 20, 16, 16, "cl"),  # long (folded) reduction: split grad weight
    PointwiseCase(0, 4, 6, 3, 5, 3, 3, "cl"),  # empty batch
]


def make_image(case, dtype):
    shape = (case.N, case.C, case.H, case.W)
    if case.layout in ("nchw", "cl"):
        x = torch.randn(shape, dtype=dtype, device=DEVICE)
        return x.to(memory_format=torch.channels_last) if case.layout == "cl" else x
    big = torch.randn(case.N, case.C, 2 * case.H, 2 * case.W, dtype=dtype, device=DEVICE)
    if case.layout == "cl_view":
        big = big.to(memory_format=torch.channels_last)
    return big[:, :, ::2, ::2]


def expected_format(case):
    # the rule of pointwise_memory_format: channels_last for a channels_last tensor or a
    # view whose channel stride is the smallest, else contiguous
    if case.N * case.H * case.W * case.C == 0 or case.H * case.W == 1:
        return None  # both formats are the same layout
    return torch.channels_last if case.layout in ("cl", "cl_view") else torch.contiguous_format


def pointwise_reference(x, w, b, out, gy):
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    y = F.conv2d(x64, w64[:out, :x.shape[1]], None if b64 is None else b64[:out])
    grads = torch.autograd.grad(y, [t for t in (x64, w64) if t is not None], gy.double(),
                                allow_unused=True)
    gx = torch.zeros_like(x64) if grads[0] is None else grads[0]
    gw = torch.zeros_like(w64) if grads[1] is None else grads[1]
    return y, gx, gw


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", POINTWISE_CASES, ids=str)
def test_pointwise_conv_matches_reference(case, dtype):
    x = make_image(case, dtype)
    w = max_weight(case.O_max, case.C_max, dtype, case.weight, pointwise=True)
    b = torch.randn(case.O_max, dtype=dtype, device=DEVICE) if case.bias else None
    gy = make_grad((case.N, case.O, case.H, case.W), dtype, case.grad)
    y_ref, gx_ref, gw_ref = pointwise_reference(x, w, b, case.O, gy)
    fmt = expected_format(case)

    y = L.pointwise_conv2d_forward(x, w, b, case.O)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, f"{case} output")
    gx = L.pointwise_conv2d_backward_input(gy, x, w)
    assert gx.dtype == dtype
    assert_close(gx, gx_ref, dtype, f"{case} grad input")
    if fmt is not None:
        assert y.is_contiguous(memory_format=fmt), f"{case}: output is {fmt_of(y)}"
        assert gx.is_contiguous(memory_format=fmt), f"{case}: grad input is {fmt_of(gx)}"
    gw = L.pointwise_conv2d_backward_weight(gy, x, w)
    weight_slice_grad_check(gw, gw_ref, case.O, case.C, dtype, f"{case} grad weight")
    gb = L.pointwise_conv2d_backward_bias(gy, case.O_max)
    gb_want = torch.zeros(case.O_max, dtype=torch.float64)
    gb_want[:case.O] = gy.double().sum((0, 2, 3)).cpu()
    assert gb.shape == (case.O_max,) and gb.dtype == dtype
    assert_close(gb, gb_want, dtype, f"{case} grad bias")
    assert (gb[case.O:] == 0).all()


@pytest.mark.parametrize("layout", ["nchw_view", "cl"])
def test_split_reductions(monkeypatch, layout):
    # one K block per split: many fp32 partial sums, the images of a strided view
    # split across them (and folded images x pixels for channels_last); the same for
    # the bias gradient
    monkeypatch.setattr(L, "_MIN_BLOCKS_PER_SPLIT", 1)
    case = PointwiseCase(3, 21, 24, 18, 20, 6, 7, layout)
    x = make_image(case, torch.float32)
    w = max_weight(case.O_max, case.C_max, torch.float32, "transposed", pointwise=True)
    gy = make_grad((case.N, case.O, case.H, case.W), torch.float32, "contiguous")
    _, _, gw_ref = pointwise_reference(x, w, None, case.O, gy)
    gw = L.pointwise_conv2d_backward_weight(gy, x, w)
    weight_slice_grad_check(gw, gw_ref, case.O, case.C, torch.float32, f"{case} grad weight")
    gb = L.pointwise_conv2d_backward_bias(gy, case.O_max)
    assert_close(gb[:case.O], gy.double().sum((0, 2, 3)), torch.float32, "grad bias")
    assert (gb[case.O:] == 0).all()
    xl = torch.randn(70, 9, device=DEVICE)
    wl = max_weight(6, 11, torch.float32, "sliced")
    gyl = torch.randn(70, 5, device=DEVICE)
    _, _, gwl_ref, _ = linear_reference(xl, wl, None, 5, gyl)
    weight_slice_grad_check(L.sliced_linear_backward_weight(gyl, xl, wl), gwl_ref, 5, 9,
                            torch.float32, "linear grad weight")
    gbl = L.sliced_linear_backward_bias(gyl, 6)
    assert_close(gbl[:5], gyl.double().sum(0), torch.float32, "linear grad bias")
    assert gbl[5] == 0


def test_fake_tensors_give_shapes_without_launching():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(2, 6, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
        w = torch.randn(8, 7, 1, 1, device=DEVICE)
        y = L.pointwise_conv2d_forward(x, w, None, 4)
        assert y.shape == (2, 4, 5, 5) and y.is_contiguous(memory_format=torch.channels_last)
        assert L.pointwise_conv2d_backward_weight(y, x, w).shape == w.shape
        y = L.sliced_linear_forward(torch.randn(3, 7), torch.randn(9, 7), None, 9)
        assert y.shape == (3, 9)


# ---- bad input -------------------------------------------------------------------------

def _t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape, dtype=dtype, device=device)


BAD_CALLS = [
    ("x 3-D", lambda: L.sliced_linear_forward(_t(2, 3, 4), _t(5, 4), None, 5), ValueError, "2-D"),
    ("in > in_max", lambda: L.sliced_linear_forward(_t(2, 6), _t(5, 4), None, 5), ValueError,
     "x.size(1) (active in_features)=6 is outside [0, 4]"),
    ("out 0", lambda: L.sliced_linear_forward(_t(2, 4), _t(5, 4), None, 0), ValueError,
     "out_features=0 is outside [1, 5]"),
    ("out > out_max", lambda: L.sliced_linear_forward(_t(2, 4), _t(5, 4), None, 6), ValueError,
     "out_features=6"),
    ("out not int", lambda: L.sliced_linear_forward(_t(2, 4), _t(5, 4), None, 2.0), TypeError,
     "out_features must be an int"),
    ("bias size", lambda: L.sliced_linear_forward(_t(2, 4), _t(5, 4), _t(4), 3), ValueError,
     "bias has 4 entries"),
    ("dtype mismatch", lambda: L.sliced_linear_forward(_t(2, 4), _t(5, 4, dtype=torch.float16),
                                                       None, 3), TypeError, "one dtype"),
    ("float64", lambda: L.sliced_linear_forward(_t(2, 4, dtype=torch.float64),
                                                _t(5, 4, dtype=torch.float64), None, 3),
     TypeError, "torch.float64"),
    ("device mismatch", lambda: L.sliced_linear_forward(_t(2, 4), _t(5, 4, device="meta"), None, 3),
     ValueError, "one device"),
    ("in_features > in_max", lambda: L.sliced_linear_backward_input(_t(2, 3), _t(5, 4), 5),
     ValueError, "in_features=5"),
    ("grad_y out > out_max", lambda: L.sliced_linear_backward_weight(_t(2, 6), _t(2, 4), _t(5, 4)),
     ValueError, "grad_y.size(1)"),
    ("rows mismatch", lambda: L.sliced_linear_backward_weight(_t(3, 5), _t(2, 4), _t(5, 4)),
     ValueError, "rows"),
    ("bias grad out_max", lambda: L.sliced_linear_backward_bias(_t(2, 6), 5), ValueError,
     "out_max = 5"),
    ("weight not 1x1", lambda: L.pointwise_conv2d_forward(_t(1, 4, 3, 3), _t(5, 4, 3, 3), None, 5),
     ValueError, "[out_max, in_max, 1, 1]"),
    ("conv x 2-D", lambda: L.pointwise_conv2d_forward(_t(4, 3), _t(5, 4, 1, 1), None, 5),
     ValueError, "4-D"),
    ("conv in > in_max",
     lambda: L.pointwise_conv2d_forward(_t(1, 6, 3, 3), _t(5, 4, 1, 1), None, 5), ValueError,
     "in_max = weight.size(1)"),
    ("conv grad size", lambda: L.pointwise_conv2d_backward_input(_t(1, 5, 2, 3), _t(1, 4, 3, 3),
                                                                 _t(5, 4, 1, 1)),
     ValueError, "image sizes must match"),
    ("weight not tensor",
     lambda: L.pointwise_conv2d_backward_weight(_t(1, 5, 3, 3), _t(1, 4, 3, 3), [[1.0]]), TypeError,
     "weight must be a torch.Tensor"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_rejected(call, exc, match):
    with pytest.raises(exc) as info:
        call()
    assert match in str(info.value)

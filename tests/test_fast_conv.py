"""ofa_fast.nn.FastConv2d, the conv of ofa_fast's static layers: an nn.Conv2d whose
forward runs ops.dwconv2d for depthwise convs and ops.pointwise_conv2d for 1x1 convs,
and nn.Conv2d's own forward for everything else. Against nn.Conv2d with the same
weights: outputs, every gradient and the output's memory format, for each route; the
route taken; the fallbacks (other convs, bias on a depthwise conv, other padding modes,
unbatched or mismatched input, tracing for deployment); the static layers use it."""
import pytest
import torch
import torch.nn as nn

import ofa_fast
from ofa_fast.nn import FastConv2d
from ofa_fast.nn import layers as L

# (in, out, kernel, stride, dilation, groups, bias) -> the route FastConv2d takes
CASES = [
    ((24, 40, 1, 1, 1, 1, False), "pointwise"),
    ((24, 40, 1, 2, 1, 1, True), "pointwise"),
    ((40, 24, 1, 1, 1, 1, True), "pointwise"),
    ((16, 16, 3, 1, 1, 16, False), "depthwise"),
    ((32, 32, 5, 2, 1, 32, False), "depthwise"),
    ((24, 24, 7, 1, 1, 24, False), "depthwise"),
    ((20, 20, 3, 1, 2, 20, False), "depthwise"),
    ((16, 16, 3, 1, 1, 16, True), None),     # depthwise with a bias: PyTorch's conv
    ((16, 32, 3, 1, 1, 1, False), None),     # a dense 3x3 conv
    ((16, 16, 3, 2, 1, 4, False), None),     # grouped
    ((16, 32, 1, 1, 1, 2, False), None),     # grouped 1x1
]
DTYPES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def pair(spec, dtype, seed=0):
    """A FastConv2d and an nn.Conv2d with the same (random) weights."""
    cin, cout, k, s, d, g, bias = spec
    torch.manual_seed(seed)
    fast = FastConv2d(cin, cout, k, s, padding=k // 2 * d, dilation=d, groups=g, bias=bias)
    plain = nn.Conv2d(cin, cout, k, s, padding=k // 2 * d, dilation=d, groups=g, bias=bias)
    plain.load_state_dict(fast.state_dict())
    return fast.to(dtype), plain.to(dtype)


def forward_backward(module, x):
    module.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    y = module(leaf)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return y.detach(), leaf.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.fixture
def routes(monkeypatch):
    """Counts the ofa_fast ops FastConv2d calls."""
    calls = []
    for name in ("dwconv2d", "pointwise_conv2d"):
        original = getattr(ofa_fast.ops, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)
        monkeypatch.setattr(ofa_fast.ops, name, counted)
    return calls


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("spec,route", CASES,
                         ids=[f"{c[0]}to{c[1]}-k{c[2]}s{c[3]}d{c[4]}g{c[5]}{'b' if c[6] else ''}"
                              for c, _ in CASES])
def test_matches_nn_conv2d(spec, route, channels_last, dtype, routes):
    fast, plain = pair(spec, dtype)
    for n, size in ((1, 7), (3, 12)):
        x = torch.randn(n, spec[0], size, size, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        routes.clear()
        y, gx, gp = forward_backward(fast, x)
        taken = {"dwconv2d": "depthwise", "pointwise_conv2d": "pointwise"}
        assert [taken[c] for c in routes] == ([route] if route else [])
        y_ref, gx_ref, gp_ref = forward_backward(plain, x)
        torch.testing.assert_close(y, y_ref, **DTYPES[dtype])
        torch.testing.assert_close(gx, gx_ref, **DTYPES[dtype])
        assert gp.keys() == gp_ref.keys()
        for name in gp:
            torch.testing.assert_close(gp[name], gp_ref[name], **DTYPES[dtype])
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if y.size(1) > 1 and y.size(2) * y.size(3) > 1:
            assert y.is_contiguous(memory_format=fmt) == y_ref.is_contiguous(memory_format=fmt)


def test_no_grad_and_eval(routes):
    fast, plain = pair((16, 16, 3, 1, 1, 16, False), torch.float32)
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    assert routes == ["dwconv2d"]


def test_fallbacks_behave_as_nn_conv2d(routes):
    fast, plain = pair((16, 16, 3, 1, 1, 16, False), torch.float64)
    # unbatched (3-D) input: nn.Conv2d's own path
    x = torch.randn(16, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(fast(x), plain(x))
    # another padding mode
    fast.padding_mode = plain.padding_mode = "reflect"
    torch.testing.assert_close(fast(x[None]), plain(x[None]))
    assert routes == []
    # wrong channel count / dtype: nn.Conv2d's own error
    for bad in (torch.randn(1, 8, 6, 6, dtype=torch.float64), torch.randn(1, 16, 6, 6)):
        with pytest.raises(RuntimeError) as ours:
            fast(bad)
        with pytest.raises(RuntimeError) as theirs:
            plain(bad)
        assert str(ours.value) == str(theirs.value)
    assert routes == []


def test_reference_backend_is_pytorch_conv():
    fast, plain = pair((24, 40, 1, 1, 1, 1, True), torch.float32)
    x = torch.randn(2, 24, 5, 5)
    with ofa_fast.use_backend("reference"), torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=0)


def test_tracing_keeps_aten_convolution(routes):
    fast, _ = pair((16, 16, 3, 1, 1, 16, False), torch.float32)
    x = torch.randn(1, 16, 8, 8)
    traced = torch.jit.trace(fast, x, check_trace=False)  # (the check reruns it eagerly)
    graph = str(traced.graph)
    assert "aten::_convolution" in graph and "ofa_fast::" not in graph
    assert routes == []  # jit.trace ran nn.Conv2d's forward
    program = torch.export.export(fast, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert targets == {"aten.conv2d.default"}


def test_static_layers_use_it_and_keep_keys():
    layers = [L.ConvLayer(8, 16, 1), L.ConvLayer(3, 16, 3, stride=2),
              L.MBConvLayer(16, 24, 5, 2, expand_ratio=3, use_se=True),
              L.ResNetBottleneckBlock(32, 64, 3, 2, expand_ratio=0.25, downsample_mode="conv")]
    for layer in layers:
        convs = [m for name, m in layer.named_modules()
                 if isinstance(m, nn.Conv2d) and ".se." not in f".{name}."]
        assert convs and all(type(m) is FastConv2d for m in convs), layer
    keys = L.MBConvLayer(16, 24, 5, 2, expand_ratio=3).state_dict().keys()
    assert "depth_conv.conv.weight" in keys and "inverted_bottleneck.conv.weight" in keys

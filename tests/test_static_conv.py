"""How ofa_fast's static layers run their plain nn.Conv2d convs (ofa_fast.nn.layers:
conv_route, _call): ops.dwconv2d for depthwise convs, ops.pointwise_conv2d for 1x1 convs,
the module itself for everything else. Against calling the module: outputs, every
gradient and the output's memory format, for each route; the route taken; the fallbacks
(other convs, bias on a depthwise conv, other padding modes, unbatched or mismatched
input, hooks, subclasses, tracing for deployment); the static layers use it, and OFA's
MAC counter (forward hooks) still sees every conv. A BN and the activation after it run
as one op (ops.batch_norm_act) unless fusion is off or the BN has an instance forward
(BN recalibration measures through one)."""
import copy

import pytest
import torch
import torch.nn as nn

import ofa_fast
from ofa_fast.nn import layers as L

# (in, out, kernel, stride, dilation, groups, bias) -> the route a static layer takes
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


def conv_of(spec, dtype, seed=0):
    cin, cout, k, s, d, g, bias = spec
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k, s, padding=k // 2 * d, dilation=d, groups=g,
                     bias=bias).to(dtype)


def forward_backward(call, module, x):
    module.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    y = call(module, leaf)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return y.detach(), leaf.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.fixture
def routes(monkeypatch):
    """Counts the ofa_fast ops the static layers call."""
    calls = []
    for name in ("dwconv2d", "pointwise_conv2d", "pointwise_conv2d_act"):
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
def test_matches_the_module(spec, route, channels_last, dtype, routes):
    conv = conv_of(spec, dtype)
    for n, size in ((1, 7), (3, 12)):
        x = torch.randn(n, spec[0], size, size, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        assert L.conv_route(conv, x) == route
        routes.clear()
        y, gx, gp = forward_backward(L._call, conv, x)
        taken = {"dwconv2d": "depthwise", "pointwise_conv2d": "pointwise"}
        assert [taken[c] for c in routes] == ([route] if route else [])
        y_ref, gx_ref, gp_ref = forward_backward(lambda m, v: m(v), conv, x)
        torch.testing.assert_close(y, y_ref, **DTYPES[dtype])
        torch.testing.assert_close(gx, gx_ref, **DTYPES[dtype])
        assert gp.keys() == gp_ref.keys()
        for name in gp:
            torch.testing.assert_close(gp[name], gp_ref[name], **DTYPES[dtype])
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if y.size(1) > 1 and y.size(2) * y.size(3) > 1:
            assert y.is_contiguous(memory_format=fmt) == y_ref.is_contiguous(memory_format=fmt)


def test_fallbacks_call_the_module(routes):
    conv = conv_of((16, 16, 3, 1, 1, 16, False), torch.float64)
    # unbatched (3-D) input
    x = torch.randn(16, 6, 6, dtype=torch.float64)
    assert L.conv_route(conv, x) is None
    torch.testing.assert_close(L._call(conv, x), conv(x))
    # another padding mode
    conv.padding_mode = "reflect"
    assert L.conv_route(conv, x[None]) is None
    conv.padding_mode = "zeros"
    # wrong channel count / dtype: nn.Conv2d's own error
    for bad in (torch.randn(1, 8, 6, 6, dtype=torch.float64), torch.randn(1, 16, 6, 6)):
        with pytest.raises(RuntimeError) as ours:
            L._call(conv, bad)
        with pytest.raises(RuntimeError) as theirs:
            conv(bad)
        assert str(ours.value) == str(theirs.value)
    # a subclass of nn.Conv2d may have its own forward
    class Sub(nn.Conv2d):
        pass
    assert L.conv_route(Sub(16, 16, 3, padding=1, groups=16, bias=False), x[None]) is None
    assert routes == []


@pytest.mark.parametrize("where", ["conv", "global", "sequential"])
def test_hooks_run(where, routes):
    layer = L.MBConvLayer(8, 8, 3, 1, expand_ratio=2).double().eval()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
    routes.clear()
    seen = []

    def hook(module, inputs, output):
        seen.append(type(module).__name__)
    if where == "conv":
        handle = layer.depth_conv.conv.register_forward_hook(hook)
    elif where == "global":
        handle = nn.modules.module.register_module_forward_hook(hook)
    else:
        handle = layer.point_linear.register_forward_hook(hook)
    try:
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected)
    finally:
        handle.remove()
    # (eval, no_grad: the 1x1 convs fold their BN into one GEMM with the activation)
    if where == "conv":  # that conv is called as a module; the others are not
        assert seen == ["Conv2d"] and sorted(routes) == ["pointwise_conv2d_act"] * 2
    elif where == "global":  # every module is called as a module
        assert seen.count("Conv2d") == 3 and routes == []
    else:  # point_linear is called as a module, so its conv is too
        assert seen == ["Sequential"] and routes == ["pointwise_conv2d_act", "dwconv2d"]


def test_static_layers_route_their_convs(routes):
    x = torch.randn(2, 16, 12, 12, dtype=torch.float64)
    cases = [(L.ConvLayer(16, 24, 1), ["pointwise_conv2d"]),
             (L.ConvLayer(16, 24, 3, stride=2), []),
             (L.MBConvLayer(16, 24, 5, 2, expand_ratio=3, use_se=True),
              ["pointwise_conv2d", "dwconv2d", "pointwise_conv2d"]),
             (L.ResNetBottleneckBlock(16, 32, 3, 2, expand_ratio=0.25, downsample_mode="conv"),
              ["pointwise_conv2d", "pointwise_conv2d", "pointwise_conv2d"]),
             (L.ResNetBottleneckBlock(16, 32, 3, 2, expand_ratio=0.25,
                                      downsample_mode="avgpool_conv"),
              ["pointwise_conv2d", "pointwise_conv2d", "pointwise_conv2d"])]
    for layer, expected in cases:
        layer = layer.double().train()
        routes.clear()
        y, gx, grads = forward_backward(lambda m, v: m(v), layer, x)
        assert routes == expected, layer
        # the same layer with every module called as a module (a global hook)
        handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
        try:
            y_ref, gx_ref, grads_ref = forward_backward(lambda m, v: m(v), layer, x)
        finally:
            handle.remove()
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(gx, gx_ref)
        for name in grads:
            torch.testing.assert_close(grads[name], grads_ref[name], msg=name)


def test_tracing_keeps_aten_convolution(routes):
    layer = L.MBConvLayer(8, 8, 3, 1, expand_ratio=2).eval()
    x = torch.randn(1, 8, 8, 8)
    traced = torch.jit.trace(layer, x, check_trace=False)  # (the check reruns it eagerly)
    graph = str(traced.inlined_graph)
    assert "aten::_convolution" in graph and "ofa_fast::" not in graph
    assert routes == []
    program = torch.export.export(layer, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.conv2d.default" in targets and not any("ofa_fast" in t for t in targets)


@pytest.fixture
def bn_calls(monkeypatch):
    calls = []
    original = ofa_fast.ops.batch_norm_act

    def counted(x, bn, activation):
        calls.append(activation)
        return original(x, bn, activation)
    monkeypatch.setattr(ofa_fast.ops, "batch_norm_act", counted)
    return calls


@pytest.mark.parametrize("train", [True, False])
def test_bn_and_activation_run_as_one_op(train, bn_calls):
    x = torch.randn(3, 8, 10, 10, dtype=torch.float64)
    layer = L.MBConvLayer(8, 16, 3, 1, expand_ratio=3, act_func="h_swish", use_se=True).double()
    unfused = copy.deepcopy(layer)
    y, gx, grads = forward_backward(lambda m, v: m(v), layer.train(train), x)
    # expand and depthwise: BN + h_swish each; the projection's BN has no activation
    assert bn_calls == ["h_swish", "h_swish"]
    bn_calls.clear()
    with ofa_fast.nn.fusion(False):
        y_ref, gx_ref, grads_ref = forward_backward(lambda m, v: m(v), unfused.train(train), x)
    assert bn_calls == []
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], msg=name)
    for (name, a), (_, b) in zip(layer.named_buffers(), unfused.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)  # running statistics updated alike


def test_instance_forward_of_a_bn_runs(bn_calls):
    # OFA's set_running_statistics (and ofa_fast.recalibrate) measure batch statistics
    # through an instance-level BN forward: it must run, not the fused op
    layer = L.ConvLayer(8, 16, 1, act_func="relu6").double().eval()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    seen = []
    bn = layer.bn

    def measuring(v):
        seen.append(v.shape)
        return nn.BatchNorm2d.forward(bn, v)
    bn.forward = measuring
    with torch.no_grad():
        layer(x)
    assert seen == [(2, 16, 5, 5)] and bn_calls == []


@pytest.mark.parametrize("act_func", ["relu", "relu6", "h_swish", None])
def test_inference_folds_bn_into_1x1_convs(act_func, routes, bn_calls):
    torch.manual_seed(0)
    layer = L.ConvLayer(8, 16, 1, bias=True, act_func=act_func).double().eval()
    with torch.no_grad():  # statistics and affine parameters away from the defaults
        layer.bn.running_mean.uniform_(-1, 1)
        layer.bn.running_var.uniform_(0.5, 2)
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.bias.uniform_(-1, 1)
    x = torch.randn(3, 8, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        assert routes == ["pointwise_conv2d_act"] and bn_calls == []
        routes.clear()
        with ofa_fast.nn.fusion(False):
            y_ref = layer(x)
    assert routes == ["pointwise_conv2d"] and bn_calls == []
    torch.testing.assert_close(y, y_ref)
    # tracking gradients (or train mode): no fold
    routes.clear()
    layer(x.requires_grad_())
    assert routes == ["pointwise_conv2d"]

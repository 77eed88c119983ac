"""ofa_fast.nn.dynamic_layers against OFA's own layers (the `ofa` package): both built
with the same arguments (and, for one seed, the same initial weights), OFA's state_dict
loaded into ours (strict) and back; random active configurations (kernel size, expand
ratio, output channels, input channels below the max), batch 1 and 2, train and eval
mode: same outputs, gradients of every parameter and of the input, and running
statistics; get_active_subnet, get_active_subnet_config, re_organize_middle_weights,
configs and module_str as OFA's; bad active configurations raise ValueError."""
import copy
import random

import pytest
import torch
import torch.nn as nn

import _helpers
import ofa_fast
from ofa_fast.nn import dynamic_layers as D
from ofa_fast.nn import dynamic_op as ours_op
from ofa_fast.nn import layers as L
from ofa_fast.nn.utils import MyNetwork, val2list

OD = pytest.importorskip("ofa.imagenet_classification.elastic_nn.modules.dynamic_layers",
                         reason="the `ofa` package is the parity oracle")
ofa_op = pytest.importorskip("ofa.imagenet_classification.elastic_nn.modules.dynamic_op")
ofa_layers = pytest.importorskip("ofa.utils.layers")

TOL = dict(rtol=1e-9, atol=1e-9)  # float64; ofa_fast's kernels sum in another order


# ----------------------------------------------------------------------------- helpers


def perturb(module, seed=1):
    """As after training: non-trivial BN statistics and affine parameters, and kernel
    transform matrices away from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("_matrix"):
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(3)
    return module


def twins(cls_name, kwargs, seed=0, dtype=torch.float64):
    """OFA's layer (perturbed) and ours with OFA's state_dict loaded (strict). Built
    after the same seed, they also start with the same weights."""
    torch.manual_seed(seed)
    theirs = getattr(OD, cls_name)(**kwargs)
    torch.manual_seed(seed)
    ours = getattr(D, cls_name)(**kwargs)
    assert_same_state(ours, theirs)
    perturb(theirs)
    theirs.to(dtype)
    ours.to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def assert_same_state(a, b, exact=True):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for n in sa:
        assert sa[n].shape == sb[n].shape and sa[n].dtype == sb[n].dtype, n
        if exact:
            assert torch.equal(sa[n], sb[n]), n
        else:
            torch.testing.assert_close(sa[n], sb[n], **TOL, msg=lambda m: f"{n}: {m}")


def set_active(modules, **attrs):
    for m in modules:
        for k, v in attrs.items():
            setattr(m, k, v)


def run(module, x, train):
    module.train(train)
    module.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    torch.manual_seed(0)  # dropout masks
    y = module(leaf.clone())
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return y.detach(), leaf.grad, grads, {n: b.clone() for n, b in module.named_buffers()}


def assert_same_run(a, b):
    _helpers.assert_same_run(a, b, **TOL)


def check_subnet(theirs, ours, in_channel, x, same_as_supernet=True):
    """get_active_subnet(_config) as OFA's: same config, class name, state_dict, output;
    and (where OFA's subnet computes what the supernet does) the supernet's output."""
    cfg = ours.get_active_subnet_config(in_channel)
    assert cfg == theirs.get_active_subnet_config(in_channel)
    sub_t = theirs.get_active_subnet(in_channel)
    sub_o = ours.get_active_subnet(in_channel)
    assert type(sub_o) is getattr(L, type(sub_t).__name__)
    assert sub_o.config == sub_t.config
    assert_same_state(sub_o, sub_t)  # float32 copies, as OFA's (it moves device, not dtype)
    xs = x[:, :in_channel].float()
    for train in (False, True):
        sub_o.train(train)
        sub_t.train(train)
        torch.manual_seed(0)
        y_o = sub_o(xs.clone())
        torch.manual_seed(0)
        torch.testing.assert_close(y_o, sub_t(xs.clone()), rtol=1e-6, atol=1e-6)
    if same_as_supernet:  # (a fresh subnet: the train forwards above moved its statistics)
        fresh = ours.get_active_subnet(in_channel).double().eval()
        torch.testing.assert_close(fresh(x[:, :in_channel]), ours.eval()(x[:, :in_channel]),
                                   rtol=1e-5, atol=1e-5)
    # without weights: a fresh layer, as OFA's (same seed, same initial weights)
    torch.manual_seed(7)
    bare_t = theirs.get_active_subnet(in_channel, preserve_weight=False)
    torch.manual_seed(7)
    bare_o = ours.get_active_subnet(in_channel, preserve_weight=False)
    assert_same_state(bare_o, bare_t)


def check_config_round_trip(theirs, ours):
    cfg = ours.config
    assert cfg == theirs.config
    assert ours.module_str == theirs.module_str
    no_name = {k: v for k, v in cfg.items() if k != "name"}
    back = type(theirs).build_from_config(copy.deepcopy(no_name))  # OFA's wants no "name"
    assert back.config == cfg
    again = type(ours).build_from_config(copy.deepcopy(theirs.config))  # ours takes either
    assert again.config == cfg and type(ours).build_from_config(no_name).config == cfg
    assert list(again.state_dict()) == list(ours.state_dict())
    fresh = type(theirs).build_from_config(copy.deepcopy(no_name)).to(torch.float64)
    fresh.load_state_dict(ours.state_dict())  # OFA loads ours (strict)
    assert_same_state(fresh, ours)


# ----------------------------------------------------------------------------- MBConv

MB_CASES = [
    dict(in_channel_list=[16], out_channel_list=[16], kernel_size_list=[3, 5, 7],
         expand_ratio_list=[3, 4, 6], stride=1, act_func="relu6", use_se=False),
    dict(in_channel_list=[8, 12, 16], out_channel_list=[8, 16, 24], kernel_size_list=[3, 5, 7],
         expand_ratio_list=[3, 4, 6], stride=2, act_func="h_swish", use_se=True),
    dict(in_channel_list=[16], out_channel_list=[16, 24], kernel_size_list=3, expand_ratio_list=1,
         stride=1, act_func="relu", use_se=False),
    dict(in_channel_list=[12, 20], out_channel_list=[16], kernel_size_list=[3, 5],
         expand_ratio_list=[2.5, 4], stride=1, act_func="h_swish", use_se=True),
]


def mb_draw(rng, kw):
    in_max, out_max = max(kw["in_channel_list"]), max(kw["out_channel_list"])
    return dict(ks=rng.choice(val2list(kw["kernel_size_list"])),
                e=rng.choice(val2list(kw["expand_ratio_list"])),
                out=rng.choice(kw["out_channel_list"] + [rng.randint(1, out_max)]),
                inc=rng.choice([in_max, rng.randint(1, in_max)]))


@pytest.mark.parametrize("case", range(len(MB_CASES)))
def test_mbconv_matches_ofa(case):
    kw = MB_CASES[case]
    theirs, ours = twins("DynamicMBConvLayer", kw)
    check_config_round_trip(theirs, ours)
    assert (ours.in_channels, ours.out_channels) == (theirs.in_channels, theirs.out_channels)
    rng = random.Random(case)
    max_in = max(kw["in_channel_list"])
    for trial in range(5):
        d = mb_draw(rng, kw) if trial else dict(ks=max(val2list(kw["kernel_size_list"])),
                                                e=max(val2list(kw["expand_ratio_list"])),
                                                out=max(kw["out_channel_list"]), inc=max_in)
        set_active([theirs, ours], active_kernel_size=d["ks"], active_expand_ratio=d["e"],
                   active_out_channel=d["out"])
        assert ours.module_str == theirs.module_str
        assert ours.active_middle_channel(d["inc"]) == theirs.active_middle_channel(d["inc"])
        x = torch.randn(1 + trial % 2, d["inc"], 9, 9, dtype=torch.float64)
        for train in (False, True):
            assert_same_run(run(ours, x, train), run(theirs, x, train))
        assert_same_state(ours, theirs, exact=False)  # running statistics updated alike
        if d["e"] == 1 and ours.active_middle_channel(d["inc"]) != d["inc"]:
            # OFA builds a static layer whose depthwise conv expects more channels than
            # its input has (it fails in forward); ours refuses to build it
            with pytest.raises(ValueError, match=r"with expand ratio 1 rounds to \d+ middle"):
                ours.get_active_subnet(d["inc"])
            with pytest.raises(RuntimeError):
                theirs.get_active_subnet(d["inc"])(x.float())
            continue
        check_subnet(theirs, ours, d["inc"], x)


def test_mbconv_expand_ratio_one_quirk():
    """OFA's subnet drops the inverted bottleneck for expand ratio 1 even where the
    supernet has one (its forward still applies it): matched, and documented here."""
    kw = dict(in_channel_list=[16], out_channel_list=[16], kernel_size_list=[3],
              expand_ratio_list=[1, 3], use_se=True)
    theirs, ours = twins("DynamicMBConvLayer", kw)
    set_active([theirs, ours], active_expand_ratio=1)
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    for train in (False, True):
        assert_same_run(run(ours, x, train), run(theirs, x, train))
    check_subnet(theirs, ours, 16, x, same_as_supernet=False)
    assert ours.get_active_subnet(16).inverted_bottleneck is None
    assert ours.inverted_bottleneck is not None


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mbconv_backends(backend):
    if backend not in ofa_fast.usable_backends():
        pytest.skip(f"backend {backend!r} unusable here")
    theirs, ours = twins("DynamicMBConvLayer", MB_CASES[1])
    set_active([theirs, ours], active_kernel_size=5, active_expand_ratio=4, active_out_channel=13)
    x = torch.randn(2, 11, 8, 8, dtype=torch.float64)
    with ofa_fast.use_backend(backend):
        got = run(ours, x, True)
    assert_same_run(got, run(theirs, x, True))


def _with_group_norm(layer, op_module, cpg):
    """Replaces depth_conv.bn by the package's DynamicGroupNorm (as a GN supernet has)."""
    c = layer.depth_conv.bn.bn.num_features
    gn = op_module.DynamicGroupNorm(c // cpg, c, channel_per_group=cpg)
    layer.depth_conv.bn = perturb(gn, seed=5).to(layer.depth_conv.bn.bn.weight.dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_mbconv_re_organize_middle_weights(case, dtype):
    kw = MB_CASES[case]
    n_stages = len(val2list(kw["expand_ratio_list"]))
    for stage in range(n_stages):
        for gn in ((False, True) if case == 1 else (False,)):
            theirs, ours = twins("DynamicMBConvLayer", kw, seed=stage, dtype=dtype)
            if gn:
                _with_group_norm(theirs, ofa_op, 4)
                _with_group_norm(ours, ours_op, 4)
                ours.depth_conv.bn.load_state_dict(theirs.depth_conv.bn.state_dict())
            ref = copy.deepcopy(ours)
            idx_t = theirs.re_organize_middle_weights(expand_ratio_stage=stage)
            idx_o = ours.re_organize_middle_weights(expand_ratio_stage=stage)
            assert (idx_o is None) == (idx_t is None)
            if idx_t is not None:
                assert torch.equal(idx_o, idx_t)
            assert_same_state(ours, theirs)
            # a permutation of the middle channels: the full network computes the same
            if not gn and ours.inverted_bottleneck is not None and dtype == torch.float64:
                x = torch.randn(2, max(kw["in_channel_list"]), 6, 6, dtype=dtype)
                torch.testing.assert_close(ours.eval()(x), ref.eval()(x), **TOL)


# ----------------------------------------------------------------------------- conv

CONV_CASES = [
    dict(in_channel_list=[3], out_channel_list=[8, 16], kernel_size=3, stride=2, use_bn=True,
         act_func="relu"),
    dict(in_channel_list=[8, 16], out_channel_list=[8, 12, 16], kernel_size=5, stride=1,
         act_func="h_swish"),
    dict(in_channel_list=[16], out_channel_list=[16, 24], kernel_size=1, use_bn=False,
         act_func="relu6"),
    dict(in_channel_list=[8], out_channel_list=[12], kernel_size=3, dilation=2, act_func="relu"),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_layer_matches_ofa(case):
    kw = CONV_CASES[case]
    theirs, ours = twins("DynamicConvLayer", kw)
    check_config_round_trip(theirs, ours)
    rng = random.Random(case)
    max_in, max_out = max(kw["in_channel_list"]), max(kw["out_channel_list"])
    for trial in range(4):
        out = rng.choice(kw["out_channel_list"] + [rng.randint(1, max_out)]) if trial else max_out
        inc = rng.randint(1, max_in) if trial else max_in
        set_active([theirs, ours], active_out_channel=out)
        assert ours.module_str == theirs.module_str
        x = torch.randn(1 + trial % 2, inc, 9, 9, dtype=torch.float64)
        for train in (False, True):
            assert_same_run(run(ours, x, train), run(theirs, x, train))
        # OFA's quirk: DynamicConv2d pads kernel_size // 2 whatever the dilation, the
        # static ConvLayer pads (kernel_size // 2) * dilation: outputs differ in size
        check_subnet(theirs, ours, inc, x, same_as_supernet=kw.get("dilation", 1) == 1)


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("kw", [dict(in_features_list=[16], out_features=10),
                                dict(in_features_list=[8, 12, 16], out_features=10, bias=False,
                                     dropout_rate=0.3)])
def test_linear_layer_matches_ofa(kw):
    theirs, ours = twins("DynamicLinearLayer", kw)
    check_config_round_trip(theirs, ours)
    assert ours.config["name"] == "DynamicLinear"  # OFA's name for it
    for inc in (16, 12, 5):
        for batch in (1, 3):
            x = torch.randn(batch, inc, dtype=torch.float64)
            for train in (False, True):
                assert_same_run(run(ours, x, train), run(theirs, x, train))
        check_subnet(theirs, ours, inc, torch.randn(2, inc, dtype=torch.float64))


# ----------------------------------------------------------------------------- ResNet

RES_CASES = [
    dict(in_channel_list=[16], out_channel_list=[16], expand_ratio_list=[0.25, 0.35]),
    dict(in_channel_list=[8, 16], out_channel_list=[16, 32], expand_ratio_list=[0.2, 0.25, 0.35],
         stride=2),
    dict(in_channel_list=[8, 16], out_channel_list=[16, 24], expand_ratio_list=0.25, kernel_size=5,
         stride=2, downsample_mode="conv", act_func="h_swish"),
    dict(in_channel_list=[16, 24], out_channel_list=[16, 24], expand_ratio_list=[0.25, 0.5]),
    dict(in_channel_list=[8], out_channel_list=[16], expand_ratio_list=[0.5, 1.0]),
]


@pytest.mark.parametrize("case", range(len(RES_CASES)))
def test_resnet_block_matches_ofa(case):
    kw = RES_CASES[case]
    theirs, ours = twins("DynamicResNetBottleneckBlock", kw)
    check_config_round_trip(theirs, ours)
    identity = isinstance(ours.downsample, L.IdentityLayer)
    assert identity == isinstance(theirs.downsample, ofa_layers.IdentityLayer)
    rng = random.Random(case)
    max_in, max_out = max(kw["in_channel_list"]), max(kw["out_channel_list"])
    for trial in range(4):
        e = rng.choice(val2list(kw["expand_ratio_list"]))
        out = rng.choice(kw["out_channel_list"] + [rng.randint(1, max_out)]) if trial else max_out
        inc = out if identity else (rng.randint(1, max_in) if trial else max_in)
        set_active([theirs, ours], active_expand_ratio=e, active_out_channel=out)
        assert ours.module_str == theirs.module_str
        assert ours.active_middle_channels == theirs.active_middle_channels
        x = torch.randn(1 + trial % 2, inc, 8, 8, dtype=torch.float64)
        for train in (False, True):
            assert_same_run(run(ours, x, train), run(theirs, x, train))
        if not identity and ours.stride == 1 and inc == out:
            continue  # OFA cannot build that subnet (see test_bad_active_configs)
        check_subnet(theirs, ours, inc, x)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_resnet_re_organize_middle_weights(case):
    kw = RES_CASES[case]
    for stage in range(len(val2list(kw["expand_ratio_list"]))):
        theirs, ours = twins("DynamicResNetBottleneckBlock", kw, seed=stage, dtype=torch.float32)
        ref = copy.deepcopy(ours).double()
        assert theirs.re_organize_middle_weights(stage) is None
        assert ours.re_organize_middle_weights(stage) is None
        assert_same_state(ours, theirs)
        x = torch.randn(2, max(kw["in_channel_list"]), 6, 6, dtype=torch.float64)
        torch.testing.assert_close(ours.double().eval()(x), ref.eval()(x), **TOL)


# ----------------------------------------------------------------------------- errors


def test_bad_active_configs():
    mb = D.DynamicMBConvLayer([8, 16], [8, 16], [3, 5, 7], [3, 4, 6])
    x = torch.randn(1, 16, 6, 6)
    for attr, value, match in [
        ("active_kernel_size", 4, r"active_kernel_size = 4 is not in kernel_size_list \[3, 5, 7\]"),
        ("active_kernel_size", 9, r"active_kernel_size = 9 is not in kernel_size_list"),
        ("active_expand_ratio", 5, r"active_expand_ratio = 5 is not in expand_ratio_list \[3, 4, 6\]"),
        ("active_out_channel", 17, r"active_out_channel = 17 is not allowed; it must be an int "
                                   r"between 1 and the max 16"),
        ("active_out_channel", 0, r"active_out_channel = 0"),
    ]:
        bad = copy.deepcopy(mb)
        setattr(bad, attr, value)
        for call in (lambda: bad(x), lambda: bad.get_active_subnet(16),
                     lambda: bad.get_active_subnet_config(16)):
            with pytest.raises(ValueError, match=match):
                call()
    for call in (lambda: mb(torch.randn(1, 20, 6, 6)), lambda: mb.get_active_subnet(20),
                 lambda: mb.get_active_subnet_config(0)):
        with pytest.raises(ValueError, match=r"in_channel = (20|0) is not allowed; it must be an "
                                             r"int between 1 and the max 16"):
            call()
    with pytest.raises(ValueError, match=r"4-D tensor, got \(16, 6, 6\)"):
        mb(torch.randn(16, 6, 6))
    with pytest.raises(ValueError, match=r"expand_ratio_stage = 3 is not allowed; it must be an int "
                                         r"between 0 and 2"):
        mb.re_organize_middle_weights(3)

    conv = D.DynamicConvLayer([8], [8, 16])
    conv.active_out_channel = 32
    with pytest.raises(ValueError, match=r"active_out_channel = 32"):
        conv(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match=r"active_out_channel = 32"):
        conv.get_active_subnet(8)
    conv.active_out_channel = 16
    with pytest.raises(ValueError, match=r"in_channel = 9"):
        conv(torch.randn(1, 9, 5, 5))

    lin = D.DynamicLinearLayer([8, 16], 10)
    with pytest.raises(ValueError, match=r"in_features = 17 is not allowed"):
        lin(torch.randn(2, 17))
    with pytest.raises(ValueError, match=r"in_features = 17"):
        lin.get_active_subnet(17)
    with pytest.raises(ValueError, match=r"2-D tensor"):
        lin(torch.randn(2, 16, 1, 1))

    res = D.DynamicResNetBottleneckBlock([16, 24], [16, 24], [0.25, 0.5])
    res.active_out_channel = 16
    with pytest.raises(ValueError, match=r"in_channel = 24 must equal active_out_channel = 16: the "
                                         r"shortcut is an identity"):
        res(torch.randn(1, 24, 5, 5))
    res.active_expand_ratio = 0.3
    with pytest.raises(ValueError, match=r"active_expand_ratio = 0.3 is not in expand_ratio_list"):
        res(torch.randn(1, 16, 5, 5))
    with pytest.raises(ValueError, match=r"expand_ratio_stage = 2"):
        res.re_organize_middle_weights(2)
    # stride 1, in == out, but a downsample conv: OFA's static block takes an identity
    # shortcut there and OFA's get_active_subnet fails with an AttributeError
    res = D.DynamicResNetBottleneckBlock([8, 16], [16, 32], [0.25])
    res.active_out_channel = 16
    res(torch.randn(1, 16, 5, 5))  # the supernet runs it
    with pytest.raises(ValueError, match=r"shortcut an identity, but this block's shortcut is "
                                         r"'avgpool_conv'"):
        res.get_active_subnet(16)
    theirs = OD.DynamicResNetBottleneckBlock([8, 16], [16, 32], [0.25])
    theirs.active_out_channel = 16
    with pytest.raises(AttributeError):
        theirs.get_active_subnet(16)


@pytest.mark.parametrize("make,match", [
    (lambda: D.DynamicMBConvLayer([0, 8], [8]), r"in_channel_list = \[0, 8\]"),
    (lambda: D.DynamicMBConvLayer([8], []), r"out_channel_list = \[\]"),
    (lambda: D.DynamicMBConvLayer([8], [8], [3, 4]), r"kernel_size_list = \[3, 4\].*odd"),
    (lambda: D.DynamicMBConvLayer([8], [8], 3, [0, 3]), r"expand_ratio_list = \[0, 3\]"),
    (lambda: D.DynamicMBConvLayer([8], [8], act_func="gelu"), r"act_func = 'gelu'"),
    (lambda: D.DynamicConvLayer([8], [8], kernel_size=2), r"kernel_size = 2"),
    (lambda: D.DynamicConvLayer([8], [8], stride=0), r"stride = 0"),
    (lambda: D.DynamicLinearLayer([8], 0), r"out_features = 0"),
    (lambda: D.DynamicLinearLayer([8], 4, dropout_rate=-0.1), r"dropout_rate = -0.1"),
    (lambda: D.DynamicResNetBottleneckBlock([8], [16], stride=2, downsample_mode="max"),
     r"downsample_mode = 'max' is not one of"),
    (lambda: D.DynamicMBConvLayer.build_from_config({"name": "DynamicConvLayer"}),
     r"config name 'DynamicConvLayer' is not 'DynamicMBConvLayer'"),
])
def test_bad_constructor_args(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_int_channel_lists_are_wrapped():
    # OFA needs lists (max() of an int fails); ours wraps a bare int as OFA's val2list would
    layer = D.DynamicMBConvLayer(16, 24, 3, 6)
    assert layer.config["in_channel_list"] == [16] and layer.config["out_channel_list"] == [24]
    assert layer.config == OD.DynamicMBConvLayer([16], [24], 3, 6).config


def test_channel_divisible_is_one_constant(monkeypatch):
    monkeypatch.setattr(MyNetwork, "CHANNEL_DIVISIBLE", 4)
    layer = D.DynamicMBConvLayer([10], [8], 3, [3])
    assert layer.active_middle_channel(10) == 32  # make_divisible(30, 4)
    assert layer.depth_conv.conv.max_in_channels == 32

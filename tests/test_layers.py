"""ofa_fast.nn.layers and ofa_fast.nn.utils against ofa.utils (the `ofa` package): same
configs (round trips both ways through either set_layer_from_config), same state_dict
keys, shapes and initial values for one seed, state_dicts load both ways, same
module_str, same outputs, gradients and running statistics in train and eval mode."""
import copy
import math

import pytest
import torch
import torch.nn as nn

import _helpers
from ofa_fast.nn import layers as L
from ofa_fast.nn import utils as U

ofa_utils = pytest.importorskip("ofa.utils", reason="the `ofa` package is the parity oracle")
ofa_layers = pytest.importorskip("ofa.utils.layers")
ofa_dyn_layers = pytest.importorskip("ofa.imagenet_classification.elastic_nn.modules.dynamic_layers")

TOL = dict(rtol=1e-9, atol=1e-9)  # float64; Hswish backward is one fused kernel here


# ----------------------------------------------------------------------------- helpers


def perturb(module, seed=1):
    """Non-trivial BN affine parameters and running statistics (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module


def run(module, x, train, seed=0):
    """Output, input gradient, parameter gradients and buffers after one forward/backward
    (dropout masks drawn from `seed`)."""
    module.train(train)
    module.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    y = module(leaf.clone())  # a clone: in-place dropout / activations may write into it
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    return y.detach(), leaf.grad, grads, {n: b.clone() for n, b in module.named_buffers()}


def assert_same_run(a, b):
    _helpers.assert_same_run(a, b, **TOL)


def assert_same_run_or_error(ours, theirs, x, train):
    """Same results, or the same error: OFA's in-place Dropout right after an activation
    (ops_order "bn_act_weight") breaks the backward in training, in both packages."""
    try:
        expected = run(theirs, x, train)
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            run(ours, x, train)
        return
    assert_same_run(run(ours, x, train), expected)


def assert_same_state(a, b, values=True):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for n in sa:
        assert sa[n].shape == sb[n].shape, n
        assert sa[n].dtype == sb[n].dtype, n
        if values:
            assert torch.equal(sa[n], sb[n]), n


def twins(cls_name, kwargs, seed=0):
    """OFA's layer and ours, each built after the same seed."""
    torch.manual_seed(seed)
    theirs = getattr(ofa_layers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    ours = getattr(L, cls_name)(**kwargs)
    return theirs, ours


# ----------------------------------------------------------------------------- cases

N, H = 2, 7
CASES = [  # (class, kwargs, input shape without the batch)
    ("ConvLayer", dict(in_channels=8, out_channels=16), (8, H, H)),
    ("ConvLayer", dict(in_channels=8, out_channels=12, kernel_size=5, stride=2, act_func="h_swish"),
     (8, H, H)),
    ("ConvLayer", dict(in_channels=6, out_channels=8, dilation=2, bias=True, act_func="relu6"),
     (6, 9, 9)),
    ("ConvLayer", dict(in_channels=8, out_channels=16, groups=4, has_shuffle=True, use_se=True),
     (8, H, H)),
    ("ConvLayer", dict(in_channels=6, out_channels=12, groups=4, dilation=2), (6, 9, 9)),
    ("ConvLayer", dict(in_channels=8, out_channels=8, ops_order="bn_act_weight", dropout_rate=0.3,
                       act_func="tanh"), (8, H, H)),
    ("ConvLayer", dict(in_channels=8, out_channels=8, ops_order="act_weight_bn", act_func="sigmoid",
                       use_se=True), (8, H, H)),
    ("ConvLayer", dict(in_channels=4, out_channels=8, use_bn=False, act_func="h_sigmoid",
                       dropout_rate=0.2, kernel_size=1), (4, H, H)),
    ("IdentityLayer", dict(in_channels=8, out_channels=8), (8, H, H)),
    ("IdentityLayer", dict(in_channels=8, out_channels=8, use_bn=True, act_func="relu"), (8, H, H)),
    ("IdentityLayer", dict(in_channels=8, out_channels=8, act_func="relu", dropout_rate=0.5),
     (8, H, H)),
    ("LinearLayer", dict(in_features=10, out_features=6), (10,)),
    ("LinearLayer", dict(in_features=10, out_features=6, bias=False, use_bn=True, act_func="relu",
                         dropout_rate=0.25), (10,)),
    ("LinearLayer", dict(in_features=10, out_features=6, use_bn=True, act_func="h_swish",
                         ops_order="bn_act_weight"), (10,)),
    ("LinearLayer", dict(in_features=10, out_features=6, act_func="relu6",
                         ops_order="act_weight_bn", use_bn=True), (10,)),
    ("MultiHeadLinearLayer", dict(in_features=10, out_features=4, num_heads=3), (10,)),
    ("MultiHeadLinearLayer", dict(in_features=10, out_features=4, num_heads=2, bias=False,
                                  dropout_rate=0.4), (10,)),
    ("MBConvLayer", dict(in_channels=8, out_channels=16), (8, H, H)),
    ("MBConvLayer", dict(in_channels=8, out_channels=8, expand_ratio=1), (8, H, H)),
    ("MBConvLayer", dict(in_channels=8, out_channels=12, kernel_size=5, stride=2, expand_ratio=4,
                         act_func="h_swish", use_se=True), (8, H, H)),
    ("MBConvLayer", dict(in_channels=8, out_channels=16, kernel_size=7, expand_ratio=3,
                         mid_channels=24, act_func="relu"), (8, H, H)),
    ("MBConvLayer", dict(in_channels=8, out_channels=8, expand_ratio=2, groups=4), (8, H, H)),
    ("MBConvLayer", dict(in_channels=6, out_channels=8, expand_ratio=2.5, groups=5), (6, H, H)),
    ("ResNetBottleneckBlock", dict(in_channels=16, out_channels=16), (16, H, H)),
    ("ResNetBottleneckBlock", dict(in_channels=8, out_channels=16, stride=2), (8, H, H)),
    ("ResNetBottleneckBlock", dict(in_channels=8, out_channels=16, stride=2, downsample_mode="conv",
                                   kernel_size=5, expand_ratio=0.5), (8, H, H)),
    ("ResNetBottleneckBlock", dict(in_channels=16, out_channels=24, groups=2, mid_channels=12),
     (16, H, H)),
    ("ResNetBottleneckBlock", dict(in_channels=16, out_channels=16, stride=2, act_func="h_swish"),
     (16, H, H)),
]
IDS = [f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("cls_name,kwargs,shape", CASES, ids=IDS)
def test_same_config_state_dict_and_module_str(cls_name, kwargs, shape):
    theirs, ours = twins(cls_name, kwargs)
    # same keys, shapes and (same seed, same creation order) the same initial values
    assert_same_state(ours, theirs)
    assert ours.config == theirs.config
    assert ours.module_str == theirs.module_str
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    # config round trips: ours -> OFA's builder -> ours, and OFA's -> ours
    back = ofa_layers.set_layer_from_config(copy.deepcopy(ours.config))
    assert type(back) is type(theirs) and back.config == theirs.config
    again = L.set_layer_from_config(back.config)
    assert type(again) is type(ours) and again.config == ours.config
    assert_same_state(again, ours, values=False)
    # class-level build_from_config, with or without the "name"
    cfg = ours.config
    assert getattr(L, cls_name).build_from_config(cfg).config == cfg
    assert getattr(L, cls_name).build_from_config({k: v for k, v in cfg.items() if k != "name"}) \
        .config == cfg


@pytest.mark.parametrize("cls_name,kwargs,shape", CASES, ids=IDS)
@pytest.mark.parametrize("batch", [N, 1])
def test_same_outputs_and_gradients(cls_name, kwargs, shape, batch):
    theirs, ours = twins(cls_name, kwargs, seed=3)
    perturb(theirs)
    theirs.double()
    ours.double()
    ours.load_state_dict(theirs.state_dict())  # strict
    x = torch.randn(batch, *shape, dtype=torch.float64)
    uses_bn1d = any(isinstance(m, nn.BatchNorm1d) for m in theirs.modules())
    for train in (False, True):
        if train and batch == 1 and uses_bn1d:
            continue  # BatchNorm1d cannot train on one sample (both packages raise)
        assert_same_run_or_error(ours, theirs, x, train)
    # and back: OFA loads ours
    fresh = getattr(ofa_layers, cls_name)(**kwargs).double()
    fresh.load_state_dict(ours.state_dict())
    assert_same_state(fresh, ours)


def test_residual_block():
    torch.manual_seed(0)
    mb = dict(name="MBConvLayer", in_channels=8, out_channels=8, kernel_size=3, stride=1,
              expand_ratio=3, mid_channels=None, act_func="relu6", use_se=True, groups=None)
    ident = dict(name="IdentityLayer", in_channels=8, out_channels=8, use_bn=False, act_func=None,
                 dropout_rate=0, ops_order="weight_bn_act")
    zero = {"name": "ZeroLayer"}
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    for conv, shortcut in [(mb, ident), (mb, None), (None, ident), (zero, ident), (mb, zero)]:
        cfg = {"name": "ResidualBlock", "conv": conv, "shortcut": shortcut}
        torch.manual_seed(5)
        theirs = ofa_layers.set_layer_from_config(copy.deepcopy(cfg))
        torch.manual_seed(5)
        ours = L.set_layer_from_config(cfg)
        assert cfg == {"name": "ResidualBlock", "conv": conv, "shortcut": shortcut}, "config mutated"
        assert ours.config == theirs.config == cfg
        assert ours.module_str == theirs.module_str
        assert_same_state(ours, theirs)
        assert ours.mobile_inverted_conv is ours.conv
        perturb(theirs)
        theirs.double()
        ours.double().load_state_dict(theirs.state_dict())
        if conv is None:  # nothing to differentiate
            assert torch.equal(ours(x), theirs(x))
            continue
        for train in (False, True):
            assert_same_run(run(ours, x, train), run(theirs, x, train))
    # OFA's older key for the conv
    old = {"name": "ResidualBlock", "mobile_inverted_conv": mb, "shortcut": None}
    assert L.set_layer_from_config(old).config == {"name": "ResidualBlock", "conv": mb,
                                                   "shortcut": None}


def test_old_layer_name_and_errors():
    cfg = dict(name="MBInvertedConvLayer", in_channels=8, out_channels=8, expand_ratio=2)
    layer = L.set_layer_from_config(cfg)
    assert isinstance(layer, L.MBConvLayer) and layer.config["name"] == "MBConvLayer"
    assert L.set_layer_from_config(None) is None
    with pytest.raises(ValueError, match=r"unknown layer name 'FooLayer'; known: \["):
        L.set_layer_from_config({"name": "FooLayer"})
    with pytest.raises(ValueError, match=r"not a layer config"):
        L.set_layer_from_config({"in_channels": 3})
    with pytest.raises(ValueError, match=r"config name 'LinearLayer' is not 'ConvLayer'"):
        L.ConvLayer.build_from_config({"name": "LinearLayer", "in_channels": 3, "out_channels": 3})
    with pytest.raises(ValueError, match=r"ZeroLayer has no forward"):
        L.ZeroLayer()(torch.zeros(1))


@pytest.mark.parametrize("make,match", [
    (lambda: L.ConvLayer(0, 8), r"in_channels = 0"),
    (lambda: L.ConvLayer(8, 8, kernel_size=4), r"kernel_size = 4"),
    (lambda: L.ConvLayer(8, 8, stride=0), r"stride = 0"),
    (lambda: L.ConvLayer(8, 8, act_func="gelu"), r"act_func = 'gelu' is not supported; use one of"),
    (lambda: L.ConvLayer(8, 8, ops_order="weight_act"), r"ops_order = 'weight_act'"),
    (lambda: L.ConvLayer(8, 8, dropout_rate=1.0), r"dropout_rate = 1.0"),
    (lambda: L.ConvLayer(8, 6, groups=4), r"out_channels = 6 is not divisible by groups = 4"),
    (lambda: L.LinearLayer(8, 0), r"out_features = 0"),
    (lambda: L.MultiHeadLinearLayer(8, 4, num_heads=0), r"num_heads = 0"),
    (lambda: L.MBConvLayer(8, 8, expand_ratio=0), r"expand_ratio = 0"),
    (lambda: L.MBConvLayer(8, 8, kernel_size=2), r"kernel_size = 2"),
    (lambda: L.ResNetBottleneckBlock(8, 16, stride=2, downsample_mode="pool"),
     r"downsample_mode = 'pool' is not one of \['avgpool_conv', 'conv'\]"),
    (lambda: L.ResNetBottleneckBlock(8, 16, groups=3), r"not divisible by groups = 3"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- utils


def test_number_helpers_match_ofa():
    for divisor in (1, 4, 8, 16):
        for min_val in (None, 1, 16):
            for v in [0.5 * i for i in range(0, 200)] + [13.7, 99.99, 1000.4]:
                assert U.make_divisible(v, divisor, min_val) == \
                    ofa_utils.make_divisible(v, divisor, min_val), (v, divisor, min_val)
    for n1 in range(1, 40):
        for v1 in range(1, 45):
            assert U.min_divisible_value(n1, v1) == ofa_utils.min_divisible_value(n1, v1)
    for k in (1, 3, 5, 7, 9):
        assert U.get_same_padding(k) == ofa_utils.get_same_padding(k)
        for s in range(1, k + 1, 2):
            assert U.sub_filter_start_end(k, s) == ofa_utils.sub_filter_start_end(k, s)
    assert U.get_same_padding((3, 5)) == ofa_utils.get_same_padding((3, 5)) == (1, 2)
    for v in (3, [3, 5], (3, 5), 0.25, None):
        assert U.val2list(v) == ofa_utils.val2list(v)
        assert U.val2list(v, 3) == ofa_utils.val2list(v, 3)
    lst = [1, 2]
    assert U.val2list(lst) is lst
    assert U.MyNetwork.CHANNEL_DIVISIBLE == ofa_utils.MyNetwork.CHANNEL_DIVISIBLE == 8
    assert U.SEModule.REDUCTION == ofa_utils.SEModule.REDUCTION == 4


@pytest.mark.parametrize("call,match", [
    (lambda: U.get_same_padding(4), r"kernel_size = 4"),
    (lambda: U.get_same_padding((3, 5, 7)), r"kernel_size = \(3, 5, 7\)"),
    (lambda: U.sub_filter_start_end(5, 7), r"sub_kernel_size = 7"),
    (lambda: U.sub_filter_start_end(5, 2), r"sub_kernel_size = 2"),
    (lambda: U.min_divisible_value(8, 0), r"v1 = 0"),
    (lambda: U.make_divisible(10, 0), r"divisor = 0"),
    (lambda: U.build_activation("swish"), r"act_func = 'swish' is not supported; use one of "
                                          r"\['relu', 'relu6', 'tanh', 'sigmoid', 'h_swish'"),
    (lambda: U.ShuffleLayer(0), r"groups = 0"),
    (lambda: U.ShuffleLayer(3)(torch.zeros(1, 4, 2, 2)), r"4 input channels are not divisible"),
    (lambda: U.SEModule(0), r"channel = 0"),
])
def test_helper_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("act", ["relu", "relu6", "tanh", "sigmoid", "h_swish", "h_sigmoid", None,
                                 "none"])
def test_build_activation_matches_ofa(act):
    for inplace in (True, False):
        ours, theirs = U.build_activation(act, inplace), ofa_utils.build_activation(act, inplace)
        if theirs is None:
            assert ours is None
            continue
        assert type(ours).__name__ == type(theirs).__name__ and repr(ours) == repr(theirs)
        assert getattr(ours, "inplace", None) == getattr(theirs, "inplace", None)
        x = torch.linspace(-5, 5, 41, dtype=torch.float64)
        assert torch.equal(ours(x.clone()), theirs(x.clone()))


def test_modules_match_ofa():
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64)
    for channel, reduction in [(12, None), (32, 2), (40, 8)]:
        torch.manual_seed(0)
        theirs = ofa_utils.SEModule(channel, reduction).double()
        torch.manual_seed(0)
        ours = U.SEModule(channel, reduction).double()
        assert_same_state(ours, theirs)
        assert repr(ours) == repr(theirs) and ours.reduction == theirs.reduction
        xc = torch.randn(2, channel, 5, 5, dtype=torch.float64)
        assert_same_run(run(ours, xc, True), run(theirs, xc, True))
    for groups in (1, 2, 3, 4):
        assert torch.equal(U.ShuffleLayer(groups)(x), ofa_utils.ShuffleLayer(groups)(x))
        assert repr(U.ShuffleLayer(groups)) == repr(ofa_utils.ShuffleLayer(groups))
    for keep in (True, False):
        assert torch.equal(U.MyGlobalAvgPool2d(keep)(x), ofa_utils.MyGlobalAvgPool2d(keep)(x))
        assert repr(U.MyGlobalAvgPool2d(keep)) == repr(ofa_utils.MyGlobalAvgPool2d(keep))
    assert repr(U.Hswish()) == repr(ofa_utils.Hswish())
    assert repr(U.Hsigmoid()) == repr(ofa_utils.Hsigmoid())


def _bn(cls, n, seed):
    return perturb(cls(n), seed)


def test_copy_bn_and_adjust_bn_match_ofa():
    for cls in (nn.BatchNorm2d, nn.BatchNorm1d, lambda n: nn.GroupNorm(4, n)):
        src = _bn(cls, 16, 1)
        for dst_n in (16, 8):
            a, b = _bn(cls, dst_n, 2), _bn(cls, dst_n, 2)
            U.copy_bn(a, src)
            ofa_dyn_layers.copy_bn(b, src)
            assert_same_state(a, b)
        idx = torch.randperm(16)
        a, b = copy.deepcopy(src), copy.deepcopy(src)
        weight = a.weight
        U.adjust_bn_according_to_idx(a, idx)
        ofa_dyn_layers.adjust_bn_according_to_idx(b, idx)
        assert_same_state(a, b)
        assert a.weight is weight
    with pytest.raises(ValueError, match=r"target has 16 channels, more than the source's 8"):
        U.copy_bn(nn.BatchNorm2d(16), nn.BatchNorm2d(8))


def _fill(net):
    net.conv = nn.Conv2d(4, 8, 3, bias=False)
    net.bn = nn.BatchNorm2d(8)
    net.classifier = nn.Linear(8, 2)
    net.bn1d = nn.BatchNorm1d(2)


class _OfaNet(ofa_utils.MyNetwork):
    def __init__(self):
        super().__init__()
        _fill(self)


class _OurNet(U.MyNetwork):
    def __init__(self):
        super().__init__()
        _fill(self)


def test_my_network_helpers_match_ofa():
    ours, theirs = _OurNet(), _OfaNet()
    ours.classifier.bias.requires_grad_(False)
    theirs.classifier.bias.requires_grad_(False)
    for keys, mode in [(None, "include"), (["bn"], "include"), (["bn", "bias"], "exclude")]:
        names_ours = [id(p) for p in ours.get_parameters(keys, mode)]
        names_theirs = [id(p) for p in theirs.get_parameters(keys, mode)]
        assert len(names_ours) == len(names_theirs)
        pos = {id(p): i for i, p in enumerate(ours.parameters())}
        pos_t = {id(p): i for i, p in enumerate(theirs.parameters())}
        assert [pos[i] for i in names_ours] == [pos_t[i] for i in names_theirs]
    assert len(list(ours.weight_parameters())) == len(list(theirs.weight_parameters()))
    with pytest.raises(ValueError, match=r"mode = 'both'"):
        list(ours.get_parameters(["bn"], "both"))
    ours.set_bn_param(0.01, 1e-3)
    theirs.set_bn_param(0.01, 1e-3)
    assert ours.get_bn_param() == theirs.get_bn_param() == {"momentum": 0.01, "eps": 1e-3,
                                                            "ws_eps": None}
    assert (ours.bn.momentum, ours.bn1d.eps) == (0.01, 1e-3)
    ours.set_bn_param(0.1, 1e-5, gn_channel_per_group=4)
    theirs.set_bn_param(0.1, 1e-5, gn_channel_per_group=4)
    assert isinstance(ours.bn, nn.GroupNorm) and ours.bn.num_groups == 2
    assert ours.get_bn_param() == theirs.get_bn_param()
    assert_same_state(ours, theirs, values=False)
    with pytest.raises(NotImplementedError, match=r"ws_eps"):
        ours.set_bn_param(0.1, 1e-5, ws_eps=1e-5)
    assert U.get_bn_param(nn.Linear(2, 2)) is None
    with pytest.raises(NotImplementedError):
        ours.zero_last_gamma()


@pytest.mark.parametrize("model_init", ["he_fout", "he_fin"])
def test_init_models_matches_ofa(model_init):
    """OFA's initialisation, draw for draw: the same weights after the same seed, BN and
    biases reset, on a module and on a list of modules."""
    pairs = [(_OurNet(), _OfaNet()), (_OurNet(), _OfaNet())]
    for ours, theirs in pairs:
        theirs.load_state_dict(ours.state_dict())
        for net in (ours, theirs):  # values init_models must reset
            nn.init.constant_(net.bn.weight, 3.0)
            nn.init.constant_(net.classifier.bias, 5.0)
    torch.manual_seed(7)
    U.init_models(pairs[0][0], model_init)
    U.init_models([pairs[1][0]], model_init)
    torch.manual_seed(7)
    ofa_utils.init_models(pairs[0][1], model_init)
    ofa_utils.init_models([pairs[1][1]], model_init)
    for ours, theirs in pairs:
        assert_same_state(ours, theirs)
        assert torch.equal(ours.bn.weight, torch.ones(8))
        assert torch.equal(ours.classifier.bias, torch.zeros(2))
    fan = 8 if model_init == "he_fout" else 4  # Conv2d(4, 8, 3)
    std = pairs[0][0].conv.weight.std().item()
    assert abs(std / math.sqrt(2.0 / (9 * fan)) - 1) < 0.2
    assert not torch.equal(pairs[0][0].conv.weight, pairs[1][0].conv.weight)
    with pytest.raises(ValueError, match=r"model_init = 'xavier'; allowed: 'he_fout', 'he_fin'"):
        U.init_models(_OurNet(), "xavier")
    with pytest.raises(TypeError, match=r"got str"):
        U.init_models("net")


def test_make_divisible_is_ofa_rounding():
    # OFA's rounding, not math.ceil: 20 -> 24, 12 -> 16 (within 10%), 36 -> 40
    assert [U.make_divisible(v, 8) for v in (20, 12, 36, 3, 100)] == [24, 16, 40, 8, 104]
    assert U.make_divisible(round(16 * 0.25), 8) == 8 and not math.isnan(U.make_divisible(7.5, 8))

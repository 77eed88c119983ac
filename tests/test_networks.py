"""ofa_fast.networks against OFA's own networks (the `ofa` package).

Supernets (OFAMobileNetV3 at width 1.0 and 1.2, OFAProxylessNASNets at 1.3, OFAResNets)
built with the same arguments after the same seed start with the same weights; OFA's
(perturbed) state_dict then loads into ours (strict). Over the max, min and random
subnets (the same config set in both), train and eval mode, batch 1 and 2: same
logits, input gradient, gradient of every parameter and running statistics; same
module_str and get_active_net_config; get_active_subnet gives our static network,
equal to OFA's extracted subnet (config, state_dict) and computing what the
supernet's active forward computes. Also: configs round-trip between the packages,
OFA checkpoints (and OFA's old key names) load, bad configurations raise ValueError
before changing anything, MACs / parameter counts equal OFA's counters, and all 50
specialized nets of OFA's model zoo build from their net.config and match OFA's.

Threads: the module runs with one torch thread. PyTorch's CPU grouped (depthwise)
convolution in float64 runs one small convolution per group inside a parallel region;
with two threads on a loaded 2-core machine that takes seconds per layer (1000x the
single-thread time), and OFA's modules (the oracle) use it.
"""
import contextlib
import copy
import glob
import json
import os
import random
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

import ofa_fast  # noqa: F401
from ofa_fast import networks as N
from ofa_fast.networks import counting

ofa_nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks",
                               reason="the `ofa` package is the parity oracle")
ofa_static = pytest.importorskip("ofa.imagenet_classification.networks")
ofa_utils = pytest.importorskip("ofa.utils")

TOL = dict(rtol=1e-8, atol=1e-8)  # float64: ofa_fast's kernels sum in another order
# OFA's model-zoo data (net configs of its 50 specialized networks), beside the repository
ZOO = os.environ.get("OFA_FAST_ZOO", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "shared", "ofa_zoo"))
ZOO_CONFIGS = sorted(glob.glob(os.path.join(ZOO, "specialized", "*", "net.config")))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- helpers

MB_SPACE = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
SUPERNETS = {
    "mbv3_w1.0": ("OFAMobileNetV3", dict(n_classes=10, dropout_rate=0, width_mult=1.0, **MB_SPACE)),
    "mbv3_w1.2": ("OFAMobileNetV3", dict(n_classes=10, dropout_rate=0, width_mult=1.2, **MB_SPACE)),
    "proxyless_w1.3": ("OFAProxylessNASNets", dict(n_classes=10, dropout_rate=0, width_mult=1.3,
                                                   **MB_SPACE)),
    "resnets": ("OFAResNets", dict(n_classes=10, dropout_rate=0, depth_list=[0, 1, 2],
                                   expand_ratio_list=[0.2, 0.25, 0.35],
                                   width_mult_list=[0.65, 0.8, 1.0])),
}
KINDS = list(SUPERNETS)
H = 40  # the last stage still has 2x2 pixels (batch-1 training BN works): 40 -> .. -> 3 -> 2


def perturb(net, seed=1):
    """As after training: non-trivial BN statistics and affine parameters, and kernel
    transform matrices away from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("_matrix"):
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(3)
    return net


def assert_same_state(a, b, exact=True):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for n in sa:
        assert sa[n].shape == sb[n].shape, n
        if exact:
            assert torch.equal(sa[n].to(sb[n].dtype), sb[n]), n
        else:  # (float32 entries: OFA's subnet copies)
            tol = TOL if sb[n].dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(sa[n].to(sb[n].dtype), sb[n], **tol,
                                       msg=lambda m: f"{n}: {m}")


def build_twins(kind):
    """(OFA's supernet, ours): same initial weights; OFA's perturbed, in float64, and
    loaded into ours."""
    cls_name, kwargs = SUPERNETS[kind]
    torch.manual_seed(0)
    theirs = getattr(ofa_nets, cls_name)(**copy.deepcopy(kwargs))
    torch.manual_seed(0)
    ours = getattr(N, cls_name)(**copy.deepcopy(kwargs))
    assert_same_state(ours, theirs)  # one seed, the same initial weights
    perturb(theirs).double()
    ours.double()
    result = ours.load_state_dict(theirs.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_state(ours, theirs)
    return theirs, ours


_CACHE = {}


def twins(kind):
    """Fresh deep copies of the (cached) twins."""
    if kind not in _CACHE:
        _CACHE[kind] = build_twins(kind)
    return tuple(copy.deepcopy(net) for net in _CACHE[kind])


def ours_only(kind):
    if kind not in _CACHE:
        _CACHE[kind] = build_twins(kind)
    return copy.deepcopy(_CACHE[kind][1])


def run(net, x, train):
    net.train(train)
    net.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = net(x)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads, {n: b.clone() for n, b in net.named_buffers()}


def assert_scaled_close(actual, expected, what, tol=1e-8):
    """max|actual - expected| <= tol * max(max|expected|, 1e-3): batch norm over the few
    pixels of the last stages (batch 1 in training) amplifies rounding differences
    elementwise, not at the tensor's scale; gradients that are zero in exact math
    (a BN bias before another training-mode BN) come out as rounding noise."""
    assert actual.shape == expected.shape, what
    if not actual.numel():
        return
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs().max().item()
    scale = max(expected.abs().max().item(), 1e-3)
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x max|expected| {scale:.3g}"


def assert_same_run(a, b):
    (ya, gxa, gpa, ba), (yb, gxb, gpb, bb) = a, b
    assert_scaled_close(ya, yb, "logits")
    assert_scaled_close(gxa, gxb, "input gradient")
    assert gpa.keys() == gpb.keys()
    for n in gpa:
        assert_scaled_close(gpa[n], gpb[n], f"gradient of {n}")
    assert ba.keys() == bb.keys()
    for n in ba:
        assert_scaled_close(ba[n], bb[n], n)


def ofa_active_net_config(net):
    """OFA's get_active_net_config, with OFAResNets' stray IdentityLayer module (where
    a config belongs) replaced by its config."""
    cfg = net.get_active_net_config()
    for layer in cfg.get("input_stem", []):
        if isinstance(layer.get("shortcut"), nn.Module):
            layer["shortcut"] = layer["shortcut"].config
    return cfg


def max_min_settings(net):
    if isinstance(net, N.OFAResNets):
        return [dict(d=max(net.depth_list), e=max(net.expand_ratio_list), w=2),
                dict(d=min(net.depth_list), e=min(net.expand_ratio_list), w=0)]
    return [dict(ks=7, e=6, d=4), dict(ks=3, e=3, d=2)]


def ofa_count(net, image_size):
    """OFA's MAC counter (a batch-1 float32 forward with hooks, on a copy)."""
    return ofa_utils.count_net_flops(net, (1, 3, image_size, image_size))


def assert_counts(ours_macs, ofa_macs):
    # OFA sums in float32: exact below 2**24, rounded above
    if ofa_macs < 2 ** 24:
        assert ours_macs == ofa_macs
    else:
        assert abs(ours_macs - ofa_macs) <= 1e-6 * ofa_macs


# ----------------------------------------------------------------------------- supernets


@pytest.mark.parametrize("kind", KINDS)
def test_supernet_structure_matches_ofa(kind):
    theirs, ours = twins(kind)
    assert ours.config == theirs.config
    assert ours.module_str == theirs.module_str
    assert ours.name() == theirs.name()
    assert ours.get_bn_param() == theirs.get_bn_param()
    assert ours.grouped_block_index == theirs.grouped_block_index
    assert ours.runtime_depth == theirs.runtime_depth
    for attr in ("ks_list", "expand_ratio_list", "depth_list", "width_mult_list", "width_mult",
                 "block_group_info", "input_stem_skipping"):
        assert getattr(ours, attr, None) == getattr(theirs, attr, None), attr
    assert [type(m).__name__ for m in ours.modules()] == [type(m).__name__ for m in theirs.modules()]
    with pytest.raises(ValueError, match="cannot be built from a config"):
        type(ours).build_from_config(ours.config)
    # OFA's zero_last_gamma and bn params, applied alike
    ours.zero_last_gamma()
    theirs.zero_last_gamma()
    ours.set_bn_param(momentum=0.05, eps=1e-4)
    theirs.set_bn_param(momentum=0.05, eps=1e-4)
    assert_same_state(ours, theirs)
    assert ours.get_bn_param() == theirs.get_bn_param()


@pytest.mark.parametrize("kind", KINDS)
def test_supernet_subnets_match_ofa(kind):
    theirs, ours = twins(kind)
    x = torch.randn(2, 3, H, H, dtype=torch.float64)
    rng = random.Random(kind)
    settings = max_min_settings(ours) + ["random"] * (2 if kind == "mbv3_w1.0" else 1)
    for i, setting in enumerate(settings):
        if setting == "random":
            seed = rng.random()
            random.seed(seed)
            setting = theirs.sample_active_subnet()
            random.seed(seed)
            assert ours.sample_active_subnet() == setting  # the same draws as OFA's
        else:
            theirs.set_active_subnet(**setting)
            ours.set_active_subnet(**setting)
        assert ours.module_str == theirs.module_str
        assert ours.runtime_depth == theirs.runtime_depth
        net_config = ours.get_active_net_config()
        assert net_config == ofa_active_net_config(theirs)
        batch = 1 + i % 2
        for train in (True, False):
            assert_same_run(run(ours, x[:batch], train), run(theirs, x[:batch], train))
        check_active_subnet(theirs, ours, x[:batch], without_weights=i == 0)
    # the net config builds the subnet (block configs gain MBConvLayer's "groups": None)
    built = type(ours).__mro__[2].build_from_config(net_config) if kind != "resnets" else \
        N.ResNets.build_from_config(net_config)
    sub = ours.get_active_subnet()
    assert built.config == sub.config and list(built.state_dict()) == list(sub.state_dict())


@contextlib.contextmanager
def kept_buffers(net):
    """Restores the running statistics a training-mode forward moves."""
    saved = [b.clone() for b in net.buffers()]
    try:
        yield net
    finally:
        with torch.no_grad():
            for b, v in zip(net.buffers(), saved):
                b.copy_(v)


def check_active_subnet(theirs, ours, x, without_weights=False):
    """get_active_subnet: our static class; the config and weights of OFA's subnet;
    the supernet's output; MACs and parameters as OFA's counters count them."""
    sub = ours.get_active_subnet(preserve_weight=True)
    assert type(sub) is getattr(N, type(theirs).__mro__[1].__name__)
    sub_t = theirs.get_active_subnet(preserve_weight=True)
    assert sub.config == sub_t.config
    assert sub.module_str == sub_t.module_str
    # OFA copies into float32 layers (its subnet of a float64 supernet is partly
    # float32); ours keeps the dtype. (The supernets' running statistics went through
    # different kernels: equal to rounding.)
    assert all(p.dtype == torch.float64 for p in sub.parameters())
    assert_same_state(sub, sub_t, exact=False)
    with kept_buffers(ours):
        for train in (False, True):
            assert_scaled_close(sub.train(train)(x), ours.train(train)(x), f"subnet, train={train}")
    if without_weights:
        bare = ours.get_active_subnet(preserve_weight=False)
        assert bare.config == sub.config and list(bare.state_dict()) == list(sub.state_dict())
    # MACs and parameters: OFA's counters on OFA's extracted subnet
    size = x.shape[-1]
    assert_counts(ours.active_macs(size), ofa_count(sub_t.float(), size))
    assert ours.active_params() == ofa_utils.count_parameters(sub_t) == ofa_utils.count_parameters(sub)


def test_active_macs_at_224():
    _, ours = twins("mbv3_w1.2")
    random.seed(3)
    ours.sample_active_subnet()
    sub = ours.get_active_subnet()
    assert_counts(ours.active_macs(224), ofa_count(sub.float(), 224))
    assert ours.active_macs((224, 160)) == counting.net_config_macs(sub.config, (224, 160))


@pytest.mark.parametrize("kind", KINDS)
def test_re_organize_middle_weights_matches_ofa(kind):
    theirs, ours = twins(kind)
    last = len(ours.expand_ratio_list) - 1
    for stage in ((last,) if kind == "resnets" else (0, last)):  # (resnets: slow to copy)
        t, o = copy.deepcopy(theirs), copy.deepcopy(ours)
        t.re_organize_middle_weights(expand_ratio_stage=stage)
        o.re_organize_middle_weights(expand_ratio_stage=stage)
        assert_same_state(o, t)
    with pytest.raises(ValueError, match="expand_ratio_stage = 7"):
        ours.re_organize_middle_weights(expand_ratio_stage=7)


def _old_keys(state_dict, resnets):
    """The state_dict as older OFA versions saved it: the dynamic ops' inner modules
    unnamed (`.bn.bn.` -> `.bn.`, `.conv.conv.weight` -> `.conv.weight`, `.linear.linear.`
    -> `.linear.`) and MBConv blocks under `mobile_inverted_conv`."""
    old = {}
    for key, value in state_dict.items():
        key = key.replace(".bn.bn.", ".bn.").replace(".conv.conv.weight", ".conv.weight")
        key = key.replace(".linear.linear.", ".linear.")
        if not resnets:
            key = re.sub(r"^blocks\.(\d+)\.conv\.", r"blocks.\1.mobile_inverted_conv.", key)
        old[key] = value
    return old


def blank(net):
    """net with every parameter and buffer zeroed (what a load must then fill in)."""
    with torch.no_grad():
        for t in net.state_dict().values():
            t.zero_()
    return net


@pytest.mark.parametrize("kind", ["mbv3_w1.0", "resnets"])
def test_loads_ofa_checkpoints(kind, tmp_path):
    theirs, ours = twins(kind)
    if kind != "resnets":  # a checkpoint file as OFA's training writes it
        path = tmp_path / "checkpoint.pth.tar"
        torch.save({"state_dict": theirs.state_dict()}, path)
        blank(ours).load_state_dict(torch.load(path, map_location="cpu")["state_dict"])
        assert_same_state(ours, theirs)

    # older key names: OFA renames them on load, and so do we
    old = _old_keys(theirs.state_dict(), kind == "resnets")
    assert set(old) != set(theirs.state_dict())
    theirs_again = blank(copy.deepcopy(theirs))
    theirs_again.load_state_dict(old)
    assert_same_state(theirs_again, theirs)
    result = blank(ours).load_state_dict(old)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_state(ours, theirs)

    # entries the checkpoint lacks keep their values, as in OFA (a kernel-size-7
    # checkpoint has no kernel-transform matrices); an unknown key raises
    drop = "_matrix" if kind != "resnets" else "classifier."
    partial = {k: v for k, v in theirs.state_dict().items() if drop not in k}
    dropped = sorted(set(theirs.state_dict()) - set(partial))
    result = blank(ours).load_state_dict(partial)
    assert sorted(result.missing_keys) == dropped and not result.unexpected_keys
    for k in dropped:
        assert not ours.state_dict()[k].any()
    with pytest.raises(ValueError, match=r"match no entry of the model.*'head\.weight'"):
        ours.load_state_dict({**partial, "head.weight": torch.zeros(1)})
    result = ours.load_state_dict({**partial, "head.weight": torch.zeros(1)}, strict=False)
    assert result.unexpected_keys == ["head.weight"]


def test_static_subnet_loads_old_block_keys():
    _, ours = twins("proxyless_w1.3")
    ours.set_active_subnet(ks=5, e=4, d=3)
    sub = ours.get_active_subnet()
    old = {re.sub(r"^blocks\.(\d+)\.conv\.", r"blocks.\1.mobile_inverted_conv.", k): v
           for k, v in sub.state_dict().items()}
    theirs = ofa_static.ProxylessNASNets.build_from_config(copy.deepcopy(sub.config)).double()
    theirs.load_state_dict(old)
    fresh = N.ProxylessNASNets.build_from_config(sub.config).double()
    fresh.load_state_dict(old)
    assert_same_state(fresh, sub)
    assert_same_state(fresh, theirs)


# ----------------------------------------------------------------------------- checks


def _snapshot(net):
    state = (net.module_str, copy.deepcopy(net.runtime_depth),
             getattr(net, "input_stem_skipping", None))
    return state, net.get_active_net_config()


@pytest.mark.parametrize("kind,kwargs,match", [
    ("mbv3_w1.0", dict(ks=4), r"ks=4 is not in ks_list \[3, 5, 7\]"),
    ("mbv3_w1.0", dict(e=5), r"e=5 is not in expand_ratio_list \[3, 4, 6\]"),
    ("mbv3_w1.0", dict(d=5), r"d=5 is not in depth_list \[2, 3, 4\]"),
    ("mbv3_w1.0", dict(d=1), r"d=1 is not in depth_list \[2, 3, 4\]"),
    ("mbv3_w1.0", dict(ks=[3] * 19 + [9]), r"ks\[19\]=9 is not in ks_list \[3, 5, 7\]"),
    ("mbv3_w1.0", dict(ks=[3] * 19), r"ks has 19 entries; it must have 20 \(one per elastic block"),
    ("mbv3_w1.0", dict(e=[3] * 21), r"e has 21 entries; it must have 20"),
    ("mbv3_w1.0", dict(d=[2, 3]), r"d has 2 entries; it must have 5 \(one per stage\)"),
    ("mbv3_w1.0", dict(ks=7, e=6, d="4"), r"d='4' is not in depth_list"),
    ("mbv3_w1.0", dict(ks=True), r"ks=True is not in ks_list"),
    ("mbv3_w1.0", dict(ks=3.0), r"ks=3.0 is not in ks_list"),
    ("mbv3_w1.0", dict(d=[2.0, 2, 2, 2, 2]), r"d\[0\]=2.0 is not in depth_list"),
    ("proxyless_w1.3", dict(d=[2, 2, 2, 2, 2, 5]),
     r"d\[5\]=5 is not in \[1, 2, 3, 4\] \(depth_list \[2, 3, 4\]\)"),
    ("proxyless_w1.3", dict(ks=[3, 5]), r"ks has 2 entries; it must have 21"),
    ("resnets", dict(d=3), r"d=3 is not in depth_list \[0, 1, 2\]"),
    ("resnets", dict(e=0.3), r"e=0.3 is not in expand_ratio_list \[0.2, 0.25, 0.35\]"),
    ("resnets", dict(w=3), r"w=3 is not in the indices of width_mult_list \[0.65, 0.8, 1.0\]"),
    ("resnets", dict(w=1.0), r"w=1.0 is not in the indices"),
    ("resnets", dict(w=[0, 1, 2, 0, 1]), r"w has 5 entries; it must have 6"),
    ("resnets", dict(d=[0, 1, 2, 0, 2], e=[0.2] * 17), r"e has 17 entries; it must have 18"),
])
def test_set_active_subnet_rejects_bad_values_before_changing_anything(kind, kwargs, match):
    ours = ours_only(kind)
    random.seed(0)
    ours.sample_active_subnet()
    before = _snapshot(ours)
    with pytest.raises(ValueError, match=match):
        ours.set_active_subnet(**kwargs)
    assert _snapshot(ours) == before


def test_set_active_subnet_argument_forms():
    _, ours = twins("proxyless_w1.3")
    theirs, _ = twins("proxyless_w1.3")
    n = len(ours.blocks) - 1
    forms = [
        dict(ks=5, e=4, d=3),  # one value for all
        dict(ks=tuple([3, 5, 7] * 7), e=[6] * n, d=[4, 3, 2, 4, 3, 1]),  # sequences
        dict(ks=[None] * (n - 1) + [3], d=[None, 2, None, None, None, None]),  # None keeps
        dict(e=3.0, r=160, wid=None),  # other keys ignored, as OFA's
        dict(d=4),  # the single-block last stage runs its block (OFA's min)
        dict(ks=np.full(n, 5), e=np.float64(4), d=np.array([2, 3, 4, 2, 3, 1])),  # numpy
    ]
    for form in forms:
        ours.set_active_subnet(**copy.deepcopy(form))
        theirs.set_active_subnet(**copy.deepcopy(form))
        assert ours.module_str == theirs.module_str and ours.runtime_depth == theirs.runtime_depth
    ours.set_max_net()
    theirs.set_max_net()
    assert ours.get_active_net_config() == theirs.get_active_net_config()


def test_resnets_argument_forms():
    theirs, ours = twins("resnets")
    forms = [dict(d=1, e=0.25, w=1), dict(d=[2, 0, 1, 2, 0], w=(2, 0, 1, 2, 0, 1)),
             dict(e=[None] * 17 + [0.35], w=[None] * 5 + [0]), dict(d=0, r=128)]
    for form in forms:
        ours.set_active_subnet(**copy.deepcopy(form))
        theirs.set_active_subnet(**copy.deepcopy(form))
        assert ours.module_str == theirs.module_str
        assert ours.get_active_net_config() == ofa_active_net_config(theirs)


def test_constraints_match_ofa():
    theirs, ours = twins("mbv3_w1.0")
    n = len(ours.blocks) - 1
    ks_per_block = [[3], [5, 7]] * (n // 2)
    for net in (theirs, ours):
        net.set_constraint([2, 4], constraint_type="depth")
        net.set_constraint([3, 6], constraint_type="expand_ratio")
        net.set_constraint(ks_per_block, constraint_type="kernel_size")
    for seed in range(3):
        random.seed(seed)
        a = theirs.sample_active_subnet()
        random.seed(seed)
        b = ours.sample_active_subnet()
        assert a == b
        assert set(b["d"]) <= {2, 4} and set(b["e"]) <= {3, 6}
        assert all(k in allowed for k, allowed in zip(b["ks"], ks_per_block))
    for net in (theirs, ours):
        net.clear_constraint()
    random.seed(9)
    a = theirs.sample_active_subnet()
    random.seed(9)
    assert ours.sample_active_subnet() == a

    with pytest.raises(ValueError, match=r"constraint_type = 'width' is not one of"):
        ours.set_constraint([1], constraint_type="width")
    with pytest.raises(ValueError, match=r"kernel_size 4 in include_list is not in ks_list"):
        ours.set_constraint([3, 4], constraint_type="kernel_size")
    with pytest.raises(ValueError, match=r"include_list has 2 lists; it must have 5"):
        ours.set_constraint([[2], [3]], constraint_type="depth")
    with pytest.raises(ValueError, match=r"non-empty list"):
        ours.set_constraint([], constraint_type="depth")


def test_proxyless_samples_one_block_in_last_stage():
    theirs, ours = twins("proxyless_w1.3")
    for seed in range(3):
        random.seed(seed)
        a = theirs.sample_active_subnet()
        random.seed(seed)
        assert ours.sample_active_subnet() == a and a["d"][-1] == 1


@pytest.mark.parametrize("make,match", [
    (lambda: N.OFAMobileNetV3(ks_list=[3, 4]),
     r"ks_list = \[3, 4\] is not allowed; it must be an odd int >= 1 or a non-empty list"),
    (lambda: N.OFAMobileNetV3(expand_ratio_list=[0, 3]), r"expand_ratio_list = \[0, 3\]"),
    (lambda: N.OFAMobileNetV3(depth_list=[0, 2]), r"depth_list = \[0, 2\]"),
    (lambda: N.OFAMobileNetV3(width_mult=0), r"width_mult = 0"),
    (lambda: N.OFAMobileNetV3(n_classes=0), r"n_classes = 0"),
    (lambda: N.OFAMobileNetV3(bn_param=0.1), r"bn_param = 0.1 must be a pair"),
    (lambda: N.OFAMobileNetV3(dropout_rate=1), r"dropout_rate = 1"),
    (lambda: N.OFAProxylessNASNets(base_stage_width="mobilenet"), r"base_stage_width = 'mobilenet'"),
    (lambda: N.OFAResNets(depth_list=[-1, 2]), r"depth_list = \[-1, 2\]"),
    (lambda: N.OFAResNets(width_mult_list=[0.5, "1"]), r"width_mult_list"),
    (lambda: N.MobileNetV3.build_from_config({"name": "OFAMobileNetV3"}),
     r"config name 'OFAMobileNetV3' is not 'MobileNetV3'"),
    (lambda: N.ResNets.build_from_config({"name": "ResNets", "blocks": []}),
     r"config lacks \['input_stem', 'classifier'\]"),
    (lambda: N.get_net_by_name("VGG"), r"unrecognized type of network 'VGG'"),
    (lambda: counting.net_config_macs({"name": "OFAResNets"}), r"not a static network"),
    (lambda: counting.net_config_macs({"name": "ResNets"}, image_size=0), r"image_size = 0"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_search_space_lists_are_sorted_copies():
    ks = [7, 3, 5]
    net = N.OFAMobileNetV3(n_classes=10, ks_list=ks, expand_ratio_list=6, depth_list=[4, 2])
    assert net.ks_list == [3, 5, 7] and ks == [7, 3, 5]  # OFA sorts the caller's list in place
    assert net.expand_ratio_list == [6] and net.depth_list == [2, 4]
    assert net.blocks[1].conv.kernel_size_list == [3, 5, 7]


# ----------------------------------------------------------------------------- static networks


@pytest.mark.parametrize("kind", KINDS)
def test_static_config_round_trip(kind):
    theirs, ours = twins(kind)
    random.seed(11)
    ours.set_active_subnet(**theirs.sample_active_subnet())
    sub = ours.get_active_subnet()
    cfg = sub.config
    # the very weights of OFA's subnet (float32 where OFA's copies into float32 layers)
    assert_same_state(sub, theirs.get_active_subnet())
    # ours -> OFA's build_from_config (it pops names: give it a copy) -> back
    ofa_cls = getattr(ofa_static, cfg["name"])
    built_t = ofa_cls.build_from_config(copy.deepcopy(cfg)).double()
    assert built_t.config == cfg and built_t.module_str == sub.module_str
    built_t.load_state_dict(sub.state_dict())
    back = type(sub).build_from_config(built_t.config).double()
    assert back.config == cfg
    assert back.load_state_dict(built_t.state_dict()).missing_keys == []
    assert_same_state(back, sub)
    assert back.grouped_block_index == built_t.grouped_block_index
    x = torch.randn(1, 3, H, H, dtype=torch.float64)
    torch.testing.assert_close(back.eval()(x), built_t.eval()(x), **TOL)
    back.zero_last_gamma()
    built_t.zero_last_gamma()
    assert_same_state(back, built_t)
    assert N.get_net_by_name(cfg["name"]) is type(sub)
    assert counting.net_config_params(cfg) == ofa_utils.count_parameters(built_t)


@pytest.mark.parametrize("name,kwargs", [
    ("MobileNetV3Large", dict(n_classes=10, width_mult=1.2, ks=5, expand_ratio=4, depth_param=3)),
    ("MobileNetV3Large", dict(n_classes=10)),
    ("MobileNetV2", dict(n_classes=10, width_mult=1.4, ks=[3, 5] * 8 + [7])),
    ("ResNet50", dict(n_classes=10, width_mult=0.65, expand_ratio=0.35)),
    ("ResNet50D", dict(n_classes=10, width_mult=0.65, depth_param=0)),
])
def test_static_builders_match_ofa(name, kwargs):
    torch.manual_seed(0)
    theirs = getattr(ofa_static, name)(**copy.deepcopy(kwargs))
    torch.manual_seed(0)
    ours = getattr(N, name)(**copy.deepcopy(kwargs))
    assert ours.config == theirs.config
    assert ours.module_str == theirs.module_str
    assert ours.grouped_block_index == theirs.grouped_block_index
    assert_same_state(ours, theirs)
    ours.zero_last_gamma()
    theirs.zero_last_gamma()
    assert_same_state(ours, theirs)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-4, atol=1e-5)
    assert_counts(counting.net_config_macs(ours.config, 32), ofa_count(theirs, 32))
    assert counting.net_config_params(ours.config) == ofa_utils.count_parameters(theirs)


def test_proxyless_without_feature_mix_layer():
    net = N.MobileNetV2(n_classes=10)
    bare = N.ProxylessNASNets(net.first_conv, list(net.blocks), None,
                              ofa_fast.nn.LinearLayer(320, 10))
    assert "Identity" in bare.module_str  # (OFA's module_str fails here)
    assert bare.config["feature_mix_layer"] is None
    rebuilt = N.ProxylessNASNets.build_from_config(bare.config)
    assert rebuilt.feature_mix_layer is None
    assert rebuilt.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# ----------------------------------------------------------------------------- OFA's model zoo


def _zoo_id(path):
    return os.path.basename(os.path.dirname(path))


def test_zoo_has_fifty_specialized_configs():
    if not os.path.isdir(ZOO):
        pytest.skip(f"OFA's model-zoo data is not at {ZOO} (set OFA_FAST_ZOO)")
    assert len(ZOO_CONFIGS) == 50, f"expected OFA's 50 specialized net configs under {ZOO}"


@pytest.mark.parametrize("path", ZOO_CONFIGS, ids=_zoo_id)
def test_specialized_net_matches_ofa(path):
    with open(path) as f:
        cfg = json.load(f)
    ofa_cls = getattr(ofa_static, cfg["name"])
    ours_cls = N.get_net_by_name(cfg["name"])
    theirs = ofa_cls.build_from_config(copy.deepcopy(cfg))  # (OFA's pops the names)
    ours = ours_cls.build_from_config(cfg)
    assert ours.config == theirs.config
    assert ours.module_str == theirs.module_str
    assert ours.get_bn_param() == theirs.get_bn_param()
    assert ours.grouped_block_index == theirs.grouped_block_index
    perturb(theirs).double()
    result = ours.double().load_state_dict(theirs.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    assert_scaled_close(ours.eval()(x), theirs.eval()(x), "logits")
    assert counting.net_config_params(cfg) == ofa_utils.count_parameters(theirs)


def test_specialized_flops_as_published():
    """The "flops@NNNM" nets at their tuned image size have NNN million MACs."""
    for path in ZOO_CONFIGS:
        match = re.match(r"flops-(\d+)M_", _zoo_id(path))
        if not match:
            continue
        with open(path) as f:
            cfg = json.load(f)
        with open(os.path.join(os.path.dirname(path), "run.config")) as f:
            image_size = json.load(f)["image_size"]
        macs = counting.net_config_macs(cfg, image_size)
        assert round(macs / 1e6) == int(match.group(1)), (path, macs)


@pytest.mark.parametrize("kind", list(SUPERNETS))
@pytest.mark.parametrize("train", [True, False])
def test_subnet_forward_makes_no_weight_copy(kind, train):
    from _helpers import NoWeightCopies

    net = ours_only(kind).float()
    random.seed(3)
    net.sample_active_subnet()
    net.train(train)
    x = torch.randn(2, 3, 64, 64)
    with NoWeightCopies(net.parameters()):
        net(x)

"""ofa_fast.recalibrate.set_running_statistics against OFA's own
(ofa.imagenet_classification.elastic_nn.utils.set_running_statistics, which deep-copies
the model) and against a hand computation.

Supernets: OFA's network (float64, perturbed BN statistics and affine parameters) and
ours with its state_dict, the same random active subnet, the same batches (sizes 4, 3, 2:
the average is weighted by batch size), each recalibrated by its package's function:
every BN buffer equal, the eval-mode logits equal. Also: ours on an OFA model (plain and
patched by ofa_fast.patch) equals OFA's; an eval-mode supernet (whose eval-mode conv + BN
fold must not skip a BN) and a static subnet give the same statistics; a plain nn.Sequential
against the definition; every batch format; max_batches; the model's mode, parameters,
other buffers, momentum, forward attributes and switches restored, also when a batch or
the forward raises; no deep copy; clear errors for bad input.

One torch thread: PyTorch's float64 grouped convolution (OFA's depthwise path) is
pathologically slow with two threads on a loaded 2-core machine (see test_networks.py).
"""
import copy
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import ofa_fast
from ofa_fast import networks as N
from ofa_fast.nn import dynamic_op
from ofa_fast.recalibrate import IMAGE_KEYS, set_running_statistics
from ofa_fast.train.space import sample_subnet, space_of

ofa_nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks",
                               reason="the `ofa` package is the parity oracle")
ofa_utils = pytest.importorskip("ofa.imagenet_classification.elastic_nn.utils")
ofa_dynamic_op = pytest.importorskip("ofa.imagenet_classification.elastic_nn.modules.dynamic_op")

TOL = dict(rtol=1e-10, atol=1e-12)  # float64
H = 40
MB_SPACE = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
SUPERNETS = {
    "mbv3_w1.0": ("OFAMobileNetV3", dict(n_classes=10, dropout_rate=0.1, width_mult=1.0,
                                         **MB_SPACE)),
    "proxyless_w1.3": ("OFAProxylessNASNets", dict(n_classes=10, dropout_rate=0.1,
                                                   width_mult=1.3, **MB_SPACE)),
    "resnets": ("OFAResNets", dict(n_classes=10, dropout_rate=0.1, depth_list=[0, 1, 2],
                                   expand_ratio_list=[0.2, 0.25, 0.35],
                                   width_mult_list=[0.65, 0.8, 1.0])),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- helpers


def perturb(net, seed=1):
    """Non-trivial BN statistics, affine parameters and kernel transform matrices."""
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


def random_config(net, seed):
    """A random subnet of `net` (either package's: the attributes are the same), drawn
    from random.Random(seed) over the whole search space."""
    space = space_of(net)
    return sample_subnet(space, space.dims, random.Random(seed))


_CACHE = {}


def twins(kind, seed=3):
    """(OFA's supernet, ours) in float64 with the same weights and active subnet."""
    if kind not in _CACHE:
        cls_name, kwargs = SUPERNETS[kind]
        torch.manual_seed(0)
        theirs = perturb(getattr(ofa_nets, cls_name)(**copy.deepcopy(kwargs))).double()
        ours = getattr(N, cls_name)(**copy.deepcopy(kwargs)).double()
        ours.load_state_dict(theirs.state_dict())
        _CACHE[kind] = (theirs, ours)
    theirs, ours = (copy.deepcopy(net) for net in _CACHE[kind])
    cfg = random_config(theirs, seed)
    theirs.set_active_subnet(**cfg)
    ours.set_active_subnet(**cfg)
    return theirs, ours


def batches(sizes=(4, 3, 2), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, H, H, generator=g, dtype=dtype),
             torch.randint(10, (n,), generator=g)) for n in sizes]


def bn_buffers(net):
    return {n: b.clone() for n, b in net.named_buffers()
            if n.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def assert_buffers_equal(a, b, exact=False):
    assert a.keys() == b.keys()
    for n in a:
        if exact or a[n].dtype == torch.long:
            assert torch.equal(a[n], b[n]), n
        else:
            torch.testing.assert_close(a[n], b[n], **TOL, msg=lambda m: f"{n}: {m}")


def eval_logits(net, x):
    net.eval()
    with torch.no_grad():
        return net(x)


# ----------------------------------------------------------------------------- parity with OFA


@pytest.mark.parametrize("kind", list(SUPERNETS))
def test_matches_ofa(kind):
    theirs, ours = twins(kind)
    data = batches()
    before = bn_buffers(ours)
    theirs.train()  # OFA's function keeps the mode; ours returns the model to it
    ours.train()
    ofa_utils.set_running_statistics(theirs, data)
    assert set_running_statistics(ours, data) == len(data)
    assert ours.training and all(m.training for m in ours.modules())
    after = bn_buffers(ours)
    assert_buffers_equal(after, bn_buffers(theirs))
    changed = [n for n in after if not torch.equal(after[n], before[n])]
    assert changed and all(not n.endswith("num_batches_tracked") for n in changed)
    x = torch.randn(2, 3, H, H, dtype=torch.float64)
    torch.testing.assert_close(eval_logits(ours, x), eval_logits(theirs, x), **TOL)


def test_only_active_channels_and_blocks_change():
    _, ours = twins("mbv3_w1.0", seed=5)
    ours.set_active_subnet(ks=3, e=3, d=2)
    before = bn_buffers(ours)
    set_running_statistics(ours, batches())
    after = bn_buffers(ours)
    active = set(ours._active_block_indices())
    for idx, block in enumerate(ours.blocks):
        for name, m in block.named_modules():
            if not isinstance(m, nn.BatchNorm2d):
                continue
            key = f"blocks.{idx}.{name}.running_mean"
            if idx and idx not in active:
                assert torch.equal(after[key], before[key]), key
                continue
            # the depthwise BN of an e=3 block sees 3/6 of the max middle channels
            if idx and name.startswith("conv.depth_conv"):
                half = m.num_features // 2
                assert not torch.equal(after[key][:half], before[key][:half]), key
                assert torch.equal(after[key][half:], before[key][half:]), key


@pytest.mark.parametrize("patched", [False, True], ids=["ofa_model", "ofa_model_patched"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ours_on_ofa_model(patched, mode):
    theirs, _ = twins("mbv3_w1.0")
    model = copy.deepcopy(theirs)
    if patched:
        ofa_fast.patch(model)
    data = batches()
    theirs.train()  # OFA's reference in train mode: its result does not depend on the mode
    ofa_utils.set_running_statistics(theirs, data)
    model.train(mode == "train")
    set_running_statistics(model, data)
    assert model.training == (mode == "train")
    assert_buffers_equal(bn_buffers(model), bn_buffers(theirs))


def test_eval_mode_supernet():
    """In eval mode ofa_fast folds a 1x1 conv and its BN into one GEMM: the pass must
    still run every BN."""
    _, train_net = twins("mbv3_w1.0")
    _, eval_net = twins("mbv3_w1.0")
    data = batches()
    set_running_statistics(train_net.train(), data)
    set_running_statistics(eval_net.eval(), data)
    assert not eval_net.training
    assert_buffers_equal(bn_buffers(eval_net), bn_buffers(train_net))
    assert ofa_fast.nn.fusion_enabled()


@pytest.mark.parametrize("kind", list(SUPERNETS))
def test_static_subnet(kind):
    """A static subnet recalibrated on its own gets the statistics the supernet's active
    slices get, and those OFA's function gives it."""
    _, ours = twins(kind)
    static = ours.get_active_subnet(preserve_weight=True)
    reference = copy.deepcopy(static)
    data = batches()
    set_running_statistics(ours, data)
    set_running_statistics(static, data)
    ofa_utils.set_running_statistics(reference, data)
    assert_buffers_equal(bn_buffers(static), bn_buffers(reference))
    x = torch.randn(2, 3, H, H, dtype=torch.float64)
    torch.testing.assert_close(eval_logits(static, x), eval_logits(ours, x), **TOL)


def test_definition_on_plain_sequential():
    """Batch mean and biased batch variance per channel, averaged over the batches weighted
    by batch size; the forward normalises with the batch statistics."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 4, 1),
                        nn.BatchNorm2d(4, affine=False)).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_()
    data = [torch.randn(n, 3, 6, 7, dtype=torch.float64) for n in (3, 1, 5)]
    stats = {1: [], 4: []}
    with torch.no_grad():
        for x in data:
            h = net[0](x)
            for i in (1, 4):
                mean = h.mean((0, 2, 3))
                var = ((h - mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
                stats[i].append((mean, var, x.size(0)))
                bn = net[i]
                h = (h - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + bn.eps).sqrt()
                if bn.affine:
                    h = h * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
                if i == 1:
                    h = net[3](F.relu(h))
    set_running_statistics(net, data)
    total = sum(x.size(0) for x in data)
    for i, seen in stats.items():
        mean = sum(m * n for m, _, n in seen) / total
        var = sum(v * n for _, v, n in seen) / total
        torch.testing.assert_close(net[i].running_mean, mean, **TOL)
        torch.testing.assert_close(net[i].running_var, var, **TOL)
        assert net[i].num_batches_tracked.item() == 0


# ----------------------------------------------------------------------------- inputs


class _DictDataset(Dataset):
    def __init__(self, images, key):
        self.images, self.key = images, key

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {self.key: self.images[i], "label": i}


def _toy(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, stride=2), nn.BatchNorm2d(6))


def _stats(net):
    return {n: b.clone() for n, b in net.named_buffers()}


def test_batch_formats_agree():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 9, 9, generator=g)
    labels = torch.arange(8)
    chunks = [images[:4], images[4:]]
    expected = _toy()
    assert set_running_statistics(expected, chunks) == 2
    formats = {
        "tuple": [(c, labels[:4]) for c in chunks],
        "list": [[c, labels[:4], "extra"] for c in chunks],
        "generator": (c for c in chunks),
        "dataloader": DataLoader(TensorDataset(images, labels), batch_size=4),
        "dataloader_images_only": DataLoader(TensorDataset(images), batch_size=4),
    }
    for key in IMAGE_KEYS:
        formats[f"dict_{key}"] = [{key: c, "label": labels[:4]} for c in chunks]
        formats[f"dataloader_dict_{key}"] = DataLoader(_DictDataset(images, key), batch_size=4)
    for name, data in formats.items():
        net = _toy()
        assert set_running_statistics(net, data) == 2, name
        assert_buffers_equal(_stats(net), _stats(expected))


def test_max_batches():
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(5)]
    first_two = _toy()
    set_running_statistics(first_two, data[:2])
    limited = _toy()
    assert set_running_statistics(limited, iter(data), max_batches=2) == 2
    assert_buffers_equal(_stats(limited), _stats(first_two), exact=True)
    everything = _toy()
    assert set_running_statistics(everything, data, max_batches=99) == 5


def test_nothing_to_do():
    net = _toy()
    before = _stats(net)
    assert set_running_statistics(net, []) == 0
    assert_buffers_equal(_stats(net), before, exact=True)
    no_bn = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert set_running_statistics(no_bn, [torch.randn(1, 3, 2, 2)]) == 0


@pytest.mark.parametrize("data,match", [
    (torch.randn(2, 3, 8, 8), "data is a torch.float32 Tensor"),
    ({"image": torch.randn(2, 3, 8, 8)}, "data is a dict"),
    ("images", "data is a str"),
    (3, "data is a int"),
    ([("labels only", torch.randn(2, 3, 8, 8))], "batch 0 is a tuple"),
    ([torch.randn(2, 3, 8, 8), 7], "batch 1 is a int"),
    ([[]], "batch 0 is a list of 0 items"),
    ([{"img": torch.randn(2, 3, 8, 8)}], r"batch 0 is a dict with keys \['img'\]"),
    ([{"image": [1, 2]}], "batch 0 is a dict"),
    ([torch.zeros(2, 3, 8, 8, dtype=torch.uint8)], "floating-point"),
])
def test_bad_input_raises_type_error(data, match):
    net = _toy()
    before = _stats(net)
    with pytest.raises(TypeError, match=match):
        set_running_statistics(net, data)
    assert_buffers_equal(_stats(net), before, exact=True)


@pytest.mark.parametrize("max_batches", [0, -1, 1.5, True, "2"])
def test_bad_max_batches(max_batches):
    with pytest.raises(ValueError, match="max_batches"):
        set_running_statistics(_toy(), [torch.randn(1, 3, 4, 4)], max_batches=max_batches)


def test_bad_model():
    with pytest.raises(TypeError, match="expected an nn.Module"):
        set_running_statistics(lambda x: x, [torch.randn(1, 3, 4, 4)])


# ----------------------------------------------------------------------------- restoring state


def _snapshot(net):
    return dict(
        modes={n: m.training for n, m in net.named_modules()},
        params={n: (p, p.detach().clone()) for n, p in net.named_parameters()},
        buffers=_stats(net),
        momentum={n: m.momentum for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)},
        forwards={n: m.__dict__.get("forward") for n, m in net.named_modules()},
    )


def _assert_restored(net, snap, stats_changed):
    assert {n: m.training for n, m in net.named_modules()} == snap["modes"]
    for n, p in net.named_parameters():
        obj, value = snap["params"][n]
        assert p is obj and torch.equal(p, value) and p.grad is None, n
    for n, b in net.named_buffers():
        running = n.endswith(("running_mean", "running_var"))
        if not (running and stats_changed):
            assert torch.equal(b, snap["buffers"][n]), n
    assert {n: m.momentum for n, m in net.named_modules()
            if isinstance(m, nn.BatchNorm2d)} == snap["momentum"]
    assert {n: m.__dict__.get("forward") for n, m in net.named_modules()} == snap["forwards"]
    assert dynamic_op.DynamicBatchNorm2d.SET_RUNNING_STATISTICS is False
    assert ofa_dynamic_op.DynamicBatchNorm2d.SET_RUNNING_STATISTICS is False
    assert ofa_fast.nn.fusion_enabled()


def _mixed_modes_supernet():
    _, ours = twins("mbv3_w1.0")
    ours.train()
    ours.blocks[2].eval()
    ours.classifier.eval()
    ours.blocks[3].conv.depth_conv.bn.bn.momentum = 0.3
    marker = ours.blocks[4].conv.point_linear.bn.bn
    marker.forward = lambda x: nn.BatchNorm2d.forward(marker, x)  # a user's own override
    return ours


def test_restores_state():
    ours = _mixed_modes_supernet()
    snap = _snapshot(ours)
    set_running_statistics(ours, batches())
    _assert_restored(ours, snap, stats_changed=True)
    stats = bn_buffers(ours)
    assert any(not torch.equal(stats[n], snap["buffers"][n]) for n in stats)


def test_restores_state_when_a_batch_fails():
    ours = _mixed_modes_supernet()
    snap = _snapshot(ours)

    def data():
        yield torch.randn(2, 3, H, H, dtype=torch.float64)
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        set_running_statistics(ours, data())
    _assert_restored(ours, snap, stats_changed=False)
    with pytest.raises(TypeError, match="batch 1"):
        set_running_statistics(ours, [torch.randn(2, 3, H, H, dtype=torch.float64), None])
    _assert_restored(ours, snap, stats_changed=False)


def test_restores_state_when_forward_fails():
    ours = _mixed_modes_supernet()
    snap = _snapshot(ours)
    with pytest.raises(RuntimeError):  # 5 input channels: the first conv rejects them
        set_running_statistics(ours, [torch.randn(2, 5, H, H, dtype=torch.float64)])
    _assert_restored(ours, snap, stats_changed=False)


def test_no_deep_copy(monkeypatch):
    _, ours = twins("mbv3_w1.0")

    def refuse(*args, **kwargs):
        raise AssertionError("set_running_statistics deep-copied something")

    monkeypatch.setattr(copy, "deepcopy", refuse)
    monkeypatch.setattr(nn.Module, "__deepcopy__", refuse, raising=False)
    pointers = {n: p.data_ptr() for n, p in ours.named_parameters()}
    set_running_statistics(ours, batches(sizes=(2,)))
    assert {n: p.data_ptr() for n, p in ours.named_parameters()} == pointers


def test_no_grad():
    net = _toy()
    seen = []
    net[1].register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    set_running_statistics(net, [torch.randn(2, 3, 5, 5, requires_grad=True)])
    assert seen == [False]
    assert all(p.grad is None for p in net.parameters())

"""ofa_fast.compile_supernet: one torch.compile graph for every subnet of a supernet.

The compiled supernet must give eager's logits, gradients (None where eager's are None)
and BN running statistics for every subnet, with one compilation (one graph handed to
the backend) over 20 random subnets and no graph break. Cheap backends keep this fast:
"aot_eager" (Dynamo + AOTAutograd, so the compiled backward runs) for MobileNetV3,
"eager" (Dynamo's graph, eager autograd) for the others. Small search spaces (depth
1-2) keep the graphs small; the mechanism is the same at full size."""
import copy
import random
import re

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

import ofa_fast
from ofa_fast.networks import OFAMobileNetV3, OFAProxylessNASNets, OFAResNets
from ofa_fast.networks import compiled
from ofa_fast.ops import elastic_dwconv2d, sliced_conv2d

_OLD_TORCH = compiled.torch_release(torch.__version__) < compiled.MIN_TORCH
needs_new_torch = pytest.mark.skipif(
    _OLD_TORCH, reason=f"compile_supernet needs PyTorch >= {compiled.MIN_TORCH}; this is "
                       f"{torch.__version__} (test_older_torch_is_refused covers it)")


class CountingBackend:
    """A torch.compile backend that counts the graphs Dynamo hands it (compilations)."""

    def __init__(self, inner):
        self.inner = lookup_backend(inner)
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return self.inner(gm, example_inputs)


@pytest.fixture(autouse=True)
def _one_thread():
    # the steps are tiny; two threads on this shared 2-core machine only add waiting
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    counters.clear()
    yield
    torch.set_num_threads(before)


def build(kind):
    torch.manual_seed(0)
    if kind == "mbv3":
        return OFAMobileNetV3(n_classes=10, dropout_rate=0, ks_list=[3, 5, 7],
                              expand_ratio_list=[3, 4, 6], depth_list=[1, 2])
    if kind == "proxyless":
        return OFAProxylessNASNets(n_classes=10, dropout_rate=0, ks_list=[3, 5, 7],
                                   expand_ratio_list=[3, 4, 6], depth_list=[1, 2])
    return OFAResNets(n_classes=10, depth_list=[0, 1], expand_ratio_list=[0.2, 0.25],
                      width_mult_list=[0.65, 1.0])


def assert_same_step(net, twin, y, y_ref):
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        assert (p.grad is None) == (q.grad is None), f"{name}: grad None-ness differs from eager"
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{name}: {m}")
    for (name, a), b in zip(net.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def run_subnets(kind, backend, steps, size=32, check_every=1):
    net = build(kind).train()
    twin = copy.deepcopy(net)
    counting = CountingBackend(backend)
    compiled = ofa_fast.compile_supernet(net, backend=counting)
    x = torch.randn(2, 3, size, size)
    random.seed(1)
    for step in range(steps):
        config = compiled.sample_active_subnet()  # the wrapper passes attributes to net
        twin.set_active_subnet(**config)
        y = compiled(x)
        y.square().sum().backward()
        if step % check_every == 0:
            y_ref = twin(x)
            y_ref.square().sum().backward()
            assert_same_step(net, twin, y, y_ref)
        else:  # keep the twin's running statistics in step
            twin(x)
        net.zero_grad(set_to_none=True)
        twin.zero_grad(set_to_none=True)
    return counting.graphs


@needs_new_torch
def test_mobilenet_v3_one_graph_for_twenty_subnets():
    graphs = run_subnets("mbv3", "aot_eager", steps=20, check_every=4)
    assert graphs == 1  # the goal: at most 2
    assert not counters["graph_break"], dict(counters["graph_break"])


@needs_new_torch
@pytest.mark.parametrize("kind", ["proxyless", "resnets"])
def test_other_supernets_one_graph(kind):
    assert run_subnets(kind, "eager", steps=6) == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


@needs_new_torch
def test_eval_one_graph_and_eager_values():
    net = build("mbv3").eval()
    counting = CountingBackend("eager")
    compiled = ofa_fast.compile_supernet(net, backend=counting)
    x = torch.randn(2, 3, 32, 32)
    random.seed(2)
    with torch.no_grad():
        for _ in range(5):
            net.sample_active_subnet()
            torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)
    assert counting.graphs == 1


@pytest.fixture(scope="module")
def compiled_mbv3():
    net = build("mbv3").train()
    return ofa_fast.compile_supernet(net, backend="eager")


@needs_new_torch
def test_unused_parameters_get_zero_grads_without_restore(compiled_mbv3):
    compiled, net = compiled_mbv3, compiled_mbv3.net
    compiled.restore_none_grads = False
    try:
        net.set_active_subnet(ks=7, e=3, d=1)  # every optional block skipped, no transform
        compiled(torch.randn(2, 3, 32, 32)).sum().backward()
    finally:
        compiled.restore_none_grads = True
    skipped = net.blocks[net.block_group_info[0][1]]
    assert all(p.grad is not None and not p.grad.any() for p in skipped.parameters())
    matrix = net.blocks[1].conv.depth_conv.conv.get_parameter("7to5_matrix")
    assert matrix.grad is not None and not matrix.grad.any()
    net.zero_grad(set_to_none=True)


@needs_new_torch
def test_restored_none_grads_never_drop_a_gradient(compiled_mbv3):
    compiled, net = compiled_mbv3, compiled_mbv3.net
    x = torch.randn(2, 3, 32, 32)
    block = net.blocks[net.block_group_info[0][1]]
    # one forward: the skipped block's gradients are None, as in eager
    net.set_active_subnet(ks=3, d=1)
    compiled(x).sum().backward()
    assert all(p.grad is None for p in block.parameters())
    # two forwards, one backward: the block runs in the first only
    net.set_active_subnet(d=2)
    y1 = compiled(x)
    net.set_active_subnet(d=1)
    y2 = compiled(x)
    (y1.sum() + y2.sum()).backward()
    assert all(p.grad is not None for p in block.parameters())
    # the next backward skips the block: its gradients stay as they were
    before = [p.grad.clone() for p in block.parameters()]
    compiled(x).sum().backward()
    for p, g in zip(block.parameters(), before):
        torch.testing.assert_close(p.grad, g)
    net.zero_grad(set_to_none=True)


def test_older_torch_is_refused():
    for ok in ("2.14.1+cu130", "2.14.0a0+git1234", "2.15.0", "3.0.0"):
        compiled._check_torch_version(ok)
    for old in ("2.13.0+cpu", "2.11.0+cu130", "1.13.1"):
        with pytest.raises(RuntimeError, match=r"needs PyTorch 2\.14 or newer; this is " + re.escape(old)):
            compiled._check_torch_version(old)


def test_only_ofa_fast_supernets():
    with pytest.raises(ValueError, match="no elastic forward"):
        ofa_fast.compile_supernet(torch.nn.Linear(2, 2))


# ---- the ops the compiled graph uses -------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_elastic_dwconv2d_op_matches_the_eager_chain(backend):
    if backend not in ofa_fast.usable_backends("cpu"):
        pytest.skip(f"backend {backend} not usable")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, 1, 7, 7, dtype=torch.float64, generator=g, requires_grad=True)
    m75 = (torch.eye(25, dtype=torch.float64)
           + 0.1 * torch.randn(25, 25, dtype=torch.float64, generator=g)).requires_grad_()
    m53 = (torch.eye(9, dtype=torch.float64)
           + 0.1 * torch.randn(9, 9, dtype=torch.float64, generator=g)).requires_grad_()
    with ofa_fast.use_backend(backend):
        for k in (3, 5, 7):
            for stride in (1, 2):
                ref = elastic_dwconv2d(x, w, k, [3, 5, 7], {"7to5": m75, "5to3": m53}, stride)
                y = torch.ops.ofa_fast.elastic_dwconv2d(x, w, [m75, m53], [7, 5, 3], k, stride, 1)
                torch.testing.assert_close(y, ref)
                grad = torch.randn_like(ref)
                expected = torch.autograd.grad(ref, [x, w, m75, m53], grad, allow_unused=True)
                got = torch.autograd.grad(y, [x, w, m75, m53], grad)
                for e, r in zip(expected, got):
                    # a matrix the kernel size does not take: None in eager, zeros here
                    torch.testing.assert_close(r, torch.zeros_like(r) if e is None else e)
        torch.library.opcheck(torch.ops.ofa_fast.elastic_dwconv2d.default,
                              (x, w, [m75, m53], [7, 5, 3], 5, 2, 1))
        torch.library.opcheck(torch.ops.ofa_fast.elastic_dwconv2d.default,
                              (x, w, [], [7, 5, 3], 3, 1, 1))


def test_sliced_conv2d_op():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 10, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    for cl in (False, True):
        x = torch.randn(2, 6, 9, 9, dtype=torch.float64, generator=g)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_()
        y = sliced_conv2d(x, w, 8, 2, 1, 1)
        ref = torch.nn.functional.conv2d(x, w[:8, :6], None, 2, 1, 1)
        torch.testing.assert_close(y, ref)
        grad = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(y, [x, w], grad), torch.autograd.grad(ref, [x, w], grad)):
            torch.testing.assert_close(a, b)
        torch.library.opcheck(torch.ops.ofa_fast.sliced_conv2d.default, (x, w, 8, 2, 1, 1))

"""Deployment export of ofa_fast networks.

A static subnet extracted from each supernet kind (get_active_subnet(preserve_weight=True)
of OFAMobileNetV3, OFAProxylessNASNets, OFAResNets, small: 10 classes, 64x64 input, a
random subnet) exports with torch.export.export, with a static and with a dynamic batch
size, and the exported program computes what the module computes. The supernet itself,
with its active subnet set, exports too (ofa_fast's custom ops have fake kernels); the
program holds that subnet. ONNX: torch.onnx.export of the static subnets, checked by
onnx.checker and, where onnxruntime is installed, run against the module; skipped where
the `onnx` package is not installed (it is not a dependency of ofa_fast).
"""
import importlib.util
import random

import pytest
import torch

import ofa_fast  # noqa: F401
from ofa_fast import networks as N

MB_SPACE = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
SUPERNETS = {
    "mbv3": ("OFAMobileNetV3", dict(n_classes=10, width_mult=1.0, **MB_SPACE)),
    "proxyless": ("OFAProxylessNASNets", dict(n_classes=10, width_mult=1.0, **MB_SPACE)),
    "resnets": ("OFAResNets", dict(n_classes=10, depth_list=[0, 1, 2],
                                   expand_ratio_list=[0.2, 0.25, 0.35],
                                   width_mult_list=[0.65, 0.8, 1.0])),
}
KINDS = list(SUPERNETS)
SIZE = 64
TOL = dict(rtol=1e-5, atol=1e-5)

HAS_ONNX = importlib.util.find_spec("onnx") is not None
HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
NO_ONNX = ("the `onnx` package is not installed (not a dependency of ofa_fast; "
           "pip install onnx onnxscript onnxruntime to run the ONNX export checks)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_CACHE = {}


def supernet(kind):
    """The supernet of `kind` with a random (seeded) subnet active, in eval mode."""
    if kind not in _CACHE:
        cls_name, kwargs = SUPERNETS[kind]
        torch.manual_seed(0)
        net = getattr(N, cls_name)(**kwargs)
        state = random.getstate()
        random.seed(KINDS.index(kind))
        try:
            net.sample_active_subnet()
        finally:
            random.setstate(state)
        with torch.no_grad():  # statistics away from (0, 1): the export must carry them
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        _CACHE[kind] = net.eval()
    return _CACHE[kind]


def static_subnet(kind):
    return supernet(kind).get_active_subnet(preserve_weight=True).eval()


def images(n, seed=0):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_torch_export_static_subnet(kind):
    sub = static_subnet(kind)
    x = images(2)
    program = torch.export.export(sub, (x,))
    with torch.no_grad():
        expected = sub(x)
        torch.testing.assert_close(program.module()(x), expected, **TOL)
        torch.testing.assert_close(sub(x), supernet(kind)(x), **TOL)  # the subnet is the active net
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any(t.startswith("ofa_fast.") for t in targets), targets  # plain ATen: portable


@pytest.mark.parametrize("kind", KINDS)
def test_torch_export_dynamic_batch(kind):
    sub = static_subnet(kind)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(sub, (images(2),), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        for n in (1, 3):
            x = images(n, seed=n)
            torch.testing.assert_close(program.module()(x), sub(x), **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_export_supernet_active_subnet(kind):
    net = supernet(kind)
    x = images(2)
    program = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x), **TOL)


@pytest.mark.skipif(not HAS_ONNX, reason=NO_ONNX)
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_export_static_subnet(kind, tmp_path):
    import onnx

    sub = static_subnet(kind)
    x = images(2)
    path = tmp_path / f"{kind}.onnx"
    # the dynamo-based exporter needs onnxscript; without it, the TorchScript one
    torch.onnx.export(sub, (x,), str(path), input_names=["images"], output_names=["logits"],
                      dynamo=HAS_ONNXSCRIPT)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    if not HAS_ORT:
        pytest.skip("exported and checked; onnxruntime is not installed, so the ONNX "
                    "model's outputs are not compared")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), sub(x), rtol=1e-4, atol=1e-4)

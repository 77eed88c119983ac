"""OFA's model zoo and hub page on ofa_fast: ofa_net, ofa_specialized and hubconf.py's
entry points (torch.hub.load(<checkout>, ..., source='local')), local checkpoints in
OFA's format, the pretrained lookup and its error, the 50 specialized net configs."""
import json
import os
import pathlib

import pytest
import torch

import ofa_fast
from ofa_fast import zoo

ofa_nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks",
                               reason="the `ofa` package is the parity oracle")
ofa_static = pytest.importorskip("ofa.imagenet_classification.networks")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "ofa_zoo" / "specialized"


def ofa_twin(name):
    cls_name, kwargs, _ = zoo.OFA_NETS[name]
    torch.manual_seed(0)
    return getattr(ofa_nets, cls_name)(**kwargs)


@pytest.mark.parametrize("name", list(zoo.OFA_NETS))
def test_ofa_net_loads_an_ofa_checkpoint(name, tmp_path):
    theirs = ofa_twin(name)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": theirs.state_dict()}, path)  # OFA's checkpoint format
    ours = ofa_fast.ofa_net(name, weights=path)
    assert type(ours).__name__ == type(theirs).__name__
    assert list(ours.state_dict()) == list(theirs.state_dict())
    cfg = theirs.sample_active_subnet()
    ours.set_active_subnet(**cfg)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-4, atol=1e-4)


def test_pretrained_looks_in_the_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    name = "ofa_mbv3_d234_e346_k357_w1.0"
    with pytest.raises(FileNotFoundError, match=r"'ofa_mbv3_d234_e346_k357_w1.0'.*at one of: "
                                                + str(tmp_path)):
        ofa_fast.ofa_net(name, pretrained=True)
    theirs = ofa_twin(name)
    (tmp_path / "ofa_nets").mkdir()
    torch.save({"state_dict": theirs.state_dict()}, tmp_path / "ofa_nets" / zoo.OFA_NETS[name][2])
    ours = ofa_fast.ofa_net(name, pretrained=True)
    for (n, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), n


def test_hub_entry_points():
    for entry, name in (("ofa_supernet_mbv3_w10", "ofa_mbv3_d234_e346_k357_w1.0"),
                        ("ofa_supernet_mbv3_w12", "ofa_mbv3_d234_e346_k357_w1.2"),
                        ("ofa_supernet_proxyless", "ofa_proxyless_d234_e346_k357_w1.3"),
                        ("ofa_supernet_resnet50", "ofa_resnet50")):
        net = torch.hub.load(str(ROOT), entry, source="local", pretrained=False)
        assert list(net.state_dict()) == list(ofa_twin(name).state_dict()), entry
    getter = torch.hub.load(str(ROOT), "ofa_specialized_get", source="local")
    net, image_size = getter("flops@595M_top1@80.0_finetune@75", pretrained=False)
    assert type(net).__name__ == "MobileNetV3" and image_size == 236


def test_specialized_configs_are_the_zoo_files():
    ids = zoo.specialized_ids()
    assert len(ids) == 50
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not here to compare against")
    assert sorted(os.listdir(SHARED)) == sorted(ids)
    for net_id in ids:
        config, size = zoo.specialized_config(net_id)
        assert config == json.loads((SHARED / net_id / "net.config").read_text()), net_id
        assert size == json.loads((SHARED / net_id / "run.config").read_text())["image_size"]


@pytest.mark.parametrize("net_id", ["flops@389M_top1@79.1_finetune@75", "cpu_lat@10ms_top1@71.1_finetune@25",
                                    "LG-G8_lat@8ms_top1@71.1_finetune@25"])
def test_specialized_matches_ofa(net_id, tmp_path):
    config, size = zoo.specialized_config(net_id)
    torch.manual_seed(0)
    theirs = ofa_static.get_net_by_name(config["name"]).build_from_config(config)
    torch.save({"state_dict": theirs.state_dict()}, tmp_path / "init")
    ours, image_size = ofa_fast.ofa_specialized(net_id, weights=tmp_path / "init")
    assert image_size == size
    assert ours.config == theirs.config
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-4, atol=1e-4)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"unknown supernet 'ofa_mbv3'; choose from ofa_mbv3_d234"):
        ofa_fast.ofa_net("ofa_mbv3")
    with pytest.raises(ValueError, match=r"unknown net_id 'flops@1M'; the zoo has: "):
        ofa_fast.ofa_specialized("flops@1M")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        ofa_fast.ofa_net("ofa_resnet50", weights=tmp_path / "missing")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"holds a list, not a state_dict"):
        ofa_fast.ofa_net("ofa_resnet50", weights=tmp_path / "list.pth")
    torch.save({"state_dict": {"bogus": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises((RuntimeError, ValueError), match=r"bogus"):
        ofa_fast.ofa_net("ofa_resnet50", weights=tmp_path / "bad.pth")

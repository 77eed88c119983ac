"""OFA's model zoo (the hub page of once-for-all) on ofa_fast's networks.

    net = ofa_fast.ofa_net("ofa_mbv3_d234_e346_k357_w1.0", weights="path/to/checkpoint")
    net, image_size = ofa_fast.ofa_specialized("flops@595M_top1@80.0_finetune@75")

Supernets: the four of OFA's zoo, built with the arguments OFA's model_zoo uses. There is
no download here: `weights=` takes a local checkpoint in OFA's format (a dict with a
"state_dict", or a bare state_dict; OFA's old key names load too), and
`pretrained=True` looks for the file OFA's zoo would have downloaded in the usual caches
(torch hub's dir, ~/.torch, ./.torch) and otherwise fails, naming the file and where to
put it. Specialized networks: the net configs of OFA's 50 specialized networks ship
with ofa_fast (ofa_fast/zoo_specialized.json, copied from the files OFA's zoo
downloads); ids are the zoo's, with '@' or '-' as separators.
"""
from __future__ import annotations

import functools
import json
import os

import torch

__all__ = ["OFA_NETS", "ofa_net", "ofa_specialized", "specialized_ids", "specialized_config",
           "checkpoint_search_paths"]

# name -> (supernet class, constructor arguments, OFA's checkpoint file name)
OFA_NETS = {
    "ofa_mbv3_d234_e346_k357_w1.0": ("OFAMobileNetV3", dict(
        dropout_rate=0, width_mult=1.0, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4]), "ofa_mbv3_d234_e346_k357_w1.0"),
    "ofa_mbv3_d234_e346_k357_w1.2": ("OFAMobileNetV3", dict(
        dropout_rate=0, width_mult=1.2, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4]), "ofa_mbv3_d234_e346_k357_w1.2"),
    "ofa_proxyless_d234_e346_k357_w1.3": ("OFAProxylessNASNets", dict(
        dropout_rate=0, width_mult=1.3, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4]), "ofa_proxyless_d234_e346_k357_w1.3"),
    "ofa_resnet50": ("OFAResNets", dict(
        dropout_rate=0, depth_list=[0, 1, 2], expand_ratio_list=[0.2, 0.25, 0.35],
        width_mult_list=[0.65, 0.8, 1.0]), "ofa_resnet50_d0-1-2_e0.2-0.25-0.35_w0.65-0.8-1.0"),
}


def checkpoint_search_paths(file_name, subdir="ofa_nets"):
    """Where pretrained=True looks for a checkpoint, in order."""
    return [os.path.join(torch.hub.get_dir(), subdir, file_name),
            os.path.join(os.path.expanduser("~/.torch"), subdir, file_name),
            os.path.join(".torch", subdir, file_name)]


def _load_checkpoint(net, path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: checkpoint file {path!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {path!r} holds a {type(state).__name__}, not a state_dict "
                         "(or a dict with one under 'state_dict')")
    net.load_state_dict(state)
    return net


def _pretrained_path(file_name, what, subdir="ofa_nets"):
    paths = checkpoint_search_paths(file_name, subdir)
    for p in paths:
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(
        f"{what}: pretrained weights not found, and there is no download here. Put OFA's "
        f"checkpoint file {file_name!r} (from the once-for-all model zoo) at one of: "
        + ", ".join(paths) + "; or pass weights='/path/to/checkpoint'")


def ofa_net(name, pretrained=False, weights=None):
    """The supernet `name` of OFA's zoo (see OFA_NETS), optionally with weights."""
    from . import networks

    if name not in OFA_NETS:
        raise ValueError(f"ofa_net: unknown supernet {name!r}; choose from {', '.join(OFA_NETS)}")
    cls_name, kwargs, file_name = OFA_NETS[name]
    net = getattr(networks, cls_name)(**kwargs)
    if weights is not None:
        return _load_checkpoint(net, os.fspath(weights), f"ofa_net({name!r})")
    if pretrained:
        return _load_checkpoint(net, _pretrained_path(file_name, f"ofa_net({name!r})"),
                                f"ofa_net({name!r})")
    return net


@functools.lru_cache(maxsize=1)
def _specialized():
    with open(os.path.join(os.path.dirname(__file__), "zoo_specialized.json")) as f:
        return json.load(f)["nets"]


def specialized_ids():
    """The ids of OFA's 50 specialized networks (the zoo's, '-' separated)."""
    return list(_specialized())


def _normalise_id(net_id):
    if not isinstance(net_id, str):
        raise TypeError(f"ofa_specialized: net_id must be a str, got {type(net_id).__name__}")
    key = net_id.replace("@", "-")
    if key not in _specialized():
        raise ValueError(f"ofa_specialized: unknown net_id {net_id!r}; the zoo has: "
                         + ", ".join(specialized_ids()))
    return key


def specialized_config(net_id):
    """(net config, image size) of a specialized network, as OFA's zoo serves them."""
    entry = _specialized()[_normalise_id(net_id)]
    return json.loads(json.dumps(entry["net_config"])), entry["image_size"]


def ofa_specialized(net_id, pretrained=False, weights=None):
    """(network, image size) of OFA's specialized network `net_id`: the static network
    its net config describes (ofa_fast's MobileNetV3 / ProxylessNASNets), with weights
    from `weights` (a local checkpoint in OFA's format) or, with pretrained=True, from
    the caches (file '<id>/init' under ofa_specialized/)."""
    from . import networks

    key = _normalise_id(net_id)
    config, image_size = specialized_config(key)
    net = networks.get_net_by_name(config["name"]).build_from_config(config)
    what = f"ofa_specialized({net_id!r})"
    if weights is not None:
        _load_checkpoint(net, os.fspath(weights), what)
    elif pretrained:
        _load_checkpoint(net, _pretrained_path(os.path.join(key, "init"), what, "ofa_specialized"),
                         what)
    return net, image_size

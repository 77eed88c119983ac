"""OFA's networks on ofa_fast's modules, with OFA's names, constructors, configs,
module_str and state_dict keys (OFA's checkpoints and net configs load unchanged):

- static networks (ofa.imagenet_classification.networks): MobileNetV3 (and the
  MobileNetV3Large builder), ProxylessNASNets (MobileNetV2), ResNets (ResNet50,
  ResNet50D); what a supernet's get_active_subnet returns and what OFA's specialized
  net configs build (`build_from_config`);
- supernets (ofa.imagenet_classification.elastic_nn.networks): OFAMobileNetV3,
  OFAProxylessNASNets, OFAResNets, with sample_active_subnet, set_active_subnet
  (checked against the search space), get_active_subnet, get_active_net_config,
  re_organize_middle_weights, and active_macs / active_params;
- net_config_macs / net_config_params: MACs and parameters of a static net config,
  without building it;
- compile_supernet: torch.compile once for all subnets of a supernet (networks/compiled.py).

    net = ofa_fast.networks.OFAMobileNetV3(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                                           depth_list=[2, 3, 4])
    net.load_state_dict(torch.load("ofa_mbv3_d234_e346_k357_w1.0")["state_dict"])
    net.set_active_subnet(ks=[...], e=[...], d=[...])
    subnet = net.get_active_subnet()          # ofa_fast.networks.MobileNetV3
"""
from .compiled import CompiledSupernet, compile_supernet
from .counting import layer_config_macs_params, net_config_macs, net_config_params
from .mobilenet_v3 import MobileNetV3, MobileNetV3Large
from .ofa_mbv3 import OFAMobileNetV3
from .ofa_proxyless import OFAProxylessNASNets
from .ofa_resnets import OFAResNets
from .proxyless_nets import MobileNetV2, ProxylessNASNets
from .resnets import ResNet50, ResNet50D, ResNets

__all__ = [
    # static networks
    "MobileNetV3", "MobileNetV3Large", "ProxylessNASNets", "MobileNetV2", "ResNets", "ResNet50",
    "ResNet50D", "get_net_by_name",
    # supernets
    "OFAMobileNetV3", "OFAProxylessNASNets", "OFAResNets", "compile_supernet", "CompiledSupernet",
    # counting
    "net_config_macs", "net_config_params", "layer_config_macs_params",
]

_STATIC = {cls.__name__: cls for cls in (ProxylessNASNets, MobileNetV3, ResNets)}


def get_net_by_name(name):
    """The static network class of a net config's "name" (OFA's get_net_by_name)."""
    if name not in _STATIC:
        raise ValueError(f"get_net_by_name: unrecognized type of network {name!r}; known: "
                         f"{sorted(_STATIC)}")
    return _STATIC[name]

"""torch.hub entry points of OFA's hub page, on ofa_fast:

    net = torch.hub.load("<a checkout of ofa_fast>", "ofa_supernet_mbv3_w10", source="local",
                         pretrained=False)
    net, image_size = torch.hub.load("<checkout>", "ofa_specialized_get", source="local")(
        "flops@595M_top1@80.0_finetune@75", pretrained=False)

There is no download: pretrained=True looks for OFA's checkpoint files in the caches
(see ofa_fast.zoo), and weights="path" loads a local checkpoint in OFA's format.
"""
dependencies = ["torch"]

from ofa_fast.zoo import ofa_net as _ofa_net  # noqa: E402
from ofa_fast.zoo import ofa_specialized  # noqa: E402


def ofa_supernet_mbv3_w10(pretrained=False, weights=None):
    """OFA-MobileNetV3 supernet, width 1.0 (ofa_mbv3_d234_e346_k357_w1.0)."""
    return _ofa_net("ofa_mbv3_d234_e346_k357_w1.0", pretrained=pretrained, weights=weights)


def ofa_supernet_mbv3_w12(pretrained=False, weights=None):
    """OFA-MobileNetV3 supernet, width 1.2 (ofa_mbv3_d234_e346_k357_w1.2)."""
    return _ofa_net("ofa_mbv3_d234_e346_k357_w1.2", pretrained=pretrained, weights=weights)


def ofa_supernet_proxyless(pretrained=False, weights=None):
    """OFA-ProxylessNAS supernet, width 1.3 (ofa_proxyless_d234_e346_k357_w1.3)."""
    return _ofa_net("ofa_proxyless_d234_e346_k357_w1.3", pretrained=pretrained, weights=weights)


def ofa_supernet_resnet50(pretrained=False, weights=None):
    """OFA-ResNet50 supernet (ofa_resnet50)."""
    return _ofa_net("ofa_resnet50", pretrained=pretrained, weights=weights)


def ofa_specialized_get():
    """OFA's hub returns its zoo getter: call it with a net id (and pretrained=...)."""
    return ofa_specialized

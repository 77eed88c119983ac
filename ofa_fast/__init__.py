"""ofa_fast: fast kernels and drop-in modules for Once-for-All (OFA) elastic supernets.

    import ofa_fast
    conv = ofa_fast.nn.DynamicSeparableConv2d(144, [3, 5, 7])   # OFA's names and keys
    ofa_fast.set_backend("auto")          # or "reference", "cpu", "cuda", "triton"
    with ofa_fast.use_backend("reference"): ...
    ofa_fast.patch(ofa_model)             # an `ofa` model onto ofa_fast, in place
    compiled = ofa_fast.compile_supernet(net)   # torch.compile once for every subnet
"""
__version__ = "0.1.0"

from . import _ext  # loads ofa_fast._C, or warns once
from .backend import get_backend, set_backend, usable_backends, use_backend
from . import ops  # noqa: E402  (registers autograd, fake and Triton ops)
from . import nn  # noqa: E402
from ._patch import patch, unpatch  # noqa: E402
from . import networks  # noqa: E402
from .networks import compile_supernet  # noqa: E402
from .zoo import ofa_net, ofa_specialized  # noqa: E402
from .recalibrate import set_running_statistics  # noqa: E402

__all__ = ["__version__", "compile_supernet", "get_backend", "networks", "nn", "ofa_net", "ofa_specialized", "ops",
           "patch", "set_backend", "set_running_statistics", "unpatch", "usable_backends", "use_backend"]

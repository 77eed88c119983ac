"""Op wrappers: argument checks, backend dispatch, autograd and fake kernels.

Data flows one way: ofa_fast.nn modules -> these wrappers -> kernels
(torch.ops.ofa_fast.* from csrc/, Triton kernels from ofa_fast.triton_kernels).
"""
from .. import backend as _backend
from . import dwconv as _dwconv_mod
from . import kernel_transform as _kernel_transform_mod
from . import linear as _linear_mod
from .batch_norm_act import batch_norm_act
from .channel_scale import channel_scale
from .dwconv import check_dwconv_args, dwconv2d, dwconv2d_reference
from .elastic_dwconv import elastic_dwconv2d, transform_chain
from .kernel_transform import kernel_transform, kernel_transform_reference
from .linear import pointwise_conv2d, pointwise_conv2d_act, sliced_linear
from .sliced_conv2d import sliced_conv2d

if _backend._why_unusable("triton", None) is None:
    _dwconv_mod._register_triton()
    _kernel_transform_mod._register_triton()
    _linear_mod._register_triton()

__all__ = [
    "batch_norm_act",
    "channel_scale",
    "check_dwconv_args",
    "dwconv2d",
    "dwconv2d_reference",
    "elastic_dwconv2d",
    "kernel_transform",
    "kernel_transform_reference",
    "pointwise_conv2d",
    "pointwise_conv2d_act",
    "sliced_conv2d",
    "sliced_linear",
    "transform_chain",
]

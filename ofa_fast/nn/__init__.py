"""Drop-in modules with OFA's names and state_dict keys, running ofa_fast's kernels."""
from .dynamic_op import (DynamicBatchNorm2d, DynamicConv2d, DynamicGroupConv2d, DynamicGroupNorm,
                         DynamicLinear, DynamicSE, DynamicSeparableConv2d)

__all__ = [
    "DynamicBatchNorm2d",
    "DynamicConv2d",
    "DynamicGroupConv2d",
    "DynamicGroupNorm",
    "DynamicLinear",
    "DynamicSE",
    "DynamicSeparableConv2d",
]

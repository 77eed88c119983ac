"""Drop-in modules with OFA's names and state_dict keys, running ofa_fast's kernels."""
from .dynamic_op import DynamicSeparableConv2d

__all__ = ["DynamicSeparableConv2d"]

"""Drop-in modules with OFA's names, configs and state_dict keys, running ofa_fast's
kernels: the dynamic ops (dynamic_op), the dynamic layers (dynamic_layers), the static
layers they produce (layers) and OFA's helpers (utils)."""
from .dynamic_op import (DynamicBatchNorm2d, DynamicConv2d, DynamicGroupConv2d, DynamicGroupNorm,
                         DynamicLinear, DynamicSE, DynamicSeparableConv2d)
from .dynamic_layers import (DynamicConvLayer, DynamicLinearLayer, DynamicMBConvLayer,
                             DynamicResNetBottleneckBlock)
from .fused import fusion, fusion_enabled
from .layers import (ConvLayer, IdentityLayer, LinearLayer, MBConvLayer, MultiHeadLinearLayer,
                     My2DLayer, ResidualBlock, ResNetBottleneckBlock, ZeroLayer,
                     set_layer_from_config)
from .utils import (Hsigmoid, Hswish, MyGlobalAvgPool2d, MyModule, MyNetwork, SEModule,
                    ShuffleLayer, adjust_bn_according_to_idx, build_activation, copy_bn,
                    get_bn_param, get_same_padding, init_models, make_divisible, min_divisible_value,
                    replace_bn_with_gn, set_bn_param, sub_filter_start_end, val2list)

__all__ = [
    # dynamic ops
    "DynamicBatchNorm2d", "DynamicConv2d", "DynamicGroupConv2d", "DynamicGroupNorm",
    "DynamicLinear", "DynamicSE", "DynamicSeparableConv2d",
    # dynamic layers
    "DynamicConvLayer", "DynamicLinearLayer", "DynamicMBConvLayer",
    "DynamicResNetBottleneckBlock",
    # static layers
    "ConvLayer", "IdentityLayer", "LinearLayer", "MBConvLayer", "MultiHeadLinearLayer",
    "My2DLayer", "ResidualBlock", "ResNetBottleneckBlock", "ZeroLayer", "set_layer_from_config",
    # helpers
    "Hsigmoid", "Hswish", "MyGlobalAvgPool2d", "MyModule", "MyNetwork", "SEModule",
    "ShuffleLayer", "adjust_bn_according_to_idx", "build_activation", "copy_bn", "get_bn_param",
    "get_same_padding", "init_models", "make_divisible", "min_divisible_value", "replace_bn_with_gn",
    "set_bn_param", "sub_filter_start_end", "val2list",
    # eval-mode fusion switch
    "fusion", "fusion_enabled",
]

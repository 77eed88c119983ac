// The memory format an op's output keeps: the input's (contiguous wins when both
// apply, e.g. 1x1 images); for other strides, what PyTorch suggests.
// ofa_fast/ops/_common.py (output_memory_format) mirrors this for the fake kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace ofa_fast {

inline at::MemoryFormat kept_memory_format(const at::Tensor& x) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return x.suggest_memory_format();
}

}  // namespace ofa_fast

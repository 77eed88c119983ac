// The ofa_fast._C extension module: op schemas (each family registers its own,
// next to its kernels) and a small Python module telling what was built.
//
// Ops (namespace ofa_fast), all with CPU and, when built with CUDA, CUDA kernels:
//   dwconv2d, dwconv2d_backward_input, dwconv2d_backward_weight   csrc/dwconv/
//   kernel_transform, kernel_transform_backward                   csrc/kernel_transform/
//   sliced_linear(_backward), pointwise_conv2d(_backward)          csrc/sliced/
//   channel_scale(_backward) (SE's x * s, fused backward)           csrc/se/
//   batch_norm_act(_backward) (BN + activation, CPU)                csrc/bn/
//   autograd (Autograd key) of dwconv2d, kernel_transform, sliced_linear, pointwise_conv2d,
//   channel_scale, batch_norm_act: csrc/autograd/
#include <torch/library.h>

#ifdef OFA_FAST_PYTHON_MODULE
#include <Python.h>
#endif

namespace ofa_fast {
void register_dwconv_schemas(torch::Library& m);
void register_kernel_transform_schemas(torch::Library& m);
void register_sliced_schemas(torch::Library& m);
void register_se_schemas(torch::Library& m);
void register_bn_schemas(torch::Library& m);
}  // namespace ofa_fast

TORCH_LIBRARY(ofa_fast, m) {
  ofa_fast::register_dwconv_schemas(m);
  ofa_fast::register_kernel_transform_schemas(m);
  ofa_fast::register_sliced_schemas(m);
  ofa_fast::register_se_schemas(m);
  ofa_fast::register_bn_schemas(m);
}

#ifdef OFA_FAST_PYTHON_MODULE  // setup.py's build; the CMake build is a plain op library

#ifndef OFA_FAST_CUDA_ARCHS
#define OFA_FAST_CUDA_ARCHS ""
#endif

extern "C" {
// Importing ofa_fast._C loads this library, which runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C",
                                   "ofa_fast compiled kernels (ops live in torch.ops.ofa_fast)",
                                   -1, nullptr};
  PyObject* m = PyModule_Create(&def);
  if (m == nullptr) return nullptr;
#ifdef OFA_FAST_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  PyModule_AddStringConstant(m, "CUDA_ARCHS", OFA_FAST_CUDA_ARCHS);
  return m;
}
}

#endif  // OFA_FAST_PYTHON_MODULE

"""Build of ofa_fast._C: the C++ CPU kernels always, the CUDA kernels when possible.

Build switches (environment variables):
  OFA_FAST_CUDA=auto|1|0   auto (default): build the CUDA kernels when torch is a CUDA
                           build and nvcc is found (no GPU needed); 1: require them; 0: skip.
  TORCH_CUDA_ARCH_LIST     CUDA archs to build, e.g. "8.0;9.0". Default: the visible GPU's
                           arch, else "8.0;8.6;9.0+PTX".
  CUDA_HOME                the CUDA toolkit; default: found from nvcc on the PATH.
  MAX_JOBS                 parallel compile jobs (ninja).
  OFA_FAST_DEBUG=1         -O0 -g builds.
Install with `pip install --no-build-isolation .` so the build sees the installed torch.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """The toolkit root, found before torch.utils.cpp_extension guesses it: nvcc on the
    PATH may be a wrapper script outside the toolkit (then torch guesses wrong)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        try:  # nvcc reports its own install root in a dry run
            out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True,
                                 timeout=30).stderr
            for line in out.splitlines():
                if "TOP=" in line:
                    candidates.append(os.path.normpath(line.split("TOP=", 1)[1].strip()))
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if os.path.exists(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    mode = os.environ.get("OFA_FAST_CUDA", "auto").lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"OFA_FAST_CUDA={mode!r}: expected auto, 1 or 0")
    if mode == "0":
        return False
    why_not = None
    if torch.version.cuda is None:
        why_not = f"torch {torch.__version__} is not a CUDA build"
    elif not _cuda_home or not os.path.exists(os.path.join(_cuda_home, "bin", "nvcc")):
        why_not = "nvcc / CUDA_HOME not found"
    if why_not:
        if mode == "1":
            sys.exit(f"OFA_FAST_CUDA=1 but {why_not}")
        print(f"ofa_fast: building without CUDA kernels ({why_not})", file=sys.stderr)
        return False
    return True


def _cuda_arch_list():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i)
                        for i in range(torch.cuda.device_count())})
        return ";".join(archs)
    return "8.0;8.6;9.0+PTX"


def _extra_cuda_includes():
    """torch's CUDA headers include cuBLAS/cuSPARSE headers that pip's nvidia-* wheels
    carry (site-packages/nvidia/.../include) when the toolkit itself lacks them."""
    dirs = []
    for base in {os.path.dirname(os.path.dirname(torch.__file__))}:
        dirs += glob.glob(os.path.join(base, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(base, "nvidia", "*", "include"))
    return sorted(d for d in set(dirs) if os.path.isdir(d))


def _openmp_flags():
    """at::parallel_for is inline OpenMP in torch's headers: without -fopenmp the kernels
    would run on one thread. Linking libgomp.so.1 reuses the one torch has loaded."""
    if "OpenMP" not in torch.__config__.parallel_info() or sys.platform in ("win32", "darwin"):
        return []
    return ["-fopenmp"]


def extensions():
    debug = os.environ.get("OFA_FAST_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    omp = _openmp_flags()
    cxx = opt + ["-Wno-psabi", "-fvisibility=hidden"] + omp if os.name != "nt" else ["/O2"]
    sources = ["csrc/ofa_fast.cpp"] + sorted(glob.glob("csrc/*/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc")]
    base_defines = [("OFA_FAST_PYTHON_MODULE", None)]
    if _want_cuda():
        archs = _cuda_arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        print(f"ofa_fast: building CUDA kernels for {archs} with {_cuda_home}", file=sys.stderr)
        defines = base_defines + [("OFA_FAST_WITH_CUDA", None),
                                  ("OFA_FAST_CUDA_ARCHS", '"%s"' % archs)]
        return [CUDAExtension(
            "ofa_fast._C",
            sources + sorted(glob.glob("csrc/*/*.cu")),
            include_dirs=include_dirs + _extra_cuda_includes(),
            define_macros=defines,
            extra_compile_args={"cxx": cxx, "nvcc": opt + ["-lineinfo", "--expt-relaxed-constexpr"]},
            extra_link_args=omp,
        )]
    return [CppExtension("ofa_fast._C", sources, include_dirs=include_dirs,
                         define_macros=base_defines, extra_compile_args={"cxx": cxx},
                         extra_link_args=omp)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
)

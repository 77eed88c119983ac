"""The CUDA kernels' device code, run on the CPU. csrc/*/*.cu compiled as C++ against
tests/cuda_emulation/cuda_emulator.h (a block's threads as fibers, run first to last and
last to first between barriers; __syncthreads, warp shuffles, shared memory and launch
limits held to CUDA's rules, misuse an error) and
checked against the float64 reference: every kernel path, named from the launch log,
over the kernel sizes, strides, dilations, paddings, formats, awkward sizes and dtypes of
the CUDA tests. What this cannot show: timing, and races between blocks (blocks run one
after another); the GPU check (benchmarks/gpu_check.sh) runs the real thing."""
import functools
import os
import platform
import re
import shutil
import subprocess

import pytest
import torch

from ofa_fast.ops import dwconv2d_reference, kernel_transform_reference

from _helpers import ConvCase, assert_close, conv_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "tests", "cuda_emulation")

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="the CUDA emulator builds with a C++ compiler on Linux")


@pytest.fixture(scope="module")
def emu_module():
    """The emulated CUDA ops, built once into build/cuda_emulated (ninja rebuilds what a
    changed source or header touches). OFA_FAST_EMU_SANITIZE=address builds them with
    AddressSanitizer (an out-of-bounds read or write in any kernel ends the run with a
    report; run it as .ci/run does: libasan and libstdc++ in LD_PRELOAD,
    ASAN_OPTIONS=detect_leaks=0, pytest --capture=sys)."""
    from torch.utils.cpp_extension import load
    sanitize = os.environ.get("OFA_FAST_EMU_SANITIZE", "")
    if sanitize not in ("", "address"):
        raise ValueError(f"OFA_FAST_EMU_SANITIZE={sanitize!r}: the allowed values are '' and 'address'")
    name, cflags, ldflags = "ofa_fast_cuda_emulated", ["-O2", "-DOFA_FAST_CUDA_EMULATION",
                                                      "-Wno-unknown-pragmas"], []
    if sanitize:
        name += "_asan"
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
        ldflags += ["-fsanitize=address"]
    build = os.path.join(ROOT, "build", name)
    os.makedirs(build, exist_ok=True)
    sources = [os.path.join(EMU, f) for f in
               ("module.cpp", "dwconv_cuda_emulated.cpp", "kernel_transform_cuda_emulated.cpp")]
    sources += [os.path.join(ROOT, "csrc", d, f"{d}_common.cpp") for d in ("dwconv", "kernel_transform")]
    module = load(name, sources, build_directory=build, extra_cflags=cflags, extra_ldflags=ldflags,
                  extra_include_paths=[os.path.join(ROOT, "csrc"), EMU])
    module.set_sm_count(4)
    module.take_launches()
    return module


@pytest.fixture(params=["first_to_last", "last_to_first"])
def emu(emu_module, request):
    """The emulated ops, a block's threads run in either order between barriers (a
    missing barrier shows in one of them)."""
    emu_module.set_reverse(request.param == "last_to_first")
    yield emu_module
    emu_module.set_reverse(False)


@functools.lru_cache(maxsize=None)
def _kernel_names(path):
    """Offset in the library -> kernel name with its template arguments."""
    out = subprocess.run(["nm", "-C", "--defined-only", path], check=True, capture_output=True,
                         text=True).stdout
    names = {}
    for line in out.splitlines():
        m = re.match(r"([0-9a-f]+) [tTwW] .*?(\w+_kernel(?:<[^()]*>)?)\(", line)
        if m:
            names[int(m.group(1), 16)] = m.group(2).replace("c10::", "")
    return names


@functools.lru_cache(maxsize=None)
def _launch_bounds():
    """Kernel name -> the thread count its __launch_bounds__ declares (from the .cu
    sources; the emulator drops the attribute, so the tests hold launches to it)."""
    bounds = {}
    for d in ("dwconv", "kernel_transform"):
        src = open(os.path.join(ROOT, "csrc", d, f"{d}_cuda.cu")).read()
        consts = dict(re.findall(r"constexpr int (\w+) = (\d+);", src))
        for value, name in re.findall(r"__launch_bounds__\((\w+)\)\s+(\w+)\(", src):
            bounds[name] = int(consts.get(value, value))
    return bounds


def launched(emu, fn):
    """Runs fn(); returns what it returned and the names of the kernels it launched
    (each launch checked against its kernel's __launch_bounds__)."""
    emu.take_launches()
    result = fn()
    names = _kernel_names(emu.__file__)
    ran = set()
    for offset, grid, block, smem in emu.take_launches():
        assert offset in names, f"a launch of an unnamed function at offset {offset:#x}"
        name = names[offset]
        bound = _launch_bounds()[name.split("<")[0]]
        assert block[0] * block[1] * block[2] <= bound, \
            f"{name}: block {block} exceeds its __launch_bounds__({bound})"
        ran.add(name)
    return result, ran


# ---- the emulator keeps CUDA's rules ------------------------------------------------

@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_emulator_block_reduction(emu, threads):
    x = torch.randn(3 * threads)
    assert torch.allclose(emu.block_sums(x, threads), x.view(3, threads).sum(1), atol=1e-4)


@pytest.mark.parametrize("which,threads,message", [
    ("divergent_barrier", 64, "reached by 32 of its 64 threads"),
    ("early_exit_barrier", 64, "48 have exited"),
    ("partial_warp_shuffle", 48, "last warp is partial"),
    ("too_much_shared_memory", 64, "49156 bytes of dynamic shared memory"),
])
def test_emulator_refuses_what_cuda_does_not_define(emu, which, threads, message):
    with pytest.raises(RuntimeError, match=message):
        emu.run_bad_kernel(which, threads)


# ---- elastic depthwise convolution ---------------------------------------------------

def _inputs(case, dtype, strided_weight=False):
    x = torch.randn(case.N, case.C, case.H, case.W, dtype=dtype)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    if strided_weight:  # the max weight read through strides that are not its own
        w = torch.randn(case.C_max, 1, case.K, 2 * case.K, dtype=dtype)[..., ::2]
    else:
        w = torch.randn(case.C_max, 1, case.K, case.K, dtype=dtype)
    return x, w


def check_dwconv(emu, case, dtype, padding=None, strided_weight=False):
    p = case.padding if padding is None else padding
    x, w = _inputs(case, dtype, strided_weight)
    args = (case.k, case.stride, case.dilation, p)
    y, _ = launched(emu, lambda: emu.dwconv2d(x, w, *args))
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    y64 = dwconv2d_reference(x64, w64, *args)
    g = torch.randn(y64.shape, dtype=dtype)
    if case.channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    gx64, gw64 = torch.autograd.grad(y64, (x64, w64), g.double())
    gx, _ = launched(emu, lambda: emu.dwconv2d_backward_input(g, x, w, *args))
    gw, _ = launched(emu, lambda: emu.dwconv2d_backward_weight(g, x, w, *args))
    assert_close(y, y64, dtype, f"{case} p{p} output")
    assert_close(gx, gx64, dtype, f"{case} p{p} grad input")
    assert_close(gw, gw64, dtype, f"{case} p{p} grad weight")
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)
    assert y.dtype == gx.dtype == gw.dtype == dtype and gw.shape == w.shape
    return y, gx, gw


CASES = conv_cases(full=True)
LOW_PRECISION_CASES = conv_cases(full=False)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dwconv_float32(emu, case):
    check_dwconv(emu, case, torch.float32)


@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_dwconv_other_dtypes(emu, dtype, case):
    check_dwconv(emu, case, dtype)


@pytest.mark.parametrize("k,stride,dilation,padding,size", [
    (3, 1, 1, 4, 6), (5, 2, 1, 9, 7), (7, 1, 1, 0, 9), (3, 2, 2, 5, 8), (3, 1, 65, 65, 5),
    (5, 1, 70, 140, 3), (7, 2, 1, 0, 7)])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_dwconv_any_padding_and_dilation(emu, k, stride, dilation, padding, size, cl):
    """Padding larger than the reach (the stride-1 input gradient then pads negatively),
    none at all, and dilations beyond what the tiles take (the direct kernels)."""
    case = ConvCase(2, 6, 8, size, size + 1, 7, k, stride, dilation, cl)
    check_dwconv(emu, case, torch.float32, padding=padding)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("sm_count", [1, 132])
@pytest.mark.parametrize("C", [3, 40, 70])
def test_dwconv_grid_shapes(emu, C, sm_count, cl):
    """Channel counts around the channels_last kernels' 32 lanes, and grids sized for one
    SM and for an H100's 132 (one chunk of the filter gradient per channel, and many)."""
    emu.set_sm_count(sm_count)
    try:
        for k, s in [(3, 1), (7, 2)]:
            check_dwconv(emu, ConvCase(3, C, C + 2, 11, 13, 7, k, s, 1, cl), torch.float32)
    finally:
        emu.set_sm_count(4)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("C,H,k,s", [(16, 112, 3, 1), (96, 112, 7, 2), (1152, 7, 7, 1)],
                         ids=["16x112x112_k3", "96x112x112_k7s2", "1152x7x7_k7"])
def test_dwconv_network_shapes(emu, C, H, k, s, cl):
    """Layers of OFA's MobileNetV3 at 224 px (w1.2's widest): many tiles per plane, and
    many channel blocks."""
    check_dwconv(emu, ConvCase(2, C, C, H, H, 7, k, s, 1, cl), torch.float32)


def test_dwconv_reads_the_weight_through_its_strides(emu):
    for cl in (False, True):
        check_dwconv(emu, ConvCase(2, 5, 9, 9, 9, 7, 5, 1, 1, cl), torch.float32, strided_weight=True)


def test_dwconv_fused_backward_and_its_mask(emu):
    case = ConvCase(2, 6, 8, 9, 8, 7, 5, 2, 1, True)
    x, w = _inputs(case, torch.float32)
    args = (case.k, case.stride, case.dilation, case.padding)
    g = torch.randn_like(emu.dwconv2d(x, w, *args))
    gx, gw = emu.dwconv2d_backward(g, x, w, *args, [True, True])
    assert torch.equal(gx, emu.dwconv2d_backward_input(g, x, w, *args))
    assert torch.equal(gw, emu.dwconv2d_backward_weight(g, x, w, *args))
    gx, gw = emu.dwconv2d_backward(g, x, w, *args, [False, True])
    assert gx.numel() == 0 and gw.shape == w.shape


def expected_kernels(cl, k, s, d):
    """The kernels each op launches (float32), as dwconv_cuda.cu's host code picks them."""
    fixed = d == 1
    kn = f"{k}, {s}"
    if cl:
        fwd = f"fwd_nhwc_kernel<float, {kn}>" if fixed else "fwd_direct_kernel<float>"
        if s == 1:
            bwd = f"fwd_nhwc_kernel<float, {k}, 1>" if fixed else "fwd_direct_kernel<float>"
        else:  # stride 2 takes any dilation
            bwd = f"bwd_input_nhwc_kernel<float, {kn}>"
        wgrad = f"wgrad_nhwc_kernel<float, {kn}>" if fixed else "wgrad_direct_kernel<float>"
    else:
        tiled = "fwd_nchw_tiled_kernel<float, {}>"
        fwd = tiled.format(kn if fixed else "0, 0") if d <= 64 else "fwd_direct_kernel<float>"
        if s == 1:
            bwd = tiled.format(f"{k}, 1" if fixed else "0, 0") if d <= 64 else "fwd_direct_kernel<float>"
        else:
            bwd = f"bwd_input_direct_kernel<float, {kn}>"
        wgrad = f"wgrad_nchw_tiled_kernel<float, {kn}>" if fixed else "wgrad_direct_kernel<float>"
    return {fwd}, {bwd}, {wgrad, "wgrad_finish_kernel<float>"}


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("k,s,d", [(k, s, 1) for k in (3, 5, 7) for s in (1, 2)] +
                         [(3, 1, 2), (5, 2, 2), (3, 1, 65)])
def test_dwconv_kernel_paths(emu, cl, k, s, d):
    """Each (layout, k, stride, dilation) runs the kernels the host code is meant to pick,
    so the cases above exercise every one of them."""
    case = ConvCase(2, 5, 6, 9, 10, 7, k, s, d, cl)
    x, w = _inputs(case, torch.float32)
    args = (k, s, d, d * (k // 2))
    y, fwd = launched(emu, lambda: emu.dwconv2d(x, w, *args))
    g = torch.randn_like(y)
    _, bwd = launched(emu, lambda: emu.dwconv2d_backward_input(g, x, w, *args))
    _, wgrad = launched(emu, lambda: emu.dwconv2d_backward_weight(g, x, w, *args))
    assert (fwd, bwd, wgrad) == expected_kernels(cl, k, s, d)


# ---- kernel transform -----------------------------------------------------------------

@pytest.mark.parametrize("chain,C,C_max", [([7, 5, 3], 10, 12), ([7, 5], 12, 12), ([5, 3], 3, 8),
                                           ([7, 3], 17, 20), ([9, 7, 5, 3], 4, 6), ([7, 5, 3], 1, 1),
                                           ([7, 5, 3], 300, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_kernel_transform(emu, dtype, chain, C, C_max):
    K = chain[0]
    w = torch.randn(C_max, 1, K, K, dtype=dtype)
    mats = [torch.randn(b * b, b * b, dtype=dtype) / b for b in chain[1:]]
    (f, ran) = launched(emu, lambda: emu.kernel_transform(w, mats, chain, C))
    assert ran == {f"kt_forward_kernel<{_cname(dtype)}>"}
    g = torch.randn(f.shape, dtype=dtype)
    grads, ran = launched(emu, lambda: emu.kernel_transform_backward(g, w, mats, chain, C))
    assert ran == {f"kt_backward_chain_kernel<{_cname(dtype)}>", f"kt_matrix_grad_kernel<{_cname(dtype)}>"}
    w64 = w.double().requires_grad_()
    m64 = [m.double().requires_grad_() for m in mats]
    f64 = kernel_transform_reference(w64, m64, chain, C)
    want = torch.autograd.grad(f64, [w64] + m64, g.double())
    assert_close(f, f64, dtype, f"{chain} filter")
    assert len(grads) == len(want)
    for i, (a, b) in enumerate(zip(grads, want)):
        assert a.dtype == dtype
        assert_close(a, b, dtype, f"{chain} grad {'weight' if i == 0 else f'matrix {i - 1}'}")


def _cname(dtype):
    return {torch.float32: "float", torch.float64: "double", torch.float16: "Half",
            torch.bfloat16: "BFloat16"}[dtype]

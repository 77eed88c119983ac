#!/usr/bin/env bash
# The one GPU check, for a machine with an NVIDIA GPU and no network (about 5-8 min):
#   1. builds ofa_fast (editable) with its CUDA kernels for the visible GPU;
#   2. runs the CUDA and Triton tests (and a CPU smoke subset);
#   3. runs the GPU benchmarks (pytest-benchmark);
#   4. prints the GPU report table last.
# Needs a CUDA build of torch, triton, pytest, pytest-benchmark. The baseline `ofa` package
# (pure Python) is installed from .whl/*.whl when carried there, e.g. prepared with
#   pip download ofa==0.1.0.post202307202001 --no-deps -d .whl
# Logs go to $OUT (or /tmp/ofa_fast_gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ofa_fast_gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-16}"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  step "installing carried wheels (.whl/) into /tmp/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

step "build (nvcc for the visible GPU)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if ! OFA_FAST_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . \
    > "$OUT/build.log" 2>&1; then
  # a bare machine may lack what pip's editable build needs (e.g. `wheel` beside an old
  # setuptools: "invalid command 'bdist_wheel'"): build in place and run from the checkout,
  # ofa_fast.triton_kernels linked to triton_kernels/ as the install maps it
  tail -3 "$OUT/build.log"
  echo "pip's editable install failed; building in place (setup.py build_ext --inplace)"
  if ! OFA_FAST_CUDA=1 python3 setup.py build_ext --inplace >> "$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  [ -e ofa_fast/triton_kernels ] || ln -s ../triton_kernels ofa_fast/triton_kernels
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m ofa_fast info

step "CUDA and Triton tests"
# Triton compiles a kernel per (kernel size, stride, dilation, dtype, layout): spread them
# over the CPU cores when pytest-xdist is there
xdist=""
python3 -c "import xdist" 2>/dev/null && xdist="-n 8"
python3 -m pytest -q -p no:cacheprovider $xdist tests/test_dwconv.py tests/test_kernel_transform.py \
  tests/test_sliced_ops.py -k "gpu or cuda or opcheck or compile" 2>&1 | tee "$OUT/tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# the Triton GEMM tests run on the GPU when there is one
python3 -m pytest -q -p no:cacheprovider $xdist tests/test_triton_linear.py 2>&1 \
  | tee -a "$OUT/tests.log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "GPU benchmarks (pytest-benchmark)"
python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_dwconv.py --benchmark-only \
  -k "cuda and (k7 or k3)" --benchmark-json="$OUT/bench.json" 2>&1 \
  | tee "$OUT/bench.log" | grep -A40 "ofa_fast ratios" | grep "^cuda" | head -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "GPU report"
python3 benchmarks/gpu_report.py --csv "$OUT/gpu_report.csv" 2>&1 | tee "$OUT/report.log" | tail -45
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED) (logs in $OUT)"
exit $status

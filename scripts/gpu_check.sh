#!/usr/bin/env bash
# One-call GPU check for core/warp on the device machine (H100, LibTorch 2.11
# + CUDA 13): builds the warp targets against the Python wheel's LibTorch with
# Debian's Abseil/GTest unpacked from .carry/*.deb, runs the CPU and GPU tests,
# then the benchmark (table last). Usage, from the repository root:
#   mkdir -p .carry && (cd .carry && apt-get download libabsl-dev \
#     libabsl20220623 libgtest-dev libgmock-dev) && \
#     cp canvas_elephants_5640x3172.jpg .carry/   # optional real photo
#   bash scripts/gpu_check.sh            # writes $OUT/log when OUT is set
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
DEPS=/tmp/regserve_deps
BUILD=${BUILD:-build-gpu}
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda)'

step "unpack carried Debian packages"
mkdir -p "$DEPS"
for d in .carry/*.deb; do dpkg -x "$d" "$DEPS" && echo "unpacked $d"; done
export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"

step "configure"
cmake -S . -B "$BUILD" -G Ninja -DREGSERVE_GPU_SUBSET=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$DEPS/usr;$TORCH_PREFIX" >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
grep -E "regserve:|CUDA" "$OUT/configure.log" | head -5

step "build"
ninja -C "$BUILD" -j "$(nproc)" warp_test warp_gpu_test warp_benchmark \
  hardware_test plan_test scheduler_test types_test token_store_test regserve-plan \
  multi_gpu_benchmark \
  >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A5 "$OUT/build.log" | head -60; exit 1; }
echo "build ok"

CANVAS_ARGS=()
if [ -f .carry/canvas_elephants_5640x3172.jpg ]; then
  step "decode canvas photo"
  python3 - <<'PY' && CANVAS_ARGS=(--canvas_raw=/tmp/canvas.rgb)
from PIL import Image
im = Image.open('.carry/canvas_elephants_5640x3172.jpg').convert('RGB')
assert im.size == (5640, 3172), im.size
open('/tmp/canvas.rgb', 'wb').write(im.tobytes())
print('canvas', im.size)
PY
fi

step "tests"
"$BUILD/core/warp/warp_test" --gtest_brief=1 2>&1 | tail -5
"$BUILD/core/warp/warp_gpu_test" 2>&1 | grep -E "OK|FAILED|SKIPPED|Failure|error|differs|seed|Expected|Which" | head -40

step "unit tests of the GPU subset (LibTorch 2.11 + CUDA build)"
for t in core/common/types_test core/auth/token_store_test core/hardware/hardware_test \
         core/plan/plan_test core/scheduler/scheduler_test; do
  "$BUILD/$t" --gtest_brief=1 2>&1 | tail -2
done

step "VRAM probe vs nvidia-smi, and the planner on this machine"
nvidia-smi --query-gpu=index,name,memory.used,memory.free,memory.total --format=csv
"$BUILD/core/plan/regserve-plan" 18960x14960x3
"$BUILD/core/plan/regserve-plan" 18960x14960x3 --vram_budget=2G
"$BUILD/core/plan/regserve-plan" 18960x14960x3 --vram_budget=512M
"$BUILD/core/plan/regserve-plan" 25000x20000x3 --vram_budget=512M --ram_budget=6G

step "multi-GPU benchmark (every visible GPU; on one GPU it checks the path)"
"$BUILD/core/warp/multi_gpu_benchmark" --iters=5 2>&1

step "benchmark"
"$BUILD/core/warp/warp_benchmark" --cpu_threads="$(nproc)" "${CANVAS_ARGS[@]}" "$@" 2>&1

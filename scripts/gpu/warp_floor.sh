#!/usr/bin/env bash
# One short device call (issue 14, item 7): the one-pass 283.6 MP warp
# against the transfer floors, the duplex floor included (H2D and D2H at
# once), with CUDA checked against the CPU on the same image. Builds only
# warp_benchmark of the GPU subset against the machine's LibTorch, with
# Debian's Abseil/GTest from .carry/*.deb (scripts/gpu_check.sh says how to
# fill it). Run as: run(command="bash scripts/gpu/warp_floor.sh", carry=[".carry"])
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/warp_floor_out}
DEPS=/tmp/regserve_deps
BUILD=/tmp/build-warp-floor
mkdir -p "$OUT" "$DEPS"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for d in .carry/*.deb; do dpkg -x "$d" "$DEPS"; done
export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B "$BUILD" -G Ninja -DREGSERVE_GPU_SUBSET=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$DEPS/usr;$TORCH_PREFIX" >"$OUT/configure.log" 2>&1 ||
  { tail -30 "$OUT/configure.log"; exit 1; }
echo "configured at +${SECONDS} s"
ninja -C "$BUILD" -j "$(nproc)" warp_benchmark >"$OUT/build.log" 2>&1 ||
  { grep -E "error" -A5 "$OUT/build.log" | head -40; exit 1; }
echo "built at +${SECONDS} s"
"$BUILD/core/warp/warp_benchmark" --device=cuda --reps=5 --baseline=false \
  --big_megapixels=0 --cpu_threads="$(nproc)" 2>&1 | tee "$OUT/warp_floor.log"
echo "done at +${SECONDS} s"

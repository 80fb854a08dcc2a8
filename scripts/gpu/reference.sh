#!/usr/bin/env bash
# Here (the CPU machine): the reference for build_and_run.sh's step "small".
# Runs the ITK brain pair through regserved + regctl exactly as the device
# does (affine, --elastix_threads=2, warp on the CPU) and keeps the result in
# .gpu-debs/extra/ref/, which travels with the last device call.
#   BUILD_DIR=build-gpuh bash scripts/gpu/reference.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
REF=.gpu-debs/extra/ref
WORK=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill -TERM $PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
rm -rf "$REF"; mkdir -p "$REF"
"$BUILD_DIR/server/regserved" --listen 127.0.0.1:0 --data_dir "$WORK/data" \
  --elastix_threads=2 >"$WORK/out" 2>"$WORK/err" &
PID=$!
ADDR=""
for _ in $(seq 1 300); do
  ADDR=$(sed -n 's/^regserved listening on //p' "$WORK/out" | head -1)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/err"; exit 1; }
"$BUILD_DIR/client/regctl" --server "$ADDR" submit \
  --fixed tests/data/itk_brain/BrainProtonDensitySlice.png \
  --moving tests/data/itk_brain/BrainProtonDensitySliceR10X13Y17.png \
  --output "$REF/brain_cpu.png" --transform affine --device cpu \
  --transform-out "$REF/brain_cpu_tf"
git rev-parse HEAD >"$REF/commit"
ls -la "$REF"

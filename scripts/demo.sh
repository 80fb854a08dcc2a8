#!/usr/bin/env bash
# The README demo: installs the packages, builds, starts regserved on a free
# loopback port with a temporary data_dir, registers a sample pair with
# regctl, prints where the result is, and stops the daemon with SIGTERM.
# No GPU needed (the warp runs on the CPU when there is none).
#   bash scripts/demo.sh            # output in out/demo_registered.png
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BUILD_DIR=${BUILD_DIR:-build}

bash scripts/setup.sh
mkdir -p "$BUILD_DIR"
if ! cmake -S . -B "$BUILD_DIR" -G Ninja >"$BUILD_DIR/configure.log" 2>&1; then
  cat "$BUILD_DIR/configure.log"; exit 1
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" --target regserved regctl

WORK="$(mktemp -d)"
DAEMON_PID=""
cleanup() {
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BUILD_DIR/server/regserved" --listen 127.0.0.1:0 --data_dir "$WORK/data" \
  >"$WORK/regserved.out" 2>"$WORK/regserved.err" &
DAEMON_PID=$!

ADDR=""
for _ in $(seq 1 600); do
  ADDR="$(sed -n 's/^regserved listening on //p' "$WORK/regserved.out" | head -n1)"
  [ -n "$ADDR" ] && break
  if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
    cat "$WORK/regserved.err" >&2; echo "demo: regserved did not start" >&2; exit 1
  fi
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/regserved.err" >&2; echo "demo: no listening line" >&2; exit 1; }
echo "demo: regserved is listening on $ADDR"

mkdir -p out
FIXED=tests/data/itk_brain/BrainProtonDensitySlice.png
MOVING=tests/data/itk_brain/BrainProtonDensitySliceR10X13Y17.png
"$BUILD_DIR/client/regctl" --server "$ADDR" submit \
  --fixed "$FIXED" --moving "$MOVING" \
  --output out/demo_registered.png --transform affine \
  --transform-out out/demo_transform

kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID"
DAEMON_PID=""
echo "demo: registered image: $ROOT/out/demo_registered.png"
echo "demo: elastix transform: $ROOT/out/demo_transform/"
echo "demo: (fixed: $FIXED, moving: $MOVING)"

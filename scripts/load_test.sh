#!/usr/bin/env bash
# Load test: 32 concurrent clients submit small jobs (the ITK brain pair,
# rigid) to a regserved on loopback for a bounded time; every job must
# complete and the daemon's RSS after the load must be within 10% of its
# baseline (taken after one warm-up job). Prints jobs, jobs/s, p50/p95
# latency and RSS before/peak/after (docs/benchmarks.md, "Load").
#   bash scripts/load_test.sh                 # 32 clients, 60 s
#   LOAD_CLIENTS=8 LOAD_SECONDS=20 BUILD_DIR=build bash scripts/load_test.sh
# Extra daemon flags: LOAD_DAEMON_FLAGS="--cpu_slots=2 --elastix_threads=1".
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
CLIENTS=${LOAD_CLIENTS:-32}
SECONDS_RUN=${LOAD_SECONDS:-60}
JOBS=${JOBS:-$(nproc)}

if [ ! -f "$BUILD_DIR/build.ninja" ] && [ ! -f "$BUILD_DIR/Makefile" ]; then
  mkdir -p "$BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -G Ninja >"$BUILD_DIR/configure.log" 2>&1 ||
    { cat "$BUILD_DIR/configure.log"; exit 1; }
fi
cmake --build "$BUILD_DIR" -j "$JOBS" --target regserved regserve_load

tmp=$(mktemp -d)
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"; wait "$daemon_pid" || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck disable=SC2086
"$BUILD_DIR/server/regserved" --listen=127.0.0.1:0 --data_dir="$tmp/data" \
  --max_queue=64 ${LOAD_DAEMON_FLAGS:-} >"$tmp/out" 2>"$tmp/err" &
daemon_pid=$!
address=""
for _ in $(seq 600); do
  address=$(sed -n 's/^regserved listening on //p' "$tmp/out")
  [ -n "$address" ] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$tmp/err"; exit 1; }
  sleep 0.1
done
[ -n "$address" ] || { echo "regserved did not start"; cat "$tmp/err"; exit 1; }
echo "regserved $address (pid $daemon_pid), $CLIENTS clients for $SECONDS_RUN s on $(nproc) cores"

status=0
"$BUILD_DIR/tests/robustness/regserve_load" --server="$address" \
  --pid="$daemon_pid" --clients="$CLIENTS" --seconds="$SECONDS_RUN" \
  --fixed=tests/data/itk_brain/BrainProtonDensitySlice.png \
  --moving=tests/data/itk_brain/BrainProtonDensitySliceR10X13Y17.png ||
  status=$?
kill -TERM "$daemon_pid"
wait "$daemon_pid" || { echo "regserved exited with $?"; status=1; }
daemon_pid=""
exit "$status"

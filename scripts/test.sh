#!/usr/bin/env bash
# The test command: installs the packages, builds everything with the
# project's warnings-as-errors, and runs every test with CTest.
#   bash scripts/test.sh            # all tests
#   BUILD_DIR=build-asan CMAKE_ARGS=-DREGSERVE_SANITIZE=ON bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$BUILD_DIR"
# ITK's config prints many harmless warnings about gdcm programs: keep them
# in a log, and show it only when configuring fails.
# shellcheck disable=SC2086
if ! cmake -S . -B "$BUILD_DIR" -G Ninja ${CMAKE_ARGS:-} >"$BUILD_DIR/configure.log" 2>&1; then
  cat "$BUILD_DIR/configure.log"; exit 1
fi
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" ${CTEST_ARGS:-}

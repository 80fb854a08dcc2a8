#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time on
# its corpus (scripts/test.sh's fuzz stage).
#   FUZZ_BUILD_DIR  build folder (default build-fuzz)
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    which targets (default: all three)
# Seeds: tests/fuzz/corpus/<target>/ (and tests/data/bad_images for
# image_io_fuzz). New inputs libFuzzer finds stay in
# <build>/fuzz_corpus/<target>/. A crash, leak or timeout is written to
# tests/fuzz/corpus/<target>/regressions/ (the replay test then fails in
# every build until it is fixed; keep the file) and this script exits 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-60}
JOBS=${JOBS:-$(nproc)}
read -r -a TARGETS <<<"${FUZZ_TARGETS:-image_io_fuzz parameters_fuzz job_spec_fuzz}"

mkdir -p "$BUILD"
if ! CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DREGSERVE_FUZZ=ON \
    >"$BUILD/configure.log" 2>&1; then
  cat "$BUILD/configure.log"; exit 1
fi
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"

failed=()
for t in "${TARGETS[@]}"; do
  bin=$(find "$BUILD" -name "$t" -type f -perm -u+x | head -n 1)
  seeds=("tests/fuzz/corpus/$t")
  max_len=4096
  if [ "$t" = image_io_fuzz ]; then
    seeds+=(tests/data/bad_images)
    max_len=16384
  fi
  work="$BUILD/fuzz_corpus/$t"
  regressions="tests/fuzz/corpus/$t/regressions"
  mkdir -p "$work" "$regressions"
  echo "== $t: ${SECONDS_EACH} s"
  # fast_unwind_on_malloc=0 lets LSan's stacks reach OIIO for the
  # suppression (core/image/oiio_lsan.supp).
  if ASAN_OPTIONS=fast_unwind_on_malloc=0:detect_leaks=1 \
     LSAN_OPTIONS="suppressions=$PWD/core/image/oiio_lsan.supp" \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     "$bin" -max_total_time="$SECONDS_EACH" -timeout=25 -rss_limit_mb=2048 \
       -max_len="$max_len" -print_final_stats=1 \
       -artifact_prefix="$regressions/" "$work" "${seeds[@]}" \
       >"$BUILD/$t.log" 2>&1; then
    grep -E "^(stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb)|Done [0-9]+ runs" "$BUILD/$t.log" || true
  else
    tail -n 60 "$BUILD/$t.log"
    echo "== $t FAILED; the input is in $regressions/"
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failures in ${failed[*]}"; exit 1
fi
echo "fuzz: no crash in ${TARGETS[*]} (${SECONDS_EACH} s each)"

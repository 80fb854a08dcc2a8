#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each on its corpus
# (scripts/test.sh's fuzz stage).
#   FUZZ_BUILD_DIR  build folder (default build-fuzz)
#   FUZZ_SECONDS    explore: run each target this long with a random seed.
#                   Unset (the default, and what CI does): a fixed seed and a
#                   fixed number of runs per target, so that a CI result
#                   repeats; a new finding comes from exploring, and its input
#                   is then kept as a regression.
#   FUZZ_SEED       seed for the fixed mode (default 1)
#   FUZZ_TARGETS    which targets (default: all three)
# Seeds: tests/fuzz/corpus/<target>/ (and tests/data/bad_images for
# image_io_fuzz). New inputs libFuzzer finds stay in
# <build>/fuzz_corpus/<target>/. A crash, leak or timeout is written to
# tests/fuzz/corpus/<target>/regressions/ (the replay test then fails in
# every build until it is fixed; keep the file) and this script exits 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-}
if [ -n "$SECONDS_EACH" ] && ! [[ "$SECONDS_EACH" =~ ^[1-9][0-9]*$ ]]; then
  # libFuzzer reads -max_total_time=0 as "no limit".
  echo "FUZZ_SECONDS must be a positive number of seconds, got '$SECONDS_EACH'"
  exit 2
fi
SEED=${FUZZ_SEED:-1}
JOBS=${JOBS:-$(nproc)}
read -r -a TARGETS <<<"${FUZZ_TARGETS:-image_io_fuzz parameters_fuzz job_spec_fuzz}"

mkdir -p "$BUILD"
if ! CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DREGSERVE_FUZZ=ON \
    >"$BUILD/configure.log" 2>&1; then
  cat "$BUILD/configure.log"; exit 1
fi
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"

# Runs per target in the fixed mode: about half a minute each on a 2-core
# machine (image_io_fuzz decodes ~80 inputs/s under ASan, job_spec_fuzz
# ~16000/s); halved in session 12 to keep CI's whole run within its hour.
runs_for() {
  case "$1" in
    image_io_fuzz) echo 2500 ;;
    parameters_fuzz) echo 50000 ;;
    *) echo 500000 ;;
  esac
}

failed=()
for t in "${TARGETS[@]}"; do
  bin=$(find "$BUILD" -name "$t" -type f -perm -u+x | head -n 1)
  if [ -z "$bin" ]; then
    echo "== $t: not built in $BUILD"
    failed+=("$t")
    continue
  fi
  seeds=("tests/fuzz/corpus/$t")
  max_len=4096
  if [ "$t" = image_io_fuzz ]; then
    seeds+=(tests/data/bad_images)
    max_len=16384
  fi
  regressions="tests/fuzz/corpus/$t/regressions"
  if [ -n "$SECONDS_EACH" ]; then
    # Exploring: keep what libFuzzer finds between runs.
    work="$BUILD/fuzz_corpus/$t"
    budget=(-max_total_time="$SECONDS_EACH")
    echo "== $t: ${SECONDS_EACH} s, random seed"
  else
    # Fixed: start from the committed seeds only, every time.
    work="$BUILD/fuzz_corpus_fixed/$t"
    rm -rf "$work"
    budget=(-seed="$SEED" -runs="$(runs_for "$t")")
    echo "== $t: ${budget[*]}"
  fi
  mkdir -p "$work" "$regressions"
  # fast_unwind_on_malloc=0 lets LSan's stacks reach OIIO for the
  # suppression (core/image/oiio_lsan.supp).
  if ASAN_OPTIONS=fast_unwind_on_malloc=0:detect_leaks=1 \
     LSAN_OPTIONS="suppressions=$PWD/core/image/oiio_lsan.supp" \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     "$bin" "${budget[@]}" -timeout=25 -rss_limit_mb=2048 \
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
echo "fuzz: no crash in ${TARGETS[*]}"

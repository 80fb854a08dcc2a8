#!/usr/bin/env bash
# The test command: installs the packages, checks the formatting and
# (compiling with clang) the thread-safety annotations, builds everything
# with the project's warnings-as-errors, runs every test with CTest, then
# the robustness stages: an AddressSanitizer+UBSan build, a ThreadSanitizer
# build and the fuzzers. CI (.ci/run) runs all stages.
#   bash scripts/test.sh            # everything
#   SKIP_ASAN=1 SKIP_TSAN=1 SKIP_FUZZ=1 bash scripts/test.sh   # checks, main
#   SKIP_FORMAT=1 SKIP_TSA=1 SKIP_MAIN=1 SKIP_ASAN=1 SKIP_FUZZ=1 \
#     bash scripts/test.sh                                      # only TSan
#
# Stages and their knobs:
#   format  SKIP_FORMAT: scripts/check_format.sh, clang-format --dry-run
#         --Werror over every tracked .h/.cc/.cu file (a few seconds).
#   tsa   TSA_BUILD_DIR (build-tsa), TSA_SOURCES: clang with
#         -DREGSERVE_THREAD_SAFETY=ON (-Wthread-safety -Werror), compile
#         only: the object files of TSA_SOURCES, by default every tracked .cc
#         file that uses absl::Mutex or an ABSL_* thread-safety annotation,
#         or whose own header does (grep, so new ones are checked too).
#   main  BUILD_DIR (build), CMAKE_ARGS, CTEST_ARGS: all targets (with the
#         CUDA path compiled, not linked, where nvcc exists: docs/gpu.md),
#         all tests.
#   asan  ASAN_BUILD_DIR (build-asan): -DREGSERVE_SANITIZE=ON; the unit and
#         e2e tests except ASAN_EXCLUDE (the long load test and the deploy
#         test, which exercises Prometheus rather than our code); LSan
#         suppressions: core/image/oiio_lsan.supp (OIIO's PNG reader).
#   tsan  TSAN_BUILD_DIR (build-tsan): -DREGSERVE_TSAN=ON; the scheduler,
#         jobs and server tests (TSAN_TESTS) with
#         tests/robustness/tsan/tsan.supp (LibTorch/libgomp only), then the
#         daemon end to end (TSAN_GRPC_TESTS) with tsan_grpc.supp added
#         (gRPC's own hand-offs; see that file).
#   fuzz  tests/fuzz/run_fuzzers.sh: FUZZ_BUILD_DIR (build-fuzz),
#         a fixed seed and run count (FUZZ_SECONDS=N explores instead).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
TSAN_BUILD_DIR=${TSAN_BUILD_DIR:-build-tsan}
TSA_BUILD_DIR=${TSA_BUILD_DIR:-build-tsa}
# Left out of the sanitizer run for time (each runs in the main stage):
# fleet_e2e_test's three ASan daemons took 5 minutes of the 60; the fleet
# code runs under ASan in job_fleet_test and job_table_test. Two of the
# longest of the rest as well (session 12, 2 cores: 123 and 91 s under
# ASan): faults_e2e_test (kills, crashes and a full disk: the daemon's
# recovery, not memory errors) and refine_test (LibTorch's arithmetic; our
# refinement code runs under ASan in refine_stage_test). streamed_job_test
# (180 s) runs only its end-to-end streamed case under ASan
# (core/jobs/CMakeLists.txt).
ASAN_EXCLUDE=${ASAN_EXCLUDE:-^(load_e2e_test|deploy_prometheus_e2e|security_e2e_test|fleet_e2e_test|faults_e2e_test|refine_test)$}
TSAN_TESTS=${TSAN_TESTS:-scheduler_test job_manager_test job_manager_e2e_test server_util_test server_convert_test metrics_test}
TSAN_GRPC_TESTS=${TSAN_GRPC_TESTS:-service_e2e_test}
# The sanitizer builds: -O1 and line tables only (-g1). Full debug info
# (RelWithDebInfo) made every object and link several times larger, and
# -O1 is what the sanitizers' documentation recommends for readable reports.
sanitizer_flags=(-DCMAKE_BUILD_TYPE=Release
  "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -g1 -DNDEBUG"
  "-DCMAKE_C_FLAGS_RELEASE=-O1 -g1 -DNDEBUG")

stage_start=$SECONDS
stage() {
  echo "== $1 (after $((SECONDS - stage_start)) s)"
}

# configure DIR [cmake args...]: ITK's config prints many harmless warnings
# about gdcm programs: keep them in a log, shown only when configuring fails.
configure() {
  local dir=$1; shift
  mkdir -p "$dir"
  if ! cmake -S . -B "$dir" -G Ninja "$@" >"$dir/configure.log" 2>&1; then
    cat "$dir/configure.log"; exit 1
  fi
}

if [ -z "${SKIP_FORMAT:-}" ]; then
  stage "format: clang-format check of the tracked C++ files"
  bash scripts/check_format.sh
fi

if [ -z "${SKIP_TSA:-}" ]; then
  stage "tsa: clang -Wthread-safety compile check in $TSA_BUILD_DIR"
  CC=clang CXX=clang++ configure "$TSA_BUILD_DIR" -DREGSERVE_THREAD_SAFETY=ON
  if [ -n "${TSA_SOURCES:-}" ]; then
    read -r -a tsa_sources <<<"$TSA_SOURCES"
  else
    tsa_re='ABSL_[A-Z_]*(GUARDED_BY|LOCK|ACQUIRED_|THREAD_SAFETY)|absl::[A-Za-z]*Mutex'
    mapfile -t tsa_headers < <(git ls-files -- '*.h' | xargs grep -lE "$tsa_re")
    mapfile -t tsa_sources < <({
      git ls-files -- '*.cc' | xargs grep -lE "$tsa_re"
      for h in "${tsa_headers[@]}"; do
        [ -f "${h%.h}.cc" ] && echo "${h%.h}.cc"
      done
    } | sort -u)
  fi
  # Only the objects: building the library targets would build everything
  # they link as well (core/warp, core/registration, the protobuf code...).
  # A header's inline code is checked in each object that includes it.
  mapfile -t tsa_all_objects < <(ninja -C "$TSA_BUILD_DIR" -t targets all |
    sed -n 's/^\([^:]*\.o\): .*/\1/p')
  tsa_objects=()
  for src in "${tsa_sources[@]}"; do
    # DIR/FILE.cc is compiled to DIR/CMakeFiles/TARGET.dir/FILE.cc.o; one
    # object per source is enough (a file built in several targets).
    dir=$(dirname "$src") file=$(basename "$src") found=""
    for o in "${tsa_all_objects[@]}"; do
      if [[ $o == "$dir"/CMakeFiles/*.dir/"$file".o ]]; then
        found=$o; break
      fi
    done
    if [ -n "$found" ]; then
      tsa_objects+=("$found")
    else
      echo "tsa: $src is not compiled in this configuration; not checked"
    fi
  done
  # -k 0: report every file with a finding, not only the first.
  cmake --build "$TSA_BUILD_DIR" -j "$JOBS" --target "${tsa_objects[@]}" \
    -- -k 0
fi

if [ -z "${SKIP_MAIN:-}" ]; then
  stage "main: build and all tests in $BUILD_DIR"
  # Release (no debug info) unless CMAKE_ARGS says otherwise: CI only needs
  # the build to pass, and -g doubles the objects' size and the link time.
  # shellcheck disable=SC2086
  configure "$BUILD_DIR" ${CMAKE_ARGS:--DCMAKE_BUILD_TYPE=Release}
  cmake --build "$BUILD_DIR" -j "$JOBS"
  # shellcheck disable=SC2086
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" ${CTEST_ARGS:-}
fi

if [ -z "${SKIP_ASAN:-}" ]; then
  stage "asan: AddressSanitizer + UBSan build in $ASAN_BUILD_DIR"
  configure "$ASAN_BUILD_DIR" -DREGSERVE_SANITIZE=ON "${sanitizer_flags[@]}"
  # Only what its tests run: their programs, the daemon and the CLI (not the
  # benchmarks, which a whole build would add).
  mapfile -t asan_targets < <(ctest --test-dir "$ASAN_BUILD_DIR" -N \
    -L "unit|e2e" -E "$ASAN_EXCLUDE" | sed -n 's/^ *Test *#[0-9]*: //p')
  cmake --build "$ASAN_BUILD_DIR" -j "$JOBS" \
    --target "${asan_targets[@]}" regserved regctl
  # Every daemon and test reports to stderr and fails on the first finding.
  # fast_unwind_on_malloc stays at its default (1): the slow unwinder on
  # every allocation made each LibTorch start-up take 10-16 s, in every test
  # and in every daemon and regctl an e2e test starts.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
  LSAN_OPTIONS="suppressions=$PWD/core/image/oiio_lsan.supp" \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$ASAN_BUILD_DIR" --output-on-failure -j "$JOBS" \
      -L "unit|e2e" -E "$ASAN_EXCLUDE"
fi

if [ -z "${SKIP_TSAN:-}" ]; then
  stage "tsan: ThreadSanitizer build in $TSAN_BUILD_DIR"
  configure "$TSAN_BUILD_DIR" -DREGSERVE_TSAN=ON "${sanitizer_flags[@]}"
  read -r -a tsan_tests <<<"$TSAN_TESTS"
  read -r -a tsan_grpc_tests <<<"$TSAN_GRPC_TESTS"
  # The daemon and client are needed by service_e2e_test.
  cmake --build "$TSAN_BUILD_DIR" -j "$JOBS" \
    --target "${tsan_tests[@]}" "${tsan_grpc_tests[@]}" regserved regctl
  # halt_on_error: the first race fails the test (a daemon exits 66, which
  # the e2e tests notice). ignore_noninstrumented_modules: interceptors
  # (memcpy, ...) called from uninstrumented libraries are not checked.
  tsan_common="ignore_noninstrumented_modules=1:halt_on_error=1:second_deadlock_stack=1:history_size=4"
  grpc_supp="$(cd "$TSAN_BUILD_DIR" && pwd)/tsan_grpc_all.supp"
  cat tests/robustness/tsan/tsan.supp tests/robustness/tsan/tsan_grpc.supp \
    >"$grpc_supp"
  TSAN_OPTIONS="suppressions=$PWD/tests/robustness/tsan/tsan.supp:$tsan_common" \
    ctest --test-dir "$TSAN_BUILD_DIR" --output-on-failure -j "$JOBS" \
      -R "^($(IFS='|'; echo "${tsan_tests[*]}"))$"
  TSAN_OPTIONS="suppressions=$grpc_supp:$tsan_common" \
    ctest --test-dir "$TSAN_BUILD_DIR" --output-on-failure -j "$JOBS" \
      -R "^($(IFS='|'; echo "${tsan_grpc_tests[*]}"))$"
fi

if [ -z "${SKIP_FUZZ:-}" ]; then
  stage "fuzz: libFuzzer targets in ${FUZZ_BUILD_DIR:-build-fuzz}"
  JOBS=$JOBS bash tests/fuzz/run_fuzzers.sh
fi
stage "all stages passed"

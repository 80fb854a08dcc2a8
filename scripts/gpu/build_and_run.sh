#!/usr/bin/env bash
# On the device (Ubuntu 24.04, PyTorch 2.11 CUDA LibTorch, no network): the
# whole daemon, built with the project's own CMake against the machine's
# LibTorch and the Debian 12 packages carried by scripts/gpu/carry_part.sh,
# then its GPU tests and real jobs through regctl. Steps (default: all):
#   link   unpack what was carried in this call, check every package of
#          debs.txt is there, link them into the system (cp -rsn: only files
#          Ubuntu lacks; never replaces one), ldconfig
#   probe  LibTorch's bundled protobuf headers, and the libstdc++ and
#          protobuf symbols its libraries export (nm -D)
#   build  configure and build everything (-j$(nproc)) from the committed
#          source (.gpu-debs/extra/src.tar.gz) in /opt/regserve-build, and
#          where remove_all binds, with and without the fix (LD_DEBUG)
#   test   ctest -L gpu and stdlib_binding_test; the same test and regserved
#          relinked without the link-order fix, to show what it catches
#   small  the ITK brain pair through regserved + regctl, warp on CUDA and
#          on the CPU, compared with the CPU machine's result
#          (.gpu-debs/extra/ref/, from scripts/gpu/reference.sh)
#   big    a 283.6 MP pair made from tests/data/photos at run time, three
#          jobs: server-side input and output paths (deflate, then zstd),
#          and uploads with the result streamed back; per-stage timings
#          (GetJob) and the time to first tile (event_times.py)
#   refine the LibTorch refinement on CUDA against the CPU (refine_benchmark)
#   warp   the one-pass 283.6 MP warp against the duplex floor, under
#          several band/chunk/slot settings, each with its GPU timeline
#          (warp_benchmark --sweep; WARP_SWEEP), 113 MB and 7 MB fields
#   streamed  the 500 MP pair under 512 MiB of RAM and of VRAM: the moving
#          image read by region and warped on the GPU, then on the CPU, the
#          results compared (scripts/big_job_benchmark.sh)
#   wholejob  scripts/whole_job_benchmark.sh on this machine (the daemon with
#          its default flags, so the refinement and the warp on CUDA): the
#          cases smooth, homography, graffiti and big (WJ_CASES), residual
#          against the known truth; BY_HAND=1 adds elastix by hand; WJ_RUNS
#          runs several flag sets in turn (see do_wholejob)
# Every step writes $OUT/<step>.log; a table of results is printed last.
# The device calls (see docs/gpu.md), back to back so the machine stays warm:
#   run(command="bash scripts/gpu/carry_part.sh", carry=[".gpu-debs/p1"]) ...
#   run(command="bash scripts/gpu/build_and_run.sh", carry=[".gpu-debs/pN", ".gpu-debs/extra"])
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
OUT=${OUT:-/tmp/regserve_gpu_out}
PREFIX=${REGSERVE_GPU_PREFIX:-/opt/rs}
SRC=/opt/regserve-src
BUILD=/opt/regserve-build
WORK=/opt/regserve-work
RESULTS=/opt/regserve-results.txt   # the table, kept across calls
mkdir -p "$OUT" "$WORK"; touch "$RESULTS"
T0=$(date +%s)
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(link probe build test small big refine)

step() { echo; echo "=== $* ($(date +%T), +$(( $(date +%s) - T0 )) s)"; }
result() { printf '| %s | %s |\n' "$1" "$2" | tee -a "$RESULTS"; }
elapsed() { echo $(( $(date +%s) - T0 )); }

do_link() {
  step "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cores: $(nproc)"; . /etc/os-release; echo "$PRETTY_NAME"
  python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)'
  bash scripts/gpu/carry_part.sh
  if [ -f "$PREFIX/.linked" ]; then echo "already linked"; return 0; fi
  step "check that every package arrived"
  missing=$(grep -v '^#' scripts/gpu/debs.txt | sort -u | comm -23 - <(sort -u "$PREFIX/.unpacked"))
  if [ -n "$missing" ]; then
    echo "missing packages (carry the remaining parts first):"; echo "$missing"; exit 1
  fi
  step "link the Debian files into /usr (cp -rsn: no existing file is replaced)"
  local before; before=$(find /usr -xdev -lname "$PREFIX/*" 2>/dev/null | wc -l)
  cp -rsn "$PREFIX/usr/." /usr/
  # Debian 12 still ships some libraries in /lib; Ubuntu 24.04's /lib is
  # /usr/lib.
  [ -d "$PREFIX/lib" ] && cp -rsn "$PREFIX/lib/." /usr/lib/
  # libblas3/liblapack3 install their libraries in subdirectories and rely on
  # update-alternatives (a postinst script, which dpkg -x does not run).
  for d in blas lapack; do
    lib=/usr/lib/x86_64-linux-gnu/$d/lib$d.so.3
    if [ -e "$lib" ] && ! ldconfig -p | grep -q "lib$d.so.3 "; then
      echo "/usr/lib/x86_64-linux-gnu/$d" >>/etc/ld.so.conf.d/regserve-gpu.conf
    fi
  done
  ldconfig
  echo "links made: $(( $(find /usr -xdev -lname "$PREFIX/*" 2>/dev/null | wc -l) - before ))"
  for p in elastix transformix protoc grpc_cpp_plugin idiff; do
    printf '%-16s %s\n' "$p" "$(command -v $p || echo MISSING)"
  done
  echo "protoc: $(protoc --version)"
  touch "$PREFIX/.linked"
}

do_probe() {
  TORCH_DIR=${TORCH_DIR:-$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')}
  step "toolchain"
  echo "g++: $(command -v g++): $(g++ --version | head -1)"
  echo "g++ -print-file-name: libstdc++.so -> $(g++ -print-file-name=libstdc++.so), libstdc++.a -> $(g++ -print-file-name=libstdc++.a)"
  echo "specs mentioning static-libstdc++: $(g++ -dumpspecs | grep -c static-libstdc)"
  echo "$(cmake --version | head -1); $(ld --version | head -1)"
  echo 'int main(){}' >/tmp/hello.cc && g++ /tmp/hello.cc -o /tmp/hello && \
    echo "a plain g++ program needs: $(readelf -d /tmp/hello | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
  echo '#include <iostream>
int main(){std::cout<<1;}' >/tmp/hello2.cc && g++ /tmp/hello2.cc -o /tmp/hello2 && \
    echo "an iostream program needs: $(readelf -d /tmp/hello2 | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
  step "LibTorch: bundled protobuf headers and exported libstdc++ symbols"
  grep -h "define GOOGLE_PROTOBUF_VERSION " "$TORCH_DIR"/include/google/protobuf/stubs/common.h \
    "$TORCH_DIR"/include/google/protobuf/port_def.inc 2>/dev/null | head -2
  grep -h "define GOOGLE_PROTOBUF_VERSION " /usr/include/google/protobuf/stubs/common.h
  nm -D --defined-only "$(ldconfig -p | awk '/libstdc\+\+\.so\.6 .*x86-64/{print $NF; exit}')" \
    | awk '{print $3}' | sed 's/@.*//' | sort -u >/tmp/stdcxx.syms
  for so in "$TORCH_DIR"/lib/lib*.so*; do
    nm -D --defined-only "$so" 2>/dev/null | awk '{print $3}' | sed 's/@.*//' | sort -u >/tmp/t.syms
    both=$(comm -12 /tmp/t.syms /tmp/stdcxx.syms | wc -l)
    fsys=$(grep -c '^_ZNSt10filesystem' /tmp/t.syms)
    pb=$(grep -c '^_ZN6google8protobuf' /tmp/t.syms)
    [ "$both$pb" != "00" ] && printf '%-28s also in libstdc++: %5d (std::filesystem %d), google::protobuf: %d\n' \
      "$(basename "$so")" "$both" "$fsys" "$pb"
  done
  for so in "$TORCH_DIR"/lib/lib*.so*; do
    nm -D --defined-only "$so" 2>/dev/null | grep -q '_ZNSt10filesystem10remove_allERKNS_7__cxx114pathE$' \
      && nm -D --defined-only "$so" | grep '_ZNSt10filesystem10remove_allERKNS_7__cxx114pathE$' | sed "s|^|$(basename "$so"): |"
  done
  for so in "$TORCH_DIR"/lib/libtorch.so "$TORCH_DIR"/lib/libtorch_cpu.so; do
    echo "$(basename "$so"): version definitions: $(readelf -V "$so" | grep -c 'Version definition section');" \
      "newest GLIBCXX needed: $(readelf -V "$so" | grep -o 'GLIBCXX_3\.4\.[0-9]*' | sort -V | tail -1);" \
      "built by: $(readelf -p .comment "$so" 2>/dev/null | grep -o 'GCC: .*' | sort -u | head -2 | tr '\n' ' ')"
    echo "  NEEDED: $(readelf -d "$so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
    echo "  weak undefined: $(nm -D --undefined-only "$so" | awk '$1=="w"{print $2}' | tr '\n' ' ' | cut -c1-400)"
  done
  echo "torch/include: $(ls "$TORCH_DIR/include" | tr '\n' ' ')"
}

do_build() {
  step "source"
  if [ -f .gpu-debs/extra/src.tar.gz ]; then
    rm -rf "$SRC"; mkdir -p "$SRC"; tar -xzf .gpu-debs/extra/src.tar.gz -C "$SRC"
    echo "commit $(cat .gpu-debs/extra/src.commit 2>/dev/null)"
  else
    SRC=$REPO; echo "working tree $REPO"
  fi
  TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')

  step "configure (the project's CMake, CMAKE_PREFIX_PATH = LibTorch only)"
  local t=$(date +%s)
  cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" >"$OUT/configure.log" 2>&1
  local rc=$?
  grep -E "^-- regserve|CMake Error" -A2 "$OUT/configure.log" | head -30
  result "configure" "rc $rc, $(( $(date +%s) - t )) s"
  [ $rc -eq 0 ] || { tail -40 "$OUT/configure.log"; exit 1; }

  step "build everything, -j$(nproc)"
  t=$(date +%s)
  ninja -C "$BUILD" -j "$(nproc)" -k 0 >"$OUT/build.log" 2>&1
  rc=$?
  result "build (all targets)" "rc $rc, $(( $(date +%s) - t )) s, $(grep -c 'warning:' "$OUT/build.log") warnings"
  if [ $rc -ne 0 ]; then
    grep -E "error|FAILED|undefined reference" -A4 "$OUT/build.log" | head -80
  fi
  if [ ! -x "$BUILD/server/regserved" ] && grep -q -- "-Werror" "$OUT/build.log"; then
    # A warning of this compiler (gcc 13) that Debian's gcc 12 does not
    # give, under the project's -Werror: record it, and build the copy in
    # $SRC without -Werror so that the daemon can still be run.
    echo "warnings that failed the build:"
    grep -E "error: .*\[-Werror" "$OUT/build.log" | sed 's/.*error: //' | sort | uniq -c | head -20
    sed -i 's/ -Werror)/)/' "$SRC/cmake/regserve.cmake"
    cmake "$BUILD" >>"$OUT/configure.log" 2>&1
    t=$(date +%s)
    ninja -C "$BUILD" -j "$(nproc)" -k 0 >"$OUT/build2.log" 2>&1
    rc=$?
    result "rebuild without -Werror" "rc $rc, $(( $(date +%s) - t )) s"
    [ $rc -ne 0 ] && grep -E "error|FAILED|undefined reference" -A4 "$OUT/build2.log" | head -60
  fi
  for b in server/regserved client/regctl tests/e2e/stdlib_binding_test core/warp/warp_gpu_test; do
    [ -x "$BUILD/$b" ] || { echo "missing $b"; exit 1; }
  done

  step "regserved: DT_NEEDED order and where remove_all binds"
  echo "link option: $(ninja -C "$BUILD" -t commands server/regserved | tail -1 | grep -o -- '-Wl,--push-state,[^ ]*' | head -1)"
  readelf -d "$BUILD/server/regserved" | grep NEEDED | head -4
  echo "unresolved libraries: $(ldd "$BUILD/server/regserved" "$BUILD/client/regctl" "$(command -v elastix)" | grep -c 'not found')"
  # The same program linked without the fix: the link command minus the
  # early -lstdc++.
  for b in server/regserved tests/e2e/stdlib_binding_test; do
    (cd "$BUILD" && eval "$(ninja -t commands "$b" | tail -1 \
      | sed -e 's/-Wl,--push-state,--no-as-needed,[^ ]*,--pop-state//g' \
            -e "s|-o $b |-o $b.nofix |")") || echo "relink of $b failed"
  done
  readelf -d "$BUILD/server/regserved.nofix" | grep NEEDED | head -4 | sed 's/^/nofix: /'
  for v in "" .nofix; do
    LD_BIND_NOW=1 LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/ldbind$v \
      timeout 20 "$BUILD/server/regserved$v" --version >/dev/null 2>&1
    echo "regserved$v: $(grep -h '_ZNSt10filesystem10remove_allERKNS_7__cxx114pathE' /tmp/ldbind$v.* \
      | grep 'binding file .*/regserved' | sed 's/.*to \([^ ]*\) .*/\1/' | head -1)"
    rm -f /tmp/ldbind$v.*
  done
}

do_test() {
  step "ctest -L gpu, and the binding test"
  (cd "$BUILD" && ctest -L gpu --output-on-failure --timeout 300) >"$OUT/ctest.log" 2>&1
  local rc=$?
  tail -5 "$OUT/ctest.log"
  result "ctest -L gpu" "rc $rc: $(grep -E 'tests passed' "$OUT/ctest.log")"
  (cd "$BUILD" && ctest -R '^stdlib_binding_test$' --output-on-failure) >>"$OUT/ctest.log" 2>&1
  rc=$?
  result "ctest stdlib_binding_test" "rc $rc: $(grep -E 'tests passed' "$OUT/ctest.log" | tail -1)"
  "$BUILD/tests/e2e/stdlib_binding_test" 2>&1 | grep -E "^note:|OK|FAILED" | head -20
  echo "--- the same test linked without the fix:"
  "$BUILD/tests/e2e/stdlib_binding_test.nofix" >"$OUT/binding_nofix.log" 2>&1
  rc=$?
  grep -E "FAILED|resolves into|must come|Segmentation" "$OUT/binding_nofix.log" | head -8
  result "stdlib_binding_test without the fix" "exit $rc ($( [ $rc -ne 0 ] && echo caught || echo NOT caught))"
}

# start_daemon NAME BINARY: sets ADDR and PID
start_daemon() {
  rm -rf "$WORK/data-$1"
  mkdir -p "$WORK/out"
  "$2" --listen 127.0.0.1:0 --data_dir "$WORK/data-$1" --input_root "$WORK/in" \
    --output_root "$WORK/out" --elastix_threads=2 >"$WORK/$1.out" 2>"$WORK/$1.err" &
  PID=$!
  ADDR=""
  for _ in $(seq 1 300); do
    ADDR=$(sed -n 's/^regserved listening on //p' "$WORK/$1.out" | head -1)
    [ -n "$ADDR" ] && return 0
    kill -0 $PID 2>/dev/null || break
    sleep 0.1
  done
  echo "regserved $1 did not start:"; cat "$WORK/$1.err"; return 1
}
stop_daemon() { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }

# compare A B: one line, how many samples differ and by how much
compare() {
  python3 - "$1" "$2" <<'PY'
import sys
import numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p)) for p in sys.argv[1:3])
if a.shape != b.shape or a.dtype != b.dtype:
    print("differ in shape/type: %s %s vs %s %s" % (a.shape, a.dtype, b.shape, b.dtype))
else:
    d = np.abs(a.astype(np.int64) - b.astype(np.int64))
    print("%s %s: %d of %d samples differ, max diff %d, mean diff %.4f"
          % ("x".join(map(str, a.shape)), a.dtype, int((d > 0).sum()), d.size, int(d.max()), d.mean()))
PY
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

do_small() {
  step "a small job through regctl: ITK brain pair, affine (demo.sh's pair)"
  mkdir -p "$WORK/in" "$WORK/out"
  local F=tests/data/itk_brain/BrainProtonDensitySlice.png
  local M=tests/data/itk_brain/BrainProtonDensitySliceR10X13Y17.png
  local RC="$BUILD/client/regctl"
  start_daemon small "$BUILD/server/regserved" || exit 1
  "$RC" --server "$ADDR" server-info 2>&1 | head -8
  for dev in cuda cpu; do
    local t=$(date +%s%N)
    "$RC" --server "$ADDR" submit --fixed "$F" --moving "$M" \
      --output "$WORK/out/brain_$dev.png" --transform affine --device $dev \
      --transform-out "$WORK/out/brain_${dev}_tf" >"$WORK/small_$dev.log" 2>&1
    local rc=$?
    cat "$WORK/small_$dev.log" | grep -E "accepted|completed|failed|wrote|regctl:"
    result "brain job, warp on $dev" "regctl exit $rc, $(ms_since $t) ms, daemon $(kill -0 $PID 2>/dev/null && echo alive || echo DEAD)"
  done
  stop_daemon
  cp "$WORK/out/brain_cuda.png" "$OUT/" 2>/dev/null
  result "brain: device cuda vs device cpu" "$(compare "$WORK/out/brain_cuda.png" "$WORK/out/brain_cpu.png")"
  if [ -f .gpu-debs/extra/ref/brain_cpu.png ]; then
    result "brain: device cuda vs CPU machine" "$(compare "$WORK/out/brain_cuda.png" .gpu-debs/extra/ref/brain_cpu.png)"
    if command -v idiff >/dev/null; then
      idiff -fail 0.004 -warn 0.004 "$WORK/out/brain_cuda.png" .gpu-debs/extra/ref/brain_cpu.png 2>&1 | tail -6
    fi
    echo "transform, CPU machine vs device:"
    diff <(grep -h '^(TransformParameters' .gpu-debs/extra/ref/brain_cpu_tf/TransformParameters.0.txt) \
         <(grep -h '^(TransformParameters' "$WORK/out/brain_cuda_tf/TransformParameters.0.txt") \
      && echo "  identical TransformParameters"
  fi
  step "the same job on regserved linked without the fix"
  start_daemon nofix "$BUILD/server/regserved.nofix" || return 0
  timeout 120 "$RC" --server "$ADDR" submit --fixed "$F" --moving "$M" \
    --output "$WORK/out/brain_nofix.png" --transform affine >"$WORK/small_nofix.log" 2>&1
  local rc=$?
  sleep 1
  local state="alive"
  if ! kill -0 $PID 2>/dev/null; then wait $PID; state="exited with status $?"; else stop_daemon; fi
  tail -3 "$WORK/nofix.err"
  result "brain job on regserved.nofix" "regctl exit $rc, daemon $state"
}

do_big() {
  step "283.6 MP pair from tests/data/photos/seeding_5312x2988.jpg"
  mkdir -p "$WORK/in" "$WORK/out"
  local t=$(date +%s)
  python3 - "$WORK/in" <<'PY'
import sys
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
W, H, PAD, DX, DY = 18960, 14960, 32, 13, 17
src = Image.open("tests/data/photos/seeding_5312x2988.jpg").convert("RGB")
big = src.resize((W + 2 * PAD, H + 2 * PAD), Image.BILINEAR)
# moving(x, y) = fixed(x + DX, y + DY): a pure shift of the same content
big.crop((PAD, PAD, PAD + W, PAD + H)).save(sys.argv[1] + "/fixed_283mp.tif")
big.crop((PAD + DX, PAD + DY, PAD + DX + W, PAD + DY + H)).save(sys.argv[1] + "/moving_283mp.tif")
print("wrote %dx%d (%.1f MP) fixed and moving (shift %d, %d)" % (W, H, W * H / 1e6, DX, DY))
PY
  echo "made in $(( $(date +%s) - t )) s"; ls -la "$WORK/in"
  local RC="$BUILD/client/regctl"
  start_daemon big "$BUILD/server/regserved" || exit 1
  big_job server "server-side input and output paths (stored result deflate)" \
    --fixed-path "$WORK/in/fixed_283mp.tif" --moving-path "$WORK/in/moving_283mp.tif" \
    --output-path "$WORK/out/big_server.tif"
  big_job zstd "server-side paths, stored result zstd" \
    --fixed-path "$WORK/in/fixed_283mp.tif" --moving-path "$WORK/in/moving_283mp.tif" \
    --output-path "$WORK/out/big_zstd.tif" --compression zstd
  big_job upload "uploads, result streamed to regctl (zstd tiles)" \
    --fixed "$WORK/in/fixed_283mp.tif" --moving "$WORK/in/moving_283mp.tif" \
    --output "$WORK/out/big.tif"
  stop_daemon
  grep -h '^(TransformParameters' "$WORK/out/big_upload_tf/TransformParameters.0.txt" 2>/dev/null
  if command -v idiff >/dev/null && [ -f "$WORK/out/big.tif" ]; then
    # The registered moving image against the fixed one (a shift of 13, 17:
    # the border strip that moved out of view differs), and the streamed copy
    # against the one the server wrote.
    idiff -fail 1 -warn 1 "$WORK/in/fixed_283mp.tif" "$WORK/out/big.tif" 2>&1 | tail -5
    idiff "$WORK/out/big_server.tif" "$WORK/out/big.tif" 2>&1 | tail -2
  fi
}

# big_job NAME WHAT REGCTL-ARGS...: one 283.6 MP job (affine), its wall time
# from submit to completed, its stage timeline, and (--json through
# event_times.py) when the first tile arrived.
big_job() {
  local name=$1 what=$2; shift 2
  local t; t=$(date +%s%N)
  "$RC" --server "$ADDR" submit "$@" --transform affine --json \
    --transform-out "$WORK/out/big_${name}_tf" 2>"$WORK/big_$name.err" |
    tee "$WORK/big_$name.jsonl" | python3 scripts/gpu/event_times.py >"$WORK/big_$name.times"
  local rc=${PIPESTATUS[0]}
  local wall; wall=$(( $(ms_since $t) / 100 )); wall="${wall%?}.${wall: -1}"
  tail -3 "$WORK/big_$name.err"; cat "$WORK/big_$name.times"
  result "283.6 MP job: $what, regctl wall" "exit $rc, $wall s"
  result "283.6 MP job: $what, tiles" "$(cat "$WORK/big_$name.times")"
  local job; job=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    j = json.loads(l).get("job_id")
    if j: print(j); break' "$WORK/big_$name.jsonl" 2>/dev/null)
  if [ -n "$job" ]; then
    "$RC" --server "$ADDR" status "$job" | tee "$OUT/big_${name}_status.txt"
    local line; line=$(sed -n 's/^  \([a-z_]*\): \([0-9.]*\) s$/\1 \2 s/p' "$OUT/big_${name}_status.txt" | paste -sd, -)
    result "283.6 MP job: $what, stages" "$line"
  fi
}

# The LibTorch refinement of a real photo's registration on CUDA and on the
# CPU, the same input: the photo (lomiri-wallpapers-20.04's Kleiber, 20 MP)
# travels as .gpu-debs/extra/Kleiber.jpg (see docs/gpu.md).
do_refine() {
  step "refinement on CUDA vs the CPU (tests/bench/refine_benchmark)"
  local photo=.gpu-debs/extra/Kleiber.jpg
  if [ ! -f "$photo" ]; then echo "no $photo: skipped"; return 0; fi
  "$BUILD/tests/bench/refine_benchmark" --image="$photo" --devices=both \
      --threads="$(nproc)" --max_registration_mp=20 2>&1 | tee "$OUT/refine.log"
  result "refine_benchmark (CUDA vs CPU)" "$(grep -ciE 'cuda' "$OUT/refine.log") lines mention cuda; see refine.log"
}

# The whole-job accuracy benchmark, as on the CPU machine (docs/benchmarks.md,
# "Whole-job accuracy on real cases"), with this machine's GPU and cores.
do_wholejob() {
  # WJ_RUNS: runs separated by "|", each "tag=case,case=regserved flags"
  # (the flags also go to the replay; tag "" writes to $WORK/<case>); the
  # default: every case with the daemon's default flags.
  local runs=${WJ_RUNS:-"=${WJ_CASES:-smooth homography graffiti big}="}
  local photo=.gpu-debs/extra/Kleiber.jpg rc=0 r tag rest cases flags
  [ -f "$photo" ] || { echo "no $photo: skipped"; return 0; }
  IFS='|' read -ra all <<<"$runs"
  for r in "${all[@]}"; do
    tag=${r%%=*}; rest=${r#*=}; cases=${rest%%=*}; flags=${rest#*=}
    step "whole-job accuracy: ${tag:-default} (${cases//,/ }; flags: ${flags:-none})"
    local log="$OUT/wholejob${tag:+-$tag}.log"
    # shellcheck disable=SC2086
    BUILD=$BUILD WORK=/opt/regserve-wj PHOTO=$photo BY_HAND=${BY_HAND:-0} \
      TAG=${tag:+-$tag} ELASTIX="$flags" \
      bash scripts/whole_job_benchmark.sh ${cases//,/ } >"$log" 2>&1 || rc=$?
    grep -E '^(===|JOB wall|quality|WARNING|TRUE|WHERE|CONTRAST|EST|FIELD|SAME-AS|.*: margin|  stage|  reason: (refine|registration|initial|elastix))' \
      "$log" | head -90
    result "whole_job_benchmark ${tag:-default}" "rc $rc; see $(basename "$log")"
  done
}

# The 500 MP pair (scripts/big_job_benchmark.sh: upscaled photo, a shift,
# striped uncompressed TIFFs, server-side paths, affine) under 512 MiB of
# RAM and of VRAM: the moving image read by region, warped on the GPU; then
# the same job with --device cpu, and the two results compared.
do_streamed() {
  step "500 MP pair under --ram_budget=512M --vram_budget=512M"
  local w=/opt/regserve-500 rc=0
  BUILD=$BUILD W=25824 H=19360 WORK=$w \
    EXTRA_DAEMON="--ram_budget=512M --vram_budget=512M" \
    bash scripts/big_job_benchmark.sh >"$OUT/streamed_gpu.log" 2>&1 || rc=$?
  grep -E "^(stage|wall|daemon peak|made|plan RAM)|warping|memory estimates|warp on|  warp:|limited to|refused" \
    "$OUT/streamed_gpu.log"
  result "500 MP, 512M RAM + 512M VRAM" "rc $rc; $(grep -o 'wall from submit to completed: [0-9.]* s' "$OUT/streamed_gpu.log")"
  [ -f "$w/out/result.tif" ] && mv "$w/out/result.tif" "$w/out/result_gpu.tif"
  rc=0
  BUILD=$BUILD W=25824 H=19360 WORK=$w EXTRA_SUBMIT="--device cpu" \
    EXTRA_DAEMON="--ram_budget=512M --vram_budget=512M" \
    bash scripts/big_job_benchmark.sh >"$OUT/streamed_cpu.log" 2>&1 || rc=$?
  grep -E "^(stage|wall|daemon peak)|warping|  warp:" "$OUT/streamed_cpu.log"
  result "500 MP, the same job with --device cpu" "rc $rc; $(grep -o 'wall from submit to completed: [0-9.]* s' "$OUT/streamed_cpu.log")"
  if [ -f "$w/out/result_gpu.tif" ] && [ -f "$w/out/result.tif" ]; then
    local d; d=$(idiff "$w/out/result_gpu.tif" "$w/out/result.tif" 2>&1 | tail -3)
    echo "$d"
    result "500 MP: GPU result vs CPU result (idiff)" "$(echo "$d" | tr '\n' ' ')"
  fi
}

do_warp() {
  step "one-pass warp: band/chunk/slot settings and their timelines"
  local sweep=${WARP_SWEEP:-512:256:3,256:128:4,128:128:8,256:64:8,1024:256:3,128:32:8}
  for fw in ${WARP_FIELDS:-4473x3154 1118x788}; do
    "$BUILD/core/warp/warp_benchmark" --device=cuda --reps=5 --baseline=false \
      --big_megapixels=0 --check=false --field_width="${fw%x*}" \
      --field_height="${fw#*x}" --sweep="$sweep" 2>&1 | tee -a "$OUT/warp.log" |
      grep -E "floor|duplex|H2D|D2H|one-pass|timeline|differing"
  done
  result "warp sweep" "see warp.log"
}

for s in "${STEPS[@]}"; do
  case $s in
    warp) do_warp ;;
    streamed) do_streamed ;;
    refine) do_refine ;;
    wholejob) do_wholejob ;;
    link) do_link ;;
    probe) do_probe ;;
    build) do_build ;;
    test) do_test ;;
    small) do_small ;;
    big)
      if [ "$(elapsed)" -gt "${BIG_AFTER_S:-400}" ]; then
        echo "skipping big: $(elapsed) s used (BIG_AFTER_S=${BIG_AFTER_S:-400}); run the step big next"
      else do_big; fi ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done

step "results (this machine, all calls so far)"
echo "| what | result |"; echo "|---|---|"; cat "$RESULTS"
cp "$RESULTS" "$OUT/results.md"

#!/usr/bin/env bash
# The whole job on real cases with a known truth, as a user runs it
# (docs/benchmarks.md, "Whole-job accuracy on real cases (CPU)"): a fresh
# regserved with its default flags, `regctl submit --fixed F --moving M
# --output OUT --quality-map Q` (uploads, result streamed back), its wall
# time, its quality line and `regctl status` (stage times); then the same
# job replayed in-process to read the field it warped with
# (tests/bench/whole_job_benchmark.cc replay: its result must equal the
# daemon's), the residual against the truth; then elastix + transformix by
# hand at full resolution with the job's B-spline preset (affine, then
# B-spline), timed, and its residual (transformix -def all, not timed).
#
#   BUILD=build-h5 bash scripts/whole_job_benchmark.sh smooth homography graffiti
#   BY_HAND=0 bash scripts/whole_job_benchmark.sh big       # the job only
#   JOB=0 bash scripts/whole_job_benchmark.sh big           # by hand only
#   TAG=-5mp MP=5 BY_HAND=0 bash scripts/whole_job_benchmark.sh smooth
#       # regctl submit --max-registration-megapixels 5 (and the replay
#       # likewise), outputs in $WORK/smooth-5mp
#   TAG=-norefine REFINE=off BY_HAND=0 bash scripts/whole_job_benchmark.sh smooth
#   TAG=-e5 ELASTIX="--gpu_refine_elastix_megapixels=5" BY_HAND=0 \
#     bash scripts/whole_job_benchmark.sh big
#       # regserved (and the replay) with those --gpu_refine_elastix_* flags
#   ERROR_MAP=1 ... smooth  # the replay writes $o/error.pgm (where the error lies)
#   MARGIN=64 ... big   # the big case of session 6: its moving image has
#       # black fill along the borders (the default margin leaves none)
#   PAIRS=5 bash scripts/whole_job_benchmark.sh smooth   # then 5 pairs, in
#       # turn: the daemon job's wall time and elastix + transformix by hand
#       # (timed only), each pair's ratio, and the median ratio: the machine
#       # drifts less within a pair than across the run
#
# Cases: smooth / homography (the Kleiber photo of Debian's
# lomiri-wallpapers-20.04, fetched at run time; PHOTO=... to use a copy),
# graffiti (tests/data/graffiti), big (tests/data/photos/seeding_5312x2988.jpg
# upscaled to 18960x14960). WORK (default /tmp/regserve-wj) keeps each case's
# inputs and outputs; made inputs are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
WORK=${WORK:-/tmp/regserve-wj}
BY_HAND=${BY_HAND:-1}
PAIRS=${PAIRS:-0}
JOB=${JOB:-1}  # 0: elastix by hand only
TAG=${TAG:-}
MP=${MP:-}  # regctl --max-registration-megapixels; empty: the default
REFINE=${REFINE:-}  # regctl --refine auto|off|on; empty: the default
ELASTIX=${ELASTIX:-}  # regserved flags the replay takes too: --gpu_refine_elastix_*, --ram_budget
MARGIN=${MARGIN:--1}  # make --margin for big (-1: the least without fill)
THREADS=${THREADS:-$(nproc)}
BENCH="$BUILD/tests/bench/whole_job_benchmark"
RC="$BUILD/client/regctl"
for b in "$BENCH" "$RC" "$BUILD/server/regserved"; do
  [ -x "$b" ] || { echo "$b not built" >&2; exit 2; }
done
mkdir -p "$WORK"

photo() {
  if [ -n "${PHOTO:-}" ]; then echo "$PHOTO"; return; fi
  local p="$WORK/lw/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"
  if [ ! -f "$p" ]; then
    (cd "$WORK" && apt-get download -q lomiri-wallpapers-20.04 >/dev/null)
    dpkg -x "$WORK"/lomiri-wallpapers-20.04_*.deb "$WORK/lw"
  fi
  echo "$p"
}

make_case() {  # case dir
  local c=$1 d=$2
  [ -f "$d/case.txt" ] && return
  case $c in
    smooth|homography) "$BENCH" make --kind="$c" --photo="$(photo)" --dir="$d" ;;
    big) "$BENCH" make --kind=big --photo=tests/data/photos/seeding_5312x2988.jpg \
           --dir="$d" --margin="$MARGIN" ;;
    graffiti) "$BENCH" make --kind=graffiti --graffiti=tests/data/graffiti --dir="$d" ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
}

inputs() {  # case dir -> "fixed moving"
  if [ "$1" = graffiti ]; then
    echo "tests/data/graffiti/graf1.png tests/data/graffiti/graf3.png"
  else
    echo "$2/fixed.tif $2/moving.tif"
  fi
}

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

run_daemon_job() {  # case dir(inputs) dir(outputs)
  local d=$3 fixed moving pid addr="" t0 extra=()
  read -r fixed moving <<<"$(inputs "$1" "$2")"
  [ -n "$MP" ] && extra+=(--max-registration-megapixels "$MP")
  [ -n "$REFINE" ] && extra+=(--refine "$REFINE")
  rm -rf "$d/data" "$d/result.tif"
  # shellcheck disable=SC2086  # ELASTIX is a list of flags
  "$BUILD/server/regserved" --listen 127.0.0.1:0 --data_dir "$d/data" $ELASTIX \
    >"$d/daemon.out" 2>"$d/daemon.err" &
  pid=$!
  for _ in $(seq 1 300); do
    addr=$(sed -n 's/^regserved listening on //p' "$d/daemon.out" | head -1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$d/daemon.err"; kill "$pid"; exit 1; }
  t0=$(date +%s%N)
  "$RC" --server "$addr" submit --fixed "$fixed" --moving "$moving" \
    --output "$d/result.tif" --quality-map "$d/quality.png" "${extra[@]}" \
    >"$d/submit.out" 2>"$d/submit.err" || { tail "$d/submit.err"; kill "$pid"; exit 1; }
  echo "JOB wall $(ms_since "$t0") ms (regctl submit, uploads to the written result)"
  awk '/^VmHWM/ {printf "DAEMON peak RSS (VmHWM) %.0f MB\n", $2 / 1024}' "/proc/$pid/status"
  grep -E '^(quality|WARNING)' "$d/submit.out" || true
  local id
  id=$("$RC" --server "$addr" list | awk 'NR == 2 {print $1}')
  "$RC" --server "$addr" status "$id" | tee "$d/status.out"
  kill "$pid"
  wait "$pid" || true
}

by_hand() {  # case dir(inputs) dir(outputs)
  local d=$3 h=$3/hand fixed moving t0
  read -r fixed moving <<<"$(inputs "$1" "$2")"
  rm -rf "$h" && mkdir -p "$h/result" "$h/def"
  "$BENCH" params --inputs="$2" --dir="$d"
  t0=$(date +%s%N)
  elastix -f "$fixed" -m "$moving" -p "$d/p0.txt" -p "$d/p1.txt" -out "$h" \
    -threads "$THREADS" >"$h/elastix.out" 2>&1 || { tail "$h/elastix.out"; return 1; }
  local te; te=$(ms_since "$t0")
  t0=$(date +%s%N)
  transformix -in "$moving" -tp "$h/TransformParameters.1.txt" -out "$h/result" \
    -threads "$THREADS" >"$h/transformix.out" 2>&1 || { tail "$h/transformix.out"; return 1; }
  local tt; tt=$(ms_since "$t0")
  echo "BY_HAND elastix $te ms, transformix $tt ms, total $((te + tt)) ms"
  # The field, for the measurement only (not timed).
  transformix -def all -tp "$h/TransformParameters.1.txt" -out "$h/def" \
    -threads "$THREADS" >"$h/def.out" 2>&1 || { tail "$h/def.out"; return 1; }
  "$BENCH" field --inputs="$2" --dir="$d" --def="$h/def/deformationField.mhd"
  rm -rf "$h/def" "$h/result"
}

# elastix + transformix as by_hand runs them, timed, nothing measured: ms.
hand_timed() {  # case dir(inputs) dir(outputs)
  local d=$3 h=$3/hand fixed moving t0
  read -r fixed moving <<<"$(inputs "$1" "$2")"
  rm -rf "$h" && mkdir -p "$h/result"
  [ -f "$d/p1.txt" ] || "$BENCH" params --inputs="$2" --dir="$d" >/dev/null
  t0=$(date +%s%N)
  elastix -f "$fixed" -m "$moving" -p "$d/p0.txt" -p "$d/p1.txt" -out "$h" \
    -threads "$THREADS" >"$h/elastix.out" 2>&1 &&
    transformix -in "$moving" -tp "$h/TransformParameters.1.txt" \
      -out "$h/result" -threads "$THREADS" >"$h/transformix.out" 2>&1 ||
    { tail "$h/elastix.out" "$h/transformix.out" >&2; return 1; }
  ms_since "$t0"
  rm -rf "$h/result"
}

pairs() {  # case dir(inputs) dir(outputs)
  local i job hand ratios=()
  for i in $(seq 1 "$PAIRS"); do
    job=$(run_daemon_job "$@" | sed -n 's/^JOB wall \([0-9]*\) ms.*/\1/p')
    rm -rf "$3/data"
    hand=$(hand_timed "$@")
    ratios+=("$(awk -v a="$job" -v b="$hand" 'BEGIN {printf "%.3f", a / b}')")
    echo "PAIR $i job $job ms, by hand $hand ms, ratio ${ratios[-1]}"
  done
  printf '%s\n' "${ratios[@]}" | sort -n |
    awk '{r[NR] = $1} END {printf "PAIRS %d: median job / by hand %.3f (min %.3f, max %.3f)\n", NR, (NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2), r[1], r[NR]}'
}

for c in "$@"; do
  d="$WORK/$c" o="$WORK/$c$TAG"
  mkdir -p "$d" "$o"
  echo "=== $c$TAG ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
  make_case "$c" "$d"
  if [ "$JOB" = 1 ]; then
    run_daemon_job "$c" "$d" "$o"
    # shellcheck disable=SC2086
    "$BENCH" replay --inputs="$d" --dir="$o" --graffiti=tests/data/graffiti \
      --max_registration_mp="${MP:-0}" --refine="$REFINE" $ELASTIX ${ERROR_MAP:+--error_map=$o/error.pgm}
    rm -rf "$o/data"
  fi
  if [ "$BY_HAND" = 1 ]; then by_hand "$c" "$d" "$o"; fi
  if [ "$PAIRS" -gt 0 ]; then pairs "$c" "$d" "$o"; fi
done

#!/usr/bin/env bash
# The 283.6 MP job on this machine, through regserved and regctl: a pair made
# at run time from a real photo (tests/data/photos/seeding_5312x2988.jpg,
# upscaled to 19024x15024; fixed = the 18960x14960 crop at (32, 32), moving
# = the crop at (45, 49), so moving(x, y) = fixed(x + 13, y + 17)), as
# uncompressed RGB TIFFs under --input_root; server-side input and output
# paths, affine. Prints the wall time from submit to completed, the stage
# timeline (GetJob), the daemon's peak RSS (VmHWM) next to the plan's
# largest stage estimate, and the registration's error against the known
# shift. Figures: docs/benchmarks.md ("283.6 MP job on the CPU machine").
#   bash scripts/big_job_benchmark.sh            # BUILD=build, WORK=/tmp/regserve-big
#   EXTRA_SUBMIT="--compression zstd" bash scripts/big_job_benchmark.sh
#   W=25824 H=19360 WORK=/tmp/regserve-500 EXTRA_DAEMON=--ram_budget=512M \
#     bash scripts/big_job_benchmark.sh     # another size (here 500 MP)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
WORK=${WORK:-/tmp/regserve-big}
RC="$BUILD/client/regctl"
W=${W:-18960}
H=${H:-14960}
mkdir -p "$WORK/in" "$WORK/out"
if [ ! -f "$WORK/in/moving_283mp.tif" ]; then
  t=$SECONDS
  # --native: uint8 buffers (without it oiiotool works in float: 24 B/px).
  oiiotool --native tests/data/photos/seeding_5312x2988.jpg --resize:filter=triangle \
    "$((W + 64))x$((H + 64))" -d uint8 --compression none -o "$WORK/in/big.tif"
  oiiotool --native "$WORK/in/big.tif" --cut "${W}x${H}+32+32" -d uint8 --compression none \
    -o "$WORK/in/fixed_283mp.tif"
  oiiotool --native "$WORK/in/big.tif" --cut "${W}x${H}+45+49" -d uint8 --compression none \
    -o "$WORK/in/moving_283mp.tif"
  rm -f "$WORK/in/big.tif"
  echo "made the pair in $((SECONDS - t)) s"
fi
rm -rf "$WORK/data" "$WORK/out/result.tif"
"$BUILD/server/regserved" --listen 127.0.0.1:0 --data_dir "$WORK/data" \
  --input_root "$WORK/in" --output_root "$WORK/out" ${EXTRA_DAEMON:-} \
  >"$WORK/daemon.out" 2>"$WORK/daemon.err" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
ADDR=""
for _ in $(seq 1 300); do
  ADDR=$(sed -n 's/^regserved listening on //p' "$WORK/daemon.out" | head -1)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/daemon.err"; exit 1; }
head -2 "$WORK/daemon.err"
idle_rss=$(awk '/VmRSS/ {printf "%.0f", $2 * 1024 / 1e6}' /proc/$PID/status)
# The daemon's RSS every 0.1 s ("ns rss anon file children", kB), for the
# peak of each stage: anonymous memory (heap, buffers) apart from file
# pages mapped into the process (RssFile), which the kernel may drop, and
# the RSS of its children (elastix, transformix), which the plan's
# registration stage includes.
(while kill -0 "$PID" 2>/dev/null; do
   kids=0
   for k in $(cat /proc/$PID/task/*/children 2>/dev/null); do
     v=$(awk '/^VmRSS:/ {print $2}' "/proc/$k/status" 2>/dev/null || true)
     kids=$((kids + ${v:-0}))  # a child may have exited meanwhile
   done
   echo "$(date +%s%N) $(awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2}' /proc/$PID/status 2>/dev/null)$kids"
   sleep 0.1
 done) >"$WORK/rss.txt" &
SAMPLER=$!
t0=$(date +%s%N)
# Each event line is stamped with its arrival ("ns {json}").
# shellcheck disable=SC2086
"$RC" --server "$ADDR" submit --fixed-path "$WORK/in/fixed_283mp.tif" \
  --moving-path "$WORK/in/moving_283mp.tif" --output-path "$WORK/out/result.tif" \
  --transform affine --transform-out "$WORK/out/tf" --json ${EXTRA_SUBMIT:-} \
  2>"$WORK/submit.err" | while IFS= read -r line; do echo "$(date +%s%N) $line"; done \
  >"$WORK/submit.stamped" || { cat "$WORK/submit.err"; exit 1; }
[ -s "$WORK/submit.stamped" ] || { cat "$WORK/submit.err"; exit 1; }
cut -d' ' -f2- "$WORK/submit.stamped" >"$WORK/submit.jsonl"
wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
kill "$SAMPLER" 2>/dev/null || true
# The peak RSS while each stage ran, from the first progress event of a
# stage to the first of the next (the sampler's resolution: 0.1 s).
python3 - "$WORK/submit.stamped" "$WORK/rss.txt" "$idle_rss" <<'PY'
import json, sys
marks = []
for line in open(sys.argv[1]):
    t, _, js = line.partition(" ")
    stage = json.loads(js).get("progress", {}).get("stage")
    if stage and (not marks or marks[-1][1] != stage):
        marks.append((int(t), stage))
rss = []
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) == 5:
        rss.append((int(f[0]),) + tuple(int(v) * 1024 / 1e6 for v in f[1:]))
idle = float(sys.argv[3])
ends = [m[0] for m in marks[1:]] + [float("inf")]
for (start, stage), end in zip(marks, ends):
    inside = [r for r in rss if start <= r[0] < end]
    if inside:
        top = max(inside, key=lambda r: r[1] + r[4])
        print("stage %-28s peak RSS %6.0f MB with its children's %4.0f MB "
              "(growth %6.0f MB; daemon anon %.0f, file-backed %.0f MB), "
              "%d samples" % (stage, top[1] + top[4], top[4],
                              top[1] + top[4] - idle, top[2], top[3],
                              len(inside)))
PY
echo "wall from submit to completed: $((wall_ms / 1000)).$(printf '%03d' $((wall_ms % 1000))) s"
peak_rss=$(awk '/VmHWM/ {printf "%.0f", $2 * 1024 / 1e6}' /proc/$PID/status)
echo "daemon peak RSS (VmHWM): $peak_rss MB; idle before the job $idle_rss MB; the job's growth $((peak_rss - idle_rss)) MB"
job=$(python3 - "$WORK/submit.jsonl" <<'PY'
import json, sys
job = None
for line in open(sys.argv[1]):
    ev = json.loads(line)
    job = job or ev.get("job_id")
    plan = ev.get("accepted", {}).get("plan")
    if plan:
        stages = {k[:-7]: int(v.get("ram_bytes", 0)) / 1e6
                  for k, v in plan.items() if k.endswith("_memory")}
        print("plan RAM estimates (MB): " +
              ", ".join("%s %.0f" % kv for kv in stages.items()) +
              "; largest %.0f" % max(stages.values()), file=sys.stderr)
        for r in plan.get("reasons", []):
            print("  " + r, file=sys.stderr)
print(job or "")
PY
)
[ -n "$job" ] && "$RC" --server "$ADDR" status "$job"
# The whole fixed -> moving map: after a robust start the stored
# TransformParameters are elastix's residual on the pre-warped copy, and the
# plan's reasons give the start's homography H.
[ -n "$job" ] && "$RC" --server "$ADDR" status "$job" --json | python3 -c '
import json, sys
for r in json.loads(sys.stdin.read()).get("plan", {}).get("reasons", []):
    if "H = [" in r or "initial alignment alone" in r or r.startswith("initial alignment:"):
        print("  " + r)'
grep -h '^(TransformParameters' "$WORK/out/tf/TransformParameters.0.txt" || true
echo "(the true map: moving = fixed + (13, 17): H's translation, plus elastix's residual when it is kept)"

#!/usr/bin/env bash
# Tiles on the wire: bytes and time to stream one big result over loopback
# in each tile encoding, and the same result written by the server itself
# (--output-path). docs/benchmarks.md, "Tiles on the wire", has the figures.
#
#   scripts/wire_benchmark.sh BUILD_DIR [PHOTO] [SCALE]
#
# The pair is made from PHOTO (default: the 17.9 MP canvas photo of
# /work/shared/data or tests/data/photos) scaled by SCALE (default 1.5:
# 8460x4758, 40.3 MP) with vips; the moving image is the fixed one shifted
# by (13, 17) px. Both are server-side inputs; the job registers rigidly at
# 0.5 MP (the wire, not elastix, is measured). Each encoding is fetched with
# `regctl watch` twice: without --output (the stream alone) and with
# --output (decoded and written as a tiled TIFF, as a user gets it); the
# written files are compared pixel for pixel (idiff) with the raw one and
# with the server's own output.
set -euo pipefail

build=${1:?usage: $0 BUILD_DIR [PHOTO] [SCALE]}
photo=${2:-}
scale=${3:-1.5}
if [[ -z "$photo" ]]; then
  for p in /work/shared/data/canvas_elephants_5640x3172.jpg \
           "$(dirname "$0")/../tests/data/photos/canvas_elephants_5640x3172.jpg"; do
    [[ -f "$p" ]] && photo=$p && break
  done
fi
[[ -f "$photo" ]] || { echo "no photo; pass one" >&2; exit 2; }

work=$(mktemp -d /tmp/wire_benchmark.XXXXXX)
trap 'kill "$daemon" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/in" "$work/out" "$work/data"
vips resize "$photo" "$work/in/fixed.tif" "$scale"
read -r w h < <(vipsheader -f width "$work/in/fixed.tif" | tr '\n' ' ';
                vipsheader -f height "$work/in/fixed.tif")
vips embed "$work/in/fixed.tif" "$work/in/moving.tif" 13 17 "$w" "$h" --extend copy
echo "pair: ${w}x${h} RGB uint8 ($(( w * h / 1000000 )) MP) from $photo"

"$build/server/regserved" --listen=127.0.0.1:0 --data_dir="$work/data" \
  --input_root="$work/in" --output_root="$work/out" \
  --metrics_listen=127.0.0.1:0 >"$work/d.out" 2>"$work/d.err" &
daemon=$!
for _ in $(seq 100); do
  grep -q "metrics on" "$work/d.out" 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$work/d.out" | head -1)
metrics=$(sed -n 's/.*metrics on \([^ ]*\).*/\1/p' "$work/d.out" | head -1)
regctl=("$build/client/regctl" --server "$addr")
sent() {
  curl -s "http://$metrics/metrics" |
    awk '/^regserve_sent_bytes_total/ {printf "%.0f\n", $2}'
}

t0=$(date +%s.%N)
"${regctl[@]}" submit --fixed-path fixed.tif --moving-path moving.tif \
  --transform rigid --max-registration-megapixels 0.5 --output-path r.tif \
  --json >"$work/submit.json"
t1=$(date +%s.%N)
job=$(grep -oE '"job(_id|Id)": ?"[^"]*"' "$work/submit.json" | head -1 |
      sed 's/.*"\([^"]*\)"$/\1/')
echo "server-side output: submit to completed $(echo "$t1 - $t0" | bc) s," \
     "$(stat -c %s "$work/out/r.tif") B file, 0 tile bytes on the wire"

printf '| encoding | tile bytes | of raw | stream only (s) | stream + decode + write (s) | pixels |\n'
printf '| --- | --- | --- | --- | --- | --- |\n'
raw_bytes=0
for enc in raw zstd deflate; do
  b0=$(sent)
  s0=$(date +%s.%N)
  "${regctl[@]}" watch "$job" --tile-encoding "$enc" >/dev/null 2>&1
  s1=$(date +%s.%N)
  b1=$(sent)
  "${regctl[@]}" watch "$job" --tile-encoding "$enc" \
    --output "$work/$enc.tif" >/dev/null 2>&1
  s2=$(date +%s.%N)
  bytes=$(( b1 - b0 ))
  [[ $enc == raw ]] && raw_bytes=$bytes
  same=same
  idiff -q "$work/raw.tif" "$work/$enc.tif" >/dev/null 2>&1 || same=DIFFERENT
  idiff -q "$work/out/r.tif" "$work/$enc.tif" >/dev/null 2>&1 ||
    same="$same; DIFFERENT from the server's"
  printf '| %s | %d | %.1f%% | %.2f | %.2f | %s |\n' "$enc" "$bytes" \
    "$(echo "100 * $bytes / $raw_bytes" | bc -l)" \
    "$(echo "$s1 - $s0" | bc)" "$(echo "$s2 - $s1" | bc)" "$same"
done

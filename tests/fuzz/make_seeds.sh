#!/usr/bin/env bash
# Encodes the text-format seeds in job_spec_seeds/ as binary SubmitRequest
# messages into corpus/job_spec_fuzz/ (needs protoc). Rerun after editing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$here/corpus/job_spec_fuzz"
mkdir -p "$out"
for f in "$here"/job_spec_seeds/*.txtpb; do
  protoc -I "$root/proto" --encode=regserve.v1.SubmitRequest \
    "$root/proto/regserve/v1/regserve.proto" <"$f" >"$out/$(basename "$f" .txtpb).bin"
done
echo "wrote $(ls "$out"/*.bin | wc -l) seeds to $out"

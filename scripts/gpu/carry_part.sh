#!/usr/bin/env bash
# On the device: unpacks the carried parts of the Debian packages
# (.gpu-debs/p*/*.deb, see scripts/gpu/fetch_debs.sh) with `dpkg -x` into
# one folder outside the repository, $REGSERVE_GPU_PREFIX (default /opt/rs),
# which survives between calls while the machine stays warm (~30 s). Nothing
# is installed into the system here: scripts/gpu/build_and_run.sh links the
# folder into /usr once every part has arrived. Run one call per part:
#   run(command="bash scripts/gpu/carry_part.sh", carry=[".gpu-debs/p1"])
set -euo pipefail
cd "$(dirname "$0")/../.."
PREFIX=${REGSERVE_GPU_PREFIX:-/opt/rs}
mkdir -p "$PREFIX"
n=0
shopt -s nullglob
for f in .gpu-debs/p*/*.deb; do
  dpkg -x "$f" "$PREFIX"
  # package name, as in debs.txt
  basename "$f" | cut -d_ -f1 >>"$PREFIX/.unpacked"
  n=$((n + 1))
done
echo "carry_part: unpacked $n packages into $PREFIX;" \
  "$(sort -u "$PREFIX/.unpacked" 2>/dev/null | wc -l) of" \
  "$(grep -vc '^#' scripts/gpu/debs.txt) there now ($(du -sm "$PREFIX" | cut -f1) MiB)"

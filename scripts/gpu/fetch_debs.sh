#!/usr/bin/env bash
# Here (Debian 12, with network; not on the device): downloads the Debian 12
# packages that regserved, regctl, elastix and transformix need on the GPU
# machine (scripts/gpu/debs.txt: their runtime closure without glibc,
# libstdc++ and LibTorch, plus the -dev packages the project's CMake needs)
# into .gpu-debs/all/, and splits them into parts .gpu-debs/p1 .. pN (hard
# links), each small enough to travel with one device `run` call beside the
# working tree (64 MiB in all). Also writes .gpu-debs/extra/src.tar.gz, the
# committed source (git archive HEAD), so that the device builds a commit
# and not whatever is half-edited in the working tree.
# .gpu-debs/ is git-ignored; never commit .deb files.
#   bash scripts/gpu/fetch_debs.sh            # prints the parts and sizes
#   PART_MIB=50 bash scripts/gpu/fetch_debs.sh
# Then see scripts/gpu/build_and_run.sh for the device calls.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.gpu-debs
mkdir -p "$D/all" "$D/extra"
grep -qx '/.gpu-debs/' .gitignore 2>/dev/null || {
  echo "fetch_debs: .gpu-debs/ is not in .gitignore" >&2; exit 1; }

list=scripts/gpu/debs.txt
missing=()
for p in $(grep -v '^#' "$list"); do
  ls "$D/all/${p}_"*.deb >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "downloading ${#missing[@]} packages"
  # apt-get download writes into the current directory.
  (cd "$D/all" && apt-get download "${missing[@]}")
fi
echo "packages: $(ls "$D/all"/*.deb | wc -l) ($(du -sm "$D/all" | cut -f1) MiB)"

# The source of HEAD, for the device build.
git archive --format=tar.gz -o "$D/extra/src.tar.gz" HEAD
git rev-parse HEAD >"$D/extra/src.commit"

# What travels besides the carried folders: tracked and untracked files that
# git does not ignore.
tree_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
extra_bytes=$(du -cb "$D/extra" | tail -1 | cut -f1)
limit=$((64 * 1024 * 1024))
margin=$((2 * 1024 * 1024))     # others' files appearing meanwhile
if [ -n "${PART_MIB:-}" ]; then
  part=$((PART_MIB * 1024 * 1024))
else
  part=$((limit - tree_bytes - margin))
fi
echo "working tree: $((tree_bytes / 1024)) KiB; part budget: $((part / 1024)) KiB"

# First-fit decreasing into parts of at most $part bytes. The smallest part
# is carried last, together with .gpu-debs/extra (the source and the
# reference outputs), so it must leave room for those.
rm -rf "$D"/p[0-9]*
ls -S "$D/all"/*.deb | python3 -c '
import os, sys
part, extra = int(sys.argv[1]), int(sys.argv[2])
files = [l.strip() for l in sys.stdin if l.strip()]
bins = []
for f in sorted(files, key=os.path.getsize, reverse=True):
    s = os.path.getsize(f)
    for b in bins:
        if b[0] + s <= part:
            b[0] += s; b[1].append(f); break
    else:
        bins.append([s, [f]])
bins.sort(key=lambda b: -b[0])
if bins[-1][0] + extra > part:
    bins.append([0, []])   # an empty last part: extra travels alone
for i, (s, fs) in enumerate(bins, 1):
    d = ".gpu-debs/p%d" % i
    os.makedirs(d)
    for f in fs:
        os.link(f, os.path.join(d, os.path.basename(f)))
    print("p%d: %d packages, %.1f MiB" % (i, len(fs), s / 2**20))
' "$part" "$extra_bytes"
n=$(ls -d "$D"/p[0-9]* | wc -l)
echo "carry, one call each: $(for i in $(seq 1 $((n - 1))); do printf '.gpu-debs/p%d ' "$i"; done)"
echo "last call: .gpu-debs/p$n .gpu-debs/extra"

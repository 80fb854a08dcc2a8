#!/usr/bin/env bash
# Checks that every tracked C++/CUDA file (.h, .cc, .cu; git ls-files) is
# formatted as .clang-format (Google style) says, with
# `clang-format --dry-run --Werror`. Nothing is rewritten. Prints each file
# that differs and the command that fixes it; exits 1 if there is any.
# Generated and third-party data (tests/data, the fuzz corpora) are skipped.
#   bash scripts/check_format.sh              # the whole tree
#   bash scripts/check_format.sh FILE...      # only these files
#   CLANG_FORMAT=clang-format-14 bash scripts/check_format.sh
# The version matters (another one may format differently): CI uses Debian
# 12's clang-format 14 (package clang-format).
set -euo pipefail
cd "$(dirname "$0")/.."

CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
if ! command -v "$CLANG_FORMAT" >/dev/null 2>&1; then
  echo "check_format.sh: $CLANG_FORMAT not found (apt-get install clang-format)" >&2
  exit 2
fi

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files -- '*.h' '*.cc' '*.cu' |
    grep -vE '^tests/data/|(^|/)corpus/' || true)
fi
if [ "${#files[@]}" -eq 0 ]; then
  echo "check_format.sh: no files to check"
  exit 0
fi

bad=()
for f in "${files[@]}"; do
  # A file listed by git but deleted in the work tree is not ours to check.
  [ -f "$f" ] || continue
  if ! "$CLANG_FORMAT" --dry-run --Werror "$f" >/dev/null 2>&1; then
    bad+=("$f")
  fi
done

if [ "${#bad[@]}" -eq 0 ]; then
  echo "check_format.sh: ${#files[@]} files formatted ($("$CLANG_FORMAT" --version))"
  exit 0
fi
echo "check_format.sh: ${#bad[@]} of ${#files[@]} files are not clang-format clean:"
printf '  %s\n' "${bad[@]}"
echo "Fix each with:  $CLANG_FORMAT -i FILE"
echo "or all at once: $CLANG_FORMAT -i ${bad[*]}"
echo "(see the differences: $CLANG_FORMAT --dry-run FILE)"
exit 1

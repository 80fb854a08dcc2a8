#!/usr/bin/env bash
# The robust start benchmark (docs/benchmarks.md, "Robust start") on the
# Kleiber photo (6028x3391, 20.4 MP, CC-BY-SA-3.0), which is not committed:
# it is taken from Debian's lomiri-wallpapers-20.04 at run time.
#   bash tests/bench/robust_start_benchmark.sh [benchmark flags...]
#   BUILD_DIR=build-rs bash tests/bench/robust_start_benchmark.sh --memory
set -euo pipefail
cd "$(dirname "$0")/../.."

BUILD_DIR=${BUILD_DIR:-build}
bench="$BUILD_DIR/tests/bench/robust_start_benchmark"
if [ ! -x "$bench" ]; then
  echo "robust_start_benchmark.sh: $bench not built" \
       "(cmake --build $BUILD_DIR --target robust_start_benchmark)" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q lomiri-wallpapers-20.04 >/dev/null)
dpkg -x "$work"/lomiri-wallpapers-20.04_*.deb "$work/pkg"
photo="$work/pkg/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"
"$bench" "$photo" --graffiti=tests/data/graffiti "$@"

#!/usr/bin/env bash
# The result writer benchmark (core/image/result_writer_benchmark.cc) on the
# GPU machine, which has none of libtiff, zstd, libdeflate or Abseil: built
# here without OpenImageIO and the planner, with the Debian libraries it
# needs beside glibc in one folder that travels with the tree.
#
#   here:    bash scripts/gpu/result_writer_benchmark.sh build
#   device:  run (carry [".carry/result_writer"]):
#            bash scripts/gpu/result_writer_benchmark.sh run [flags...]
#
# docs/benchmarks.md, "Result writer", has the figures.
set -euo pipefail
DIR=.carry/result_writer
case "${1:-}" in
  build)
    mkdir -p "$DIR/lib"
    # shellcheck disable=SC2046
    g++ -O2 -std=c++17 -DNDEBUG -DREGSERVE_RESULT_WRITER_STANDALONE -I. \
      core/image/result_writer_benchmark.cc core/image/tiled_tiff_writer.cc \
      core/image/tile_codec.cc core/image/tiff_container.cc \
      core/image/tile_pyramid.cc core/image/compression.cc core/image/image.cc \
      -o "$DIR/result_writer_benchmark" \
      $(pkg-config --libs libtiff-4 libzstd libdeflate libjpeg \
          absl_flags_parse absl_synchronization absl_status absl_statusor \
          absl_strings absl_time absl_str_format) -lpthread
    ldd "$DIR/result_writer_benchmark" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' \
      | grep -v -E '/(libc|libm|libdl|libpthread|librt|ld-linux-x86-64)\.so' \
      | xargs -r cp -L -t "$DIR/lib"
    du -sh "$DIR"
    ;;
  run)
    shift
    OUT_DIR="${TMPDIR:-/tmp}"
    echo "host: $(nproc) cores, $(uname -r); $(grep -m1 'model name' /proc/cpuinfo)"
    df -h "$OUT_DIR" | tail -1
    LD_LIBRARY_PATH="$DIR/lib" "$DIR/result_writer_benchmark" \
      --out_dir "$OUT_DIR" "$@"
    ;;
  *)
    echo "usage: $0 build | run [benchmark flags]" >&2
    exit 2
    ;;
esac

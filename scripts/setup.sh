#!/usr/bin/env bash
# Installs everything regserve needs to build, test and run, from the
# distribution's packages. Supports Debian 12 (bookworm) and Ubuntu 24.04
# (noble). Idempotent; uses sudo only when not already root.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

. /etc/os-release
case "${ID}:${VERSION_ID}" in
  debian:12|ubuntu:24.04) ;;
  *) echo "setup.sh: warning: untested distribution ${PRETTY_NAME}; trying anyway" >&2 ;;
esac

PACKAGES=(
  # toolchain
  g++ cmake ninja-build pkg-config git ca-certificates
  # gRPC / Protobuf; OpenSSL (regserved checks its TLS key and certificate)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libssl-dev
  # imaging and registration
  libinsighttoolkit5-dev elastix libopenimageio-dev openimageio-tools
  libopencv-core-dev libimath-dev
  # the stored result's writer (core/image/tiled_tiff_writer): libtiff for
  # the file, tiles compressed with libdeflate, zstd and libjpeg-turbo;
  # tiffinfo for its tests
  libtiff-dev libdeflate-dev libzstd-dev libjpeg-dev libtiff-tools
  # robust initial alignment (core/registration/robust_start): SIFT, matching,
  # robust homography fits
  libopencv-imgproc-dev libopencv-features2d-dev libopencv-calib3d-dev
  # the quality map's phase correlation (core/quality/phase_correlation)
  libfftw3-dev
  # warp engine (CPU build of LibTorch in the distribution)
  libtorch-dev
  # metrics, base library
  prometheus-cpp-dev libabsl-dev
  # fleet mode's job table in PostgreSQL (core/fleet): the client library
  # (libpqxx 6.4 on Debian 12, 7.8 on Ubuntu 24.04)
  libpqxx-dev
  # tests
  libgtest-dev libgmock-dev python3 python3-grpcio
  # fleet tests start a throwaway PostgreSQL server (initdb, pg_ctl)
  postgresql
  # security tests (tests/e2e/security_test.cc) make certificates with it
  openssl
  # deployment tests (tests/deploy): Prometheus server and promtool, YAML lint
  prometheus yamllint
  # fuzzing (tests/fuzz/run_fuzzers.sh): clang with libFuzzer and the
  # sanitizer runtimes (clang-14 / libclang-rt-14-dev on Debian 12)
  clang libclang-rt-dev
  # CI habits (scripts/check_format.sh): the formatter the style was checked with
  clang-format
)

# REGSERVE_SETUP_SKIP="pkg ..." leaves packages out (the Dockerfile skips
# the CPU-only libtorch-dev, which it replaces with LibTorch for CUDA, and
# the test-only packages).
if [ -n "${REGSERVE_SETUP_SKIP:-}" ]; then
  kept=()
  for p in "${PACKAGES[@]}"; do
    case " ${REGSERVE_SETUP_SKIP} " in
      *" $p "*) ;;
      *) kept+=("$p") ;;
    esac
  done
  PACKAGES=("${kept[@]}")
fi

need=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    need+=("$p")
  fi
done
if [ "${#need[@]}" -eq 0 ]; then
  echo "setup.sh: all packages already installed"
  exit 0
fi
echo "setup.sh: installing ${#need[@]} packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"

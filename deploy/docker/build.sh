#!/usr/bin/env bash
# The build steps both images of the Dockerfile share (the CPU image on
# Debian 12, the GPU image on the CUDA base). Runs inside the build stage.
#
#   build.sh deps              distribution packages for building (setup.sh,
#                              without the test-only ones; REGSERVE_SETUP_SKIP
#                              adds more, e.g. libtorch-dev for the GPU image)
#   build.sh compile [ARG...]  configure (extra cmake ARGs), build, install
#                              into /opt/regserve, check the link order, list
#                              the runtime packages
#
# JOBS (environment) caps the build's parallelism; empty: all cores.
# REGSERVE_BUNDLED_PREFIX: libraries under it (the official LibTorch) are
# copied into the image whole by the Dockerfile, so they are left out here.
set -euo pipefail

# Test, fuzz and CI packages: not needed to build the programs (postgresql:
# the server the fleet tests start; libpqxx-dev stays, regserved links it).
TEST_ONLY="libgtest-dev libgmock-dev python3 python3-grpcio postgresql openssl \
libtiff-tools prometheus yamllint clang libclang-rt-dev clang-format"

deps() {
  REGSERVE_SETUP_SKIP="${TEST_ONLY} ${REGSERVE_SETUP_SKIP:-}" \
    bash /src/scripts/setup.sh
  rm -rf /var/lib/apt/lists/*
}

# libstdc++ must be the first DT_NEEDED entry of each program (the fix of
# cmake/regserve.cmake: otherwise libstdc++'s functions can bind to the
# copies the PyTorch wheel's libtorch exports, and regserved crashes at its
# first job; tests/e2e/stdlib_binding_test checks the same in CI).
check_stdlib_first() {
  local prog first
  for prog in /opt/regserve/bin/*; do
    first="$(readelf -d "${prog}" | awk '/\(NEEDED\)/ {print $NF; exit}')"
    if [ "${first}" != "[libstdc++.so.6]" ]; then
      echo "build.sh: ${prog}: first DT_NEEDED is ${first}, not libstdc++.so.6" >&2
      exit 1
    fi
  done
  echo "build.sh: libstdc++.so.6 is the first DT_NEEDED of every program"
}

# The libraries the programs load (ldd), by owning package: the runtime
# stage installs those packages with apt (so they keep getting security
# updates), and a library no package owns is copied to /opt/regserve/lib.
# glibc comes with the base image, the NVIDIA driver with the container
# toolkit, and REGSERVE_BUNDLED_PREFIX's libraries with the Dockerfile.
list_runtime() {
  local share=/opt/regserve/share/regserve lib pkg alt
  mkdir -p "${share}" /opt/regserve/lib
  : > "${share}/runtime-packages"
  ldd /opt/regserve/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u \
    | grep -v -E '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux-x86-64|libcuda|libnvidia-[a-z-]+)\.so' \
    | while read -r lib; do
        if [ -n "${REGSERVE_BUNDLED_PREFIX:-}" ] \
           && [ "${lib#"${REGSERVE_BUNDLED_PREFIX}"}" != "${lib}" ]; then
          continue
        fi
        # Merged /usr: dpkg may know the file under /lib or /usr/lib; and
        # alternatives (libblas.so.3) are links to the file a package owns.
        case "${lib}" in /usr/*) alt="${lib#/usr}" ;; *) alt="/usr${lib}" ;; esac
        pkg="$(dpkg -S "${lib}" 2>/dev/null || dpkg -S "${alt}" 2>/dev/null \
               || dpkg -S "$(readlink -f "${lib}")" 2>/dev/null || true)"
        pkg="$(printf '%s\n' "${pkg}" | head -n1 | cut -d: -f1)"
        if [ -n "${pkg}" ]; then
          echo "${pkg}" >> "${share}/runtime-packages"
        else
          cp -L -t /opt/regserve/lib "${lib}"
        fi
      done
  sort -u -o "${share}/runtime-packages" "${share}/runtime-packages"
  echo "build.sh: runtime packages: $(tr '\n' ' ' < "${share}/runtime-packages")"
  echo "build.sh: copied libraries: $(ls /opt/regserve/lib | tr '\n' ' ')"
}

compile() {
  cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DREGSERVE_BUILD_TESTS=OFF "$@"
  cmake --build /build ${JOBS:+-j "${JOBS}"} --target regserved regctl
  install -D -m 0755 -t /opt/regserve/bin /build/server/regserved \
    /build/client/regctl
  strip --strip-unneeded /opt/regserve/bin/*
  check_stdlib_first
  list_runtime
}

case "${1:-}" in
  deps) deps ;;
  compile) shift; compile "$@" ;;
  *) echo "usage: build.sh deps | compile [cmake args]" >&2; exit 2 ;;
esac

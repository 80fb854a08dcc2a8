#!/usr/bin/env bash
# The runtime stage's set-up, shared by the CPU and the GPU image: the
# packages the programs need (listed by build.sh), elastix, tini; the
# non-root user; then checks that every library resolves, that the daemon
# starts, and that no compiler came in with the packages.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

apt-get update -q
# shellcheck disable=SC2046 # one package name per line
apt-get install -y -q --no-install-recommends elastix tini ca-certificates \
  $(cat /opt/regserve/share/regserve/runtime-packages)
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

groupadd --system --gid 10001 regserve
useradd --system --uid 10001 --gid regserve --home-dir /var/lib/regserve \
  --shell /usr/sbin/nologin regserve
mkdir -p /var/lib/regserve
chown regserve:regserve /var/lib/regserve

# The NVIDIA driver's libraries come from the container toolkit at run time.
missing="$(ldd /opt/regserve/bin/* | grep 'not found' \
  | grep -v -E 'libcuda\.so|libnvidia' || true)"
if [ -n "${missing}" ]; then
  echo "runtime.sh: unresolved libraries: ${missing}" >&2
  exit 1
fi
for tool in cc gcc g++ c++ clang ld; do
  if command -v "${tool}" >/dev/null; then
    echo "runtime.sh: a compiler tool is in the runtime image: ${tool}" >&2
    exit 1
  fi
done
regserved --version
command -v elastix transformix tini

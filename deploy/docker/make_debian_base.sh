#!/usr/bin/env bash
# Makes a Debian 12 (bookworm) base image without a registry: debootstrap
# (minbase) from a Debian mirror, then `docker import`. For machines that
# reach Debian's package mirrors but no container registry.
#
#   sudo bash deploy/docker/make_debian_base.sh [TAG] [MIRROR]
#   docker build --target cpu --build-arg DEBIAN_BASE=TAG -t regserve:cpu .
#
# TAG defaults to regserve/debian-base:bookworm, MIRROR to
# http://deb.debian.org/debian. Needs root and the debootstrap package.
set -euo pipefail

tag="${1:-regserve/debian-base:bookworm}"
mirror="${2:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

if [ "$(id -u)" -ne 0 ]; then
  echo "make_debian_base.sh: needs root (debootstrap)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "make_debian_base.sh: apt-get install debootstrap" >&2
  exit 1
}

root="$(mktemp -d /tmp/regserve-debian-base.XXXXXX)"
trap 'rm -rf "${root}"' EXIT

debootstrap --variant=minbase bookworm "${root}" "${mirror}"

# Like the official debian:bookworm image: the updates and security suites
# as well, so that packages installed in a build are the current ones.
rm -f "${root}/etc/apt/sources.list"
cat > "${root}/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: ${mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${security}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# Smaller layers: no package lists or downloaded .debs in the base.
rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/archives/*.deb \
  "${root}"/var/log/*.log
printf 'Dpkg::Use-Pty "0";\n' > "${root}/etc/apt/apt.conf.d/90regserve-no-pty"

tar -C "${root}" --numeric-owner -c . \
  | docker import --change 'CMD ["/bin/bash"]' \
      --message "debootstrap --variant=minbase bookworm ${mirror}" - "${tag}"
echo "make_debian_base.sh: imported ${tag}"

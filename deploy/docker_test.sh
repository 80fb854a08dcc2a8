#!/usr/bin/env bash
# The CPU container image as a user meets it (issue 15). Needs root (or the
# docker group) and a Docker engine; no registry: the Debian 12 base is made
# with debootstrap when none is there. Slow (a full image build): not part
# of scripts/test.sh; run it as its own command:
#
#   sudo bash deploy/docker_test.sh
#
# Environment: JOBS (compile jobs in the image build, default 2), BUILD_DIR
# (the host's regserved/regctl, built there if missing; default
# build-docker-test), DEBIAN_BASE (base image; default debian:bookworm if
# present, else regserve/debian-base:bookworm, made if missing), IMAGE
# (default regserve:cpu), REUSE_IMAGE=1 (do not rebuild an existing IMAGE),
# SKIP_COMPOSE=1.
#
# Checks: the image builds (time and size printed); it runs as a non-root
# user and has no compiler; libstdc++ is the first DT_NEEDED of the shipped
# programs; HEALTHCHECK turns healthy; regctl on the host submits a pair
# through the published port and gets the same pixels and transform as from
# a regserved on the host; bad input gets the same gRPC statuses as on the
# host; after `docker kill` a new container on the same volume serves the
# finished job; `docker stop` ends a container with a running job within
# the grace period (exit 0) and the next container finishes that job;
# docker-compose validates deploy/compose.yaml and runs deploy/compose.cpu.yaml,
# whose Prometheus scrapes the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
JOBS="${JOBS:-2}"
BUILD_DIR="${BUILD_DIR:-${REPO}/build-docker-test}"
IMAGE="${IMAGE:-regserve:cpu}"
NAME="regserve-docker-test-$$"
VOLUME="${NAME}-data"
WORK="$(mktemp -d /tmp/regserve-docker-test.XXXXXX)"
T0=$(date +%s)
HOST_PID=""
DOCKERD_PID=""

log() { echo "docker_test: $*"; }
fail() { echo "docker_test: FAIL: $*" >&2; exit 1; }
pass() { echo "docker_test: PASS: $*"; }

cleanup() {
  local rc=$?
  set +e
  if [ "${rc}" -ne 0 ]; then
    for c in $(docker ps -aq --filter "name=${NAME}"); do
      echo "--- docker logs ${c}" >&2
      docker logs --tail 40 "${c}" >&2
    done
  fi
  docker ps -aq --filter "name=${NAME}" | xargs -r docker rm -f -v >/dev/null
  if [ -z "${SKIP_COMPOSE:-}" ] && [ -f "${WORK}/compose.env" ]; then
    docker-compose -p "${NAME}" -f deploy/compose.cpu.yaml down -v >/dev/null 2>&1
  fi
  docker volume rm "${VOLUME}" >/dev/null 2>&1
  [ -n "${HOST_PID}" ] && kill -TERM "${HOST_PID}" && wait "${HOST_PID}"
  [ -n "${DOCKERD_PID}" ] && kill -TERM "${DOCKERD_PID}"
  rm -rf "${WORK}"
  log "$([ "${rc}" -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - T0 )) s"
}
trap cleanup EXIT

# shellcheck source=deploy/docker_test_lib.sh
source deploy/docker_test_lib.sh

# Runs one step and logs its time.
step() {
  local t
  t=$(date +%s)
  "$@"
  log "step $1: $(( $(date +%s) - t )) s"
}

step ensure_dockerd
step build_host_programs
step ensure_base_image
step build_image
step check_image_contents
step start_host_daemon
step test_same_result
step test_bad_input
step test_kill_and_volume
step test_stop_with_running_job
[ -n "${SKIP_COMPOSE:-}" ] || step test_compose
log "summary: image ${IMAGE} ${IMAGE_MB} MB, build ${BUILD_S}"

# shellcheck shell=bash
# Steps of deploy/docker_test.sh (sourced; uses its log/fail/pass, REPO,
# WORK, IMAGE, NAME, VOLUME, JOBS, BUILD_DIR).

REGCTL() { "${BUILD_DIR}/client/regctl" "$@"; }

# A Docker engine: the running one, or dockerd started here (Debian's
# docker.io package), stopped again at the end.
ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || fail "no Docker engine: apt-get install docker.io"
  log "starting dockerd"
  dockerd >"${WORK}/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return
    sleep 1
  done
  cat "${WORK}/dockerd.log" >&2
  fail "dockerd did not start"
}

build_host_programs() {
  if [ -x "${BUILD_DIR}/server/regserved" ] && [ -x "${BUILD_DIR}/client/regctl" ]; then
    return
  fi
  log "building regserved and regctl on the host in ${BUILD_DIR}"
  cmake -S "${REPO}" -B "${BUILD_DIR}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DREGSERVE_BUILD_TESTS=OFF >"${WORK}/cmake.log" 2>&1 \
    || { cat "${WORK}/cmake.log" >&2; fail "cmake"; }
  nice -n 10 cmake --build "${BUILD_DIR}" -j "${JOBS}" --target regserved regctl
}

# No registry: a Debian 12 base made with debootstrap and imported.
ensure_base_image() {
  if [ -z "${DEBIAN_BASE:-}" ]; then
    if docker image inspect debian:bookworm >/dev/null 2>&1; then
      DEBIAN_BASE=debian:bookworm
    else
      DEBIAN_BASE=regserve/debian-base:bookworm
    fi
  fi
  if ! docker image inspect "${DEBIAN_BASE}" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
    log "making ${DEBIAN_BASE} with debootstrap"
    bash deploy/docker/make_debian_base.sh "${DEBIAN_BASE}"
  fi
  log "base image ${DEBIAN_BASE}"
}

build_image() {
  local t
  if [ -n "${REUSE_IMAGE:-}" ] && docker image inspect "${IMAGE}" >/dev/null 2>&1; then
    BUILD_S="reused"
    IMAGE_MB=$(( $(docker image inspect -f '{{.Size}}' "${IMAGE}") / 1000000 ))
    log "REUSE_IMAGE: not building ${IMAGE} (${IMAGE_MB} MB)"
    return
  fi
  t=$(date +%s)
  log "docker build --target cpu (JOBS=${JOBS})"
  nice -n 10 docker build --target cpu --build-arg "DEBIAN_BASE=${DEBIAN_BASE}" \
    --build-arg "JOBS=${JOBS}" -t "${IMAGE}" . >"${WORK}/build.log" 2>&1 \
    || { tail -60 "${WORK}/build.log" >&2; fail "docker build"; }
  BUILD_S="$(( $(date +%s) - t )) s"
  IMAGE_MB=$(( $(docker image inspect -f '{{.Size}}' "${IMAGE}") / 1000000 ))
  grep -E 'build\.sh: (libstdc|runtime packages|copied)' "${WORK}/build.log" || true
  pass "image ${IMAGE} built in ${BUILD_S}, ${IMAGE_MB} MB"
}

check_image_contents() {
  local uid found first
  uid="$(docker run --rm --entrypoint id "${IMAGE}" -u)"
  [ "${uid}" != 0 ] || fail "the container runs as root"
  pass "runs as uid ${uid} ($(docker run --rm --entrypoint id "${IMAGE}" -un))"
  found="$(docker run --rm --entrypoint /bin/sh "${IMAGE}" -c \
    'for t in cc gcc g++ c++ clang cpp ld as; do command -v $t; done;
     ls /usr/bin | grep -E "^(x86_64-linux-gnu-)?(gcc|g\+\+|cc)(-[0-9]+)?$"' || true)"
  [ -z "${found}" ] || fail "compiler tools in the image: ${found}"
  pass "no compiler (cc, gcc, g++, c++, clang, cpp, ld, as absent)"
  # The shipped programs, read with the host's readelf (none in the image).
  docker create --name "${NAME}-files" "${IMAGE}" >/dev/null
  docker cp "${NAME}-files:/opt/regserve/bin/regserved" "${WORK}/regserved.image"
  docker rm -v "${NAME}-files" >/dev/null
  first="$(readelf -d "${WORK}/regserved.image" | awk '/\(NEEDED\)/ {print $NF; exit}')"
  [ "${first}" = "[libstdc++.so.6]" ] || fail "regserved's first DT_NEEDED is ${first}"
  pass "the image's regserved needs libstdc++.so.6 first"
}

start_host_daemon() {
  "${BUILD_DIR}/server/regserved" --listen=127.0.0.1:0 \
    --data_dir="${WORK}/host-data" --input_root="${REPO}/tests/data" >"${WORK}/host.out" 2>"${WORK}/host.err" &
  HOST_PID=$!
  for _ in $(seq 1 300); do
    HOST_ADDR="$(sed -n 's/^regserved listening on //p' "${WORK}/host.out")"
    [ -n "${HOST_ADDR}" ] && return
    kill -0 "${HOST_PID}" 2>/dev/null || { cat "${WORK}/host.err" >&2; fail "host regserved"; }
    sleep 0.1
  done
  fail "host regserved did not start"
}

# Starts a container on the test volume (docker run options, then `--` and
# regserved's arguments instead of the image's CMD) and waits until Docker
# reports it healthy; sets ADDR.
start_container() {
  local name="$1" t status
  local -a opts=()
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  [ $# -eq 0 ] || shift
  t=$(date +%s)
  docker run -d --name "${name}" -p 127.0.0.1::50051 -p 127.0.0.1::9464 \
    -v "${VOLUME}:/var/lib/regserve" "${opts[@]}" "${IMAGE}" "$@" >/dev/null
  ADDR="$(docker port "${name}" 50051/tcp | head -n1)"
  for _ in $(seq 1 120); do
    status="$(docker inspect -f '{{.State.Health.Status}}' "${name}")"
    if [ "${status}" = healthy ]; then
      log "${name} healthy after $(( $(date +%s) - t )) s on ${ADDR}"
      return
    fi
    [ "$(docker inspect -f '{{.State.Running}}' "${name}")" = true ] \
      || fail "${name} exited"
    sleep 1
  done
  fail "${name} not healthy (${status})"
}

FIXED=tests/data/itk_brain/BrainProtonDensitySlice.png
MOVING=tests/data/itk_brain/BrainProtonDensitySliceR10X13Y17.png

# The job id from the first line of `regctl submit --json`.
job_id_of() {
  { grep -o '"job_id": *"[^"]*"' "$1" || true; } | head -n1 | sed 's/.*"\([^"]*\)"$/\1/'
}

submit_pair() {  # ADDR OUT_PREFIX
  REGCTL --server "$1" submit --json --fixed "${FIXED}" --moving "${MOVING}" \
    --transform affine --output "$2.tif" --transform-out "$2.transform" \
    >"$2.json" 2>"$2.err" || { cat "$2.err" >&2; fail "submit to $1"; }
}

# The first container has the test data at the same path as the host, as
# its input root, so that server-side paths mean the same on both sides.
test_same_result() {
  start_container "${NAME}-1" -v "${REPO}/tests/data:${REPO}/tests/data:ro" -- \
    --listen=0.0.0.0:50051 --insecure_listen_any --metrics_listen=0.0.0.0:9464 \
    --data_dir=/var/lib/regserve --input_root="${REPO}/tests/data"
  submit_pair "${HOST_ADDR}" "${WORK}/host"
  submit_pair "${ADDR}" "${WORK}/container"
  JOB1="$(job_id_of "${WORK}/container.json")"
  [ -n "${JOB1}" ] || fail "no job id in ${WORK}/container.json"
  cmp "${WORK}/host.tif" "${WORK}/container.tif" \
    || idiff -fail 0 -failpercent 0 "${WORK}/host.tif" "${WORK}/container.tif" \
    || fail "the container's result differs from the host's"
  diff -r "${WORK}/host.transform" "${WORK}/container.transform" \
    || fail "the container's transform differs from the host's"
  pass "the pair through the published port: the same result file and transform as on the host"
  # The same pair read by the daemons from the input root.
  local side addr
  for side in host container; do
    addr="${HOST_ADDR}"; [ "${side}" = host ] || addr="${ADDR}"
    REGCTL --server "${addr}" submit --fixed-path "${REPO}/${FIXED}" \
      --moving-path "${REPO}/${MOVING}" --transform affine \
      --output "${WORK}/${side}-paths.tif" >/dev/null 2>"${WORK}/${side}-paths.err" \
      || { cat "${WORK}/${side}-paths.err" >&2; fail "server-side submit (${side})"; }
  done
  cmp "${WORK}/host-paths.tif" "${WORK}/container-paths.tif" \
    || idiff -fail 0 -failpercent 0 "${WORK}/host-paths.tif" "${WORK}/container-paths.tif" \
    || fail "server-side inputs: the container's result differs from the host's"
  pass "the pair from the input root (--fixed-path): the same result file as on the host"
}

# "EXIT CODE_NAME" of a regctl command (the first gRPC code name it prints).
status_of() {
  local rc=0 out
  out="$(REGCTL "$@" 2>&1)" || rc=$?
  echo "${rc} $(printf '%s\n' "${out}" | grep -o -E '\b(INVALID_ARGUMENT|PERMISSION_DENIED|NOT_FOUND|ALREADY_EXISTS|OUT_OF_RANGE|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|UNAVAILABLE|CANCELLED|UNAUTHENTICATED|INTERNAL|DEADLINE_EXCEEDED|UNIMPLEMENTED)\b' | head -n1)"
}

test_bad_input() {
  local bad=tests/data/bad_images name h c
  local -a cases=(
    "missing input path|submit --fixed-path ${REPO}/tests/data/no_such.png --moving-path ${REPO}/${MOVING} --output ${WORK}/x.tif"
    "input path outside the input root|submit --fixed-path /etc/passwd --moving-path ${REPO}/${MOVING} --output ${WORK}/x.tif"
    "input path with ..|submit --fixed-path ${REPO}/tests/data/../README.md --moving-path ${REPO}/${MOVING} --output ${WORK}/x.tif"
    "corrupt image upload|submit --fixed ${bad}/corrupt_header.png --moving ${MOVING} --output ${WORK}/x.tif"
    "decompression bomb upload|submit --fixed ${bad}/bomb_200000x200000.png --moving ${MOVING} --output ${WORK}/x.tif"
    "unknown job|status 0123456789abcdef0123456789abcdef"
    "watch beyond the tiles|watch JOB1 --from-tile 100000"
  )
  for c in "${cases[@]}"; do
    name="${c%%|*}"
    # shellcheck disable=SC2086 # the case's words
    set -- ${c#*|}
    if [ "$1" = watch ]; then
      # The same finished pair on each side (its own job id there).
      h="$(status_of --server "${HOST_ADDR}" watch "$(job_id_of "${WORK}/host.json")" "${@:3}")"
      c="$(status_of --server "${ADDR}" watch "${JOB1}" "${@:3}")"
    else
      h="$(status_of --server "${HOST_ADDR}" "$@")"
      c="$(status_of --server "${ADDR}" "$@")"
    fi
    [ "${h}" = "${c}" ] || fail "${name}: host '${h}', container '${c}'"
    [ "${h% *}" != 0 ] || fail "${name}: accepted"
    pass "${name}: exit ${h% *}, ${h#* } on the host and in the container"
  done
}

test_kill_and_volume() {
  docker kill "${NAME}-1" >/dev/null
  docker rm -v "${NAME}-1" >/dev/null
  start_container "${NAME}-2"
  REGCTL --server "${ADDR}" status "${JOB1}" | tee "${WORK}/status-after-kill" | head -n1
  grep -q "JOB_STATE_COMPLETED" "${WORK}/status-after-kill" \
    || fail "job ${JOB1} not completed after docker kill"
  REGCTL --server "${ADDR}" watch "${JOB1}" --output "${WORK}/rewatch.tif" \
    >/dev/null 2>"${WORK}/rewatch.err" || { cat "${WORK}/rewatch.err" >&2; fail "watch"; }
  idiff -fail 0 -failpercent 0 "${WORK}/container.tif" "${WORK}/rewatch.tif" >/dev/null \
    || fail "the stored result differs from the streamed one"
  pass "after docker kill, a new container on the volume serves job ${JOB1} (same pixels)"
}

# A job that runs for a while: the 5312x2988 photo on itself, B-spline.
test_stop_with_running_job() {
  local photo=tests/data/photos/seeding_5312x2988.jpg job t state code
  REGCTL --server "${ADDR}" submit --json --fixed "${photo}" --moving "${photo}" \
    --transform bspline --output "${WORK}/long.tif" \
    >"${WORK}/long.json" 2>"${WORK}/long.err" &
  local submit_pid=$!
  for _ in $(seq 1 300); do
    job="$(job_id_of "${WORK}/long.json")"
    # Stopped in the registration stage: elastix runs as a child process.
    if [ -n "${job}" ] && REGCTL --server "${ADDR}" status "${job}" 2>/dev/null \
         | head -n1 | grep -q "JOB_STATE_RUNNING (registration"; then
      break
    fi
    sleep 0.5
  done
  [ -n "${job}" ] || fail "the long job did not start"
  sleep 2
  state="$(REGCTL --server "${ADDR}" status "${job}" | head -n1)"
  t=$(date +%s)
  docker stop -t 60 "${NAME}-2" >/dev/null
  t=$(( $(date +%s) - t ))
  code="$(docker inspect -f '{{.State.ExitCode}}' "${NAME}-2")"
  wait "${submit_pid}" || true
  [ "${code}" = 0 ] || fail "docker stop: exit code ${code} after ${t} s"
  [ "${t}" -lt 60 ] || fail "docker stop took ${t} s"
  pass "docker stop with a running job (${state#*: }) ended it in ${t} s, exit 0"
  docker rm -v "${NAME}-2" >/dev/null
  start_container "${NAME}-3"
  REGCTL --server "${ADDR}" status "${job}" | head -n1
  REGCTL --server "${ADDR}" watch "${job}" --output "${WORK}/long.tif" \
    >/dev/null 2>"${WORK}/long-watch.err" || { cat "${WORK}/long-watch.err" >&2; fail "watch after stop"; }
  pass "the next container on the volume finished job ${job}"
}

test_compose() {
  local prom_port q
  command -v docker-compose >/dev/null || apt-get install -y -q docker-compose
  GRAFANA_ADMIN_PASSWORD=unused docker-compose -f deploy/compose.yaml config -q \
    || fail "docker-compose config deploy/compose.yaml"
  pass "docker-compose config validates deploy/compose.yaml"
  docker-compose -f deploy/compose.cpu.yaml config -q || fail "compose.cpu.yaml"
  docker rm -f -v "${NAME}-3" >/dev/null
  touch "${WORK}/compose.env"
  export DEBIAN_BASE REGSERVE_IMAGE="${IMAGE}" REGSERVE_BIND=127.0.0.1
  export REGSERVE_GRPC_PORT=0 REGSERVE_METRICS_PORT=0 REGSERVE_PROMETHEUS_PORT=0
  # regserved's image is the one built above (compose would build the same
  # stages); Prometheus's is built here, from Debian's package.
  local dc=(docker-compose -p "${NAME}" -f deploy/compose.cpu.yaml)
  { nice -n 10 "${dc[@]}" build prometheus && "${dc[@]}" up -d; } \
    >"${WORK}/compose.log" 2>&1 || { tail -40 "${WORK}/compose.log" >&2; fail "compose up"; }
  prom_port="$("${dc[@]}" port prometheus 9090 | cut -d: -f2)"
  for _ in $(seq 1 60); do
    REGCTL --server "$("${dc[@]}" port regserved 50051)" health >/dev/null 2>&1 && break
    sleep 1
  done
  REGCTL --server "$("${dc[@]}" port regserved 50051)" health >/dev/null \
    || fail "compose: regserved not serving"
  for _ in $(seq 1 90); do
    q="$(curl -fsS "http://127.0.0.1:${prom_port}/api/v1/query" \
      --data-urlencode 'query=regserve_build_info * on(instance) group_left up' || true)"
    if printf '%s' "${q}" | grep -q '"value":\[[^]]*,"1"\]'; then
      pass "compose (CPU): Prometheus scrapes regserved (regserve_build_info, up = 1)"
      return
    fi
    sleep 2
  done
  echo "${q}" >&2
  fail "Prometheus did not scrape regserved"
}

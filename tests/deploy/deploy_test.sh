#!/usr/bin/env bash
# Deployment checks, end to end, against a REAL Prometheus server:
#
#  1. promtool checks deploy/prometheus/prometheus.yml and alerts.yml and
#     runs the alert unit tests (alerts_test.yml); yamllint checks every
#     YAML file under deploy/ (deploy/.yamllint) and json.tool every JSON.
#  2. Starts regserved on loopback ports (--listen 127.0.0.1:0
#     --metrics_listen 127.0.0.1:0) with bearer tokens and --metrics_tokens,
#     checks that /metrics answers 401 without or with wrong credentials, and
#     starts a Prometheus (Debian's `prometheus`) on a free loopback port,
#     with a generated config that scrapes the daemon every second with
#     basic auth and loads deploy/prometheus/alerts.yml.
#  3. Runs real jobs through regctl: one is cancelled while it registers,
#     one completes, one fails (a corrupt image).
#  4. Queries Prometheus's HTTP API until it has scraped the exact counts,
#     histogram samples and byte/pixel totals those jobs must produce.
#  5. Evaluates every PromQL expression of the Grafana dashboard and of the
#     alerting rules against that Prometheus: each must parse and return a
#     series (see prom_check.py), and every loaded rule must evaluate.
#
# Usage: deploy_test.sh --regserved BIN --regctl BIN --version X.Y.Z
# A missing binary or a regserved without --metrics_listen is a FAILURE.
#
# The regctl commands used (kept in the regctl_* functions below):
#   regctl --server HOST:PORT health
#   regctl --server HOST:PORT submit --fixed F --moving M --output OUT
#       uploads, follows the job to its end; exit 0 iff it completed; prints
#       a line "job <ID> ..." once the job is accepted
#   regctl --server HOST:PORT cancel <ID>
#
# The functions can be run by hand: `source deploy_test.sh` defines them
# without running main.
set -euo pipefail

DEPLOY_TEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${DEPLOY_TEST_DIR}/../.." && pwd)"
DEPLOY="${REPO}/deploy"
DATA="${REPO}/tests/data"
PROM_CHECK="python3 ${DEPLOY_TEST_DIR}/prom_check.py"

REGSERVED=""
REGCTL=""
VERSION=""
WORK=""
DAEMON_PID=""
PROM_PID=""
GRPC_ADDR=""
METRICS_ADDR=""
SCRAPE_TOKEN=""
PROM_URL=""

log() { echo "deploy_test: $*"; }
die() {
  echo "deploy_test: FAIL: $*" >&2
  exit 1
}

# --- regctl, in one place --------------------------------------------------
regctl_health() { "${REGCTL}" --server "${GRPC_ADDR}" health; }
# Raw tiles on the wire (regctl's default is zstd), so that the bytes sent
# are at least the result's samples (regserve_sent_bytes_total below).
regctl_submit() {  # FIXED MOVING OUTPUT
  "${REGCTL}" --server "${GRPC_ADDR}" submit --fixed "$1" --moving "$2" \
    --output "$3" --tile-encoding raw
}
regctl_cancel() { "${REGCTL}" --server "${GRPC_ADDR}" cancel "$1"; }

# --- 1. static checks ------------------------------------------------------
require_tools() {
  local t
  for t in promtool prometheus yamllint python3; do
    command -v "$t" >/dev/null ||
      die "'$t' not found: run scripts/setup.sh (packages prometheus, yamllint)"
  done
  python3 -c 'import yaml' || die "python3-yaml missing (yamllint depends on it)"
}

static_checks() {
  log "promtool check config / rules / test rules"
  promtool check config "${DEPLOY}/prometheus/prometheus.yml"
  promtool check rules "${DEPLOY}/prometheus/alerts.yml"
  (cd "${DEPLOY}/prometheus" && promtool test rules alerts_test.yml)
  log "yamllint deploy/"
  yamllint --strict -c "${DEPLOY}/.yamllint" "${DEPLOY}"
  local f n=0
  while IFS= read -r -d '' f; do
    python3 -m json.tool "$f" >/dev/null || die "invalid JSON: $f"
    n=$((n + 1))
  done < <(find "${DEPLOY}" -name '*.json' -print0)
  [ "$n" -ge 1 ] || die "no JSON files under deploy/ (the Grafana dashboard?)"
  log "${n} JSON file(s) valid"
  k8s_checks
}

# The Kubernetes manifests: each kustomization rendered offline (kubectl
# kustomize, when a kubectl with kustomize v4+ is installed; Debian 12's
# kubernetes-client 1.20 is too old), then checked object by object.
k8s_checks() {
  if ! command -v kubectl >/dev/null ||
    ! kubectl kustomize "${DEPLOY}/k8s" >/dev/null 2>&1; then
    log "k8s: no kubectl with kustomize v4+; rendering skipped (yamllint only)"
    return 0
  fi
  local dir
  for dir in "${DEPLOY}/k8s" "${DEPLOY}/k8s/fleet"; do
    kubectl kustomize "${dir}" | python3 "${DEPLOY_TEST_DIR}/k8s_check.py" "${dir}" ||
      die "k8s manifests in ${dir} failed their checks"
  done
}

# --- 2. daemon and Prometheus -----------------------------------------------
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits for "PREFIX HOST:PORT" in FILE; prints HOST:PORT.
wait_for_line() {  # FILE PREFIX TIMEOUT_S PID
  local i line
  for ((i = 0; i < $3 * 10; i++)); do
    line="$(grep -m1 "^$2 " "$1" 2>/dev/null || true)"
    if [ -n "$line" ]; then
      echo "${line#"$2 "}"
      return 0
    fi
    kill -0 "$4" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

start_daemon() {
  [ -x "${REGSERVED}" ] ||
    die "regserved not built at '${REGSERVED}' (the daemon target needs core/jobs)"
  [ -x "${REGCTL}" ] || die "regctl not built at '${REGCTL}'"
  local help
  help="$("${REGSERVED}" --helpfull 2>&1 || true)"  # absl exits 1 after help
  grep -q -- '-metrics_listen' <<<"${help}" ||
    die "regserved has no --metrics_listen flag: wire server/metrics into server/regserved.cc (see server/metrics/metrics.h)"
  mkdir -p "${WORK}/data"
  # A gRPC token for the client (regctl reads REGSERVE_TOKEN), and a
  # separate metrics token for Prometheus, which scrapes with basic auth
  # (--metrics_tokens): user = the name on its line, password = its token.
  REGSERVE_TOKEN="deploy-test-client-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  SCRAPE_TOKEN="deploy-test-scrape-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export REGSERVE_TOKEN
  printf 'deploy-test %s\n' "${REGSERVE_TOKEN}" >"${WORK}/tokens"
  printf 'prometheus %s\n' "${SCRAPE_TOKEN}" >"${WORK}/metrics_tokens"
  printf '%s' "${SCRAPE_TOKEN}" >"${WORK}/scrape_password"
  chmod 600 "${WORK}/tokens" "${WORK}/metrics_tokens" "${WORK}/scrape_password"
  "${REGSERVED}" --listen 127.0.0.1:0 --metrics_listen 127.0.0.1:0 \
    --auth_tokens "${WORK}/tokens" --metrics_tokens "${WORK}/metrics_tokens" \
    --data_dir "${WORK}/data" >"${WORK}/regserved.out" 2>"${WORK}/regserved.err" &
  DAEMON_PID=$!
  GRPC_ADDR="$(wait_for_line "${WORK}/regserved.out" "regserved listening on" 60 "${DAEMON_PID}")" ||
    { cat "${WORK}/regserved.err" >&2; die "regserved did not print 'regserved listening on HOST:PORT'"; }
  METRICS_ADDR="$(wait_for_line "${WORK}/regserved.out" "regserved metrics on" 10 "${DAEMON_PID}")" ||
    { cat "${WORK}/regserved.err" >&2; die "regserved did not print 'regserved metrics on HOST:PORT'"; }
  log "regserved: gRPC ${GRPC_ADDR}, metrics ${METRICS_ADDR}"
  # Without credentials, with a wrong password, or with the gRPC client's
  # own name and token, the endpoint answers 401.
  local code auth
  for auth in "" "prometheus:wrong-password-0000000" "prometheus:${REGSERVE_TOKEN}" \
      "deploy-test:${REGSERVE_TOKEN}"; do
    code="$(metrics_status "${auth}")"
    [ "${code}" = 401 ] || die "/metrics with credentials '${auth%%:*}:...' answered ${code}, not 401"
  done
  [ "$(metrics_status "prometheus:${SCRAPE_TOKEN}")" = 200 ] ||
    die "/metrics refused the scrape credentials"
  log "/metrics: 401 without or with wrong credentials, 200 with the scrape token"
  regctl_health || die "regctl health failed against ${GRPC_ADDR}"
}

start_prometheus() {  # METRICS_ADDR
  local port
  port="$(free_port)"
  mkdir -p "${WORK}/prometheus"
  cat >"${WORK}/prometheus/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - ${DEPLOY}/prometheus/alerts.yml
scrape_configs:
  - job_name: regserve
    metrics_path: /metrics
    basic_auth:
      username: prometheus
      password_file: ${WORK}/scrape_password
    static_configs:
      - targets: ["$1"]
EOF
  promtool check config "${WORK}/prometheus/prometheus.yml" >/dev/null
  prometheus --config.file="${WORK}/prometheus/prometheus.yml" \
    --storage.tsdb.path="${WORK}/prometheus/data" \
    --web.listen-address="127.0.0.1:${port}" \
    >"${WORK}/prometheus.log" 2>&1 &
  PROM_PID=$!
  PROM_URL="http://127.0.0.1:${port}"
  ${PROM_CHECK} ready "${PROM_URL}" 30 ||
    { tail -20 "${WORK}/prometheus.log" >&2; die "Prometheus did not start"; }
  ${PROM_CHECK} config "${PROM_URL}" regserve
}

# HTTP status of GET /metrics with basic credentials USER:PASSWORD ("" none).
metrics_status() {  # USER:PASSWORD
  python3 - "${METRICS_ADDR}" "$1" <<'EOF'
import base64, sys, urllib.error, urllib.request
req = urllib.request.Request(f"http://{sys.argv[1]}/metrics")
if sys.argv[2]:
    req.add_header("Authorization",
                   "Basic " + base64.b64encode(sys.argv[2].encode()).decode())
try:
    print(urllib.request.urlopen(req, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception as e:  # refused, timed out: say so instead of a traceback
    print(f"no answer ({e})")
EOF
}

# Rotates the scrape token: rewrite --metrics_tokens, SIGHUP, then the old
# token gets 401 and the new one 200.
check_metrics_token_reload() {
  local old="${SCRAPE_TOKEN}" new i
  new="deploy-test-scrape2-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf 'prometheus %s\n' "${new}" >"${WORK}/metrics_tokens"
  kill -HUP "${DAEMON_PID}"
  for ((i = 0; i < 100; i++)); do
    grep -q "SIGHUP: reloaded 1 token(s) from ${WORK}/metrics_tokens" \
      "${WORK}/regserved.err" && break
    sleep 0.1
  done
  grep -q "SIGHUP: reloaded 1 token(s) from ${WORK}/metrics_tokens" \
    "${WORK}/regserved.err" || die "no reload of --metrics_tokens after SIGHUP"
  [ "$(metrics_status "prometheus:${old}")" = 401 ] ||
    die "/metrics still accepts the scrape token replaced at SIGHUP"
  [ "$(metrics_status "prometheus:${new}")" = 200 ] ||
    die "/metrics refuses the scrape token loaded at SIGHUP"
  log "/metrics: SIGHUP swapped the scrape token (old 401, new 200)"
}

# One sample from the daemon's own endpoint (not through Prometheus).
daemon_metric() {  # SERIES (exact name{labels} as exposed)
  python3 - "${METRICS_ADDR}" "$1" "prometheus:${SCRAPE_TOKEN}" <<'EOF'
import base64, sys, urllib.request
req = urllib.request.Request(f"http://{sys.argv[1]}/metrics")
req.add_header("Authorization",
               "Basic " + base64.b64encode(sys.argv[3].encode()).decode())
body = urllib.request.urlopen(req, timeout=5).read().decode()
for line in body.splitlines():
    if line.startswith(sys.argv[2] + " "):
        print(line.split()[-1]); break
else:
    print("0")
EOF
}

# --- 3. jobs ----------------------------------------------------------------
run_jobs() {
  local photo="${DATA}/photos/seeding_5312x2988.jpg"
  local fixed="${DATA}/itk_brain/BrainProtonDensitySlice.png"
  local moving="${DATA}/itk_brain/BrainProtonDensitySliceShifted13x17y.png"
  local corrupt="${DATA}/bad_images/corrupt_header.png"

  # a. Cancelled while it registers: a 15.9 MP pair takes elastix tens of
  # seconds.
  log "job 1: submit, cancel during registration"
  regctl_submit "${photo}" "${photo}" "${WORK}/cancelled.tif" \
    >"${WORK}/job1.out" 2>&1 &
  local submit_pid=$! id="" i
  for ((i = 0; i < 600; i++)); do
    id="$(grep -o -E -m1 '\bjob[ :]+[A-Za-z0-9_.-]+' "${WORK}/job1.out" 2>/dev/null |
      head -1 | sed -E 's/^job[ :]+//' || true)"
    if [ -n "$id" ] && [ "$(daemon_metric 'regserve_jobs_running{stage="registration"}')" != "0" ]; then
      break
    fi
    kill -0 "${submit_pid}" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$id" ] || { cat "${WORK}/job1.out" >&2; die "no job id in regctl submit's output"; }
  [ "$(daemon_metric 'regserve_jobs_running{stage="registration"}')" != "0" ] ||
    { cat "${WORK}/job1.out" >&2; die "job ${id} never reached registration"; }
  regctl_cancel "$id" || die "regctl cancel ${id} failed"
  if wait "${submit_pid}"; then
    die "regctl submit of the cancelled job ${id} exited 0"
  fi
  log "job 1 (${id}) cancelled"

  # b. Completes.
  log "job 2: submit, complete"
  regctl_submit "${fixed}" "${moving}" "${WORK}/completed.tif" >"${WORK}/job2.out" 2>&1 ||
    { cat "${WORK}/job2.out" >&2; die "the brain pair did not complete"; }
  [ -s "${WORK}/completed.tif" ] || die "no result written to ${WORK}/completed.tif"

  # c. Fails: the moving image is corrupt.
  log "job 3: submit a corrupt image, fail"
  if regctl_submit "${fixed}" "${corrupt}" "${WORK}/failed.tif" >"${WORK}/job3.out" 2>&1; then
    die "the corrupt image's job completed"
  fi
  log "jobs done"
}

daemon_series_count() {  # NAME: how many labelled series the daemon exposes
  python3 - "${METRICS_ADDR}" "$1" "prometheus:${SCRAPE_TOKEN}" <<'EOF'
import base64, sys, urllib.request
req = urllib.request.Request(f"http://{sys.argv[1]}/metrics")
req.add_header("Authorization",
               "Basic " + base64.b64encode(sys.argv[3].encode()).decode())
body = urllib.request.urlopen(req, timeout=5).read().decode()
print(sum(1 for line in body.splitlines() if line.startswith(sys.argv[2] + "{")))
EOF
}

# --- 4. what Prometheus must have scraped -----------------------------------
check_counts() {
  local fixed="${DATA}/itk_brain/BrainProtonDensitySlice.png"
  local bytes pixels
  # Every byte uploaded: job 1 twice the photo, job 2 the brain pair, job 3
  # the brain slice and the corrupt file.
  bytes=$(($(stat -c %s "${DATA}/photos/seeding_5312x2988.jpg") * 2 +
    $(stat -c %s "${fixed}") * 2 +
    $(stat -c %s "${DATA}/itk_brain/BrainProtonDensitySliceShifted13x17y.png") +
    $(stat -c %s "${DATA}/bad_images/corrupt_header.png")))
  # The completed job warps onto the fixed image's grid.
  pixels="$(python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(24); w,h=struct.unpack(">II",d[16:24]); print(w*h)' "${fixed}")"
  # One running-stages series per pipeline stage the daemon exposes (the
  # pipeline grows: count them where the daemon serves them).
  local stages
  stages=$(daemon_series_count regserve_jobs_running)
  cat >"${WORK}/expect.json" <<EOF
[
  ["up{job=\"regserve\"}", "==", 1],
  ["regserve_build_info{version=\"${VERSION}\"}", "==", 1],
  ["regserve_jobs_submitted_total", "==", 3],
  ["regserve_jobs_finished_total{outcome=\"completed\"}", "==", 1],
  ["regserve_jobs_finished_total{outcome=\"failed\"}", "==", 1],
  ["regserve_jobs_finished_total{outcome=\"cancelled\"}", "==", 1],
  ["regserve_jobs_finished_total{outcome=\"rejected\"}", "==", 0],
  ["sum(regserve_job_failures_total)", "==", 1],
  ["count(regserve_jobs_finished_total)", "==", 4],
  ["count(regserve_job_failures_total)", "==", 16],
  ["count(regserve_jobs_running)", "==", ${stages}],
  ["sum(regserve_jobs_running)", "==", 0],
  ["regserve_queue_length", "==", 0],
  ["regserve_job_duration_seconds_count", "==", 3],
  ["regserve_stage_duration_seconds_count{stage=\"warp\"}", "==", 1],
  ["regserve_stage_duration_seconds_bucket{stage=\"warp\",le=\"+Inf\"}", "==", 1],
  ["regserve_stage_duration_seconds_sum{stage=\"warp\"}", ">", 0],
  ["regserve_stage_duration_seconds_count{stage=\"registration\"}", ">=", 1],
  ["regserve_stage_duration_seconds_count{stage=\"decode\"}", ">=", 1],
  ["histogram_quantile(0.5, sum by (le) (regserve_stage_duration_seconds_bucket{stage=\"registration\"}))", ">", 0],
  ["regserve_registration_final_metric_count", "==", 1],
  ["regserve_registration_final_metric_sum", "<", 0],
  ["regserve_elastix_iterations_total", ">", 0],
  ["regserve_pixels_warped_total", "==", ${pixels}],
  ["regserve_pixels_registered_total", ">", 0],
  ["regserve_received_bytes_total", "==", ${bytes}],
  ["regserve_sent_bytes_total", ">=", ${pixels}],
  ["regserve_ram_budget_bytes", ">", 0],
  ["regserve_ram_free_bytes", ">", 0],
  ["regserve_ram_reserved_bytes", "==", 0]
]
EOF
  ${PROM_CHECK} expect "${PROM_URL}" 60 "${WORK}/expect.json"
}

check_expressions() {
  ${PROM_CHECK} expressions "${PROM_URL}" \
    "${DEPLOY}/grafana/dashboards/regserve.json" "${DEPLOY}/prometheus/alerts.yml"
}

cleanup() {
  local rc=$?
  if [ -n "${DAEMON_PID}" ] && kill -0 "${DAEMON_PID}" 2>/dev/null; then
    kill -TERM "${DAEMON_PID}" 2>/dev/null || true
    wait "${DAEMON_PID}" 2>/dev/null || true
  fi
  if [ -n "${PROM_PID}" ] && kill -0 "${PROM_PID}" 2>/dev/null; then
    kill -TERM "${PROM_PID}" 2>/dev/null || true
    wait "${PROM_PID}" 2>/dev/null || true
  fi
  if [ -n "${WORK}" ]; then
    if [ "$rc" -ne 0 ]; then
      for f in regserved.err prometheus.log; do
        [ -f "${WORK}/$f" ] && { echo "--- tail of $f:"; tail -30 "${WORK}/$f"; } >&2
      done
    fi
    rm -rf "${WORK}"
  fi
  exit "$rc"
}

main() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --regserved) REGSERVED="$2"; shift 2 ;;
      --regctl) REGCTL="$2"; shift 2 ;;
      --version) VERSION="$2"; shift 2 ;;
      *) die "unknown argument '$1' (usage: --regserved BIN --regctl BIN --version V)" ;;
    esac
  done
  if [ -z "${REGSERVED}" ] || [ -z "${REGCTL}" ] || [ -z "${VERSION}" ]; then
    die "usage: deploy_test.sh --regserved BIN --regctl BIN --version V"
  fi
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/regserve-deploy-test.XXXXXX")"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  require_tools
  static_checks
  start_daemon
  start_prometheus "${METRICS_ADDR}"
  run_jobs
  check_counts
  check_expressions
  check_metrics_token_reload
  log "PASS"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi

#!/usr/bin/env python3
"""Queries a live Prometheus for tests/deploy/deploy_test.sh.

Subcommands (all exit 0 on success, 1 with a message on failure):

  ready URL TIMEOUT
      Waits until Prometheus answers /-/ready.
  config URL JOB
      Checks /api/v1/status/config holds a scrape job named JOB.
  expect URL TIMEOUT EXPECTATIONS.json
      Polls until every expectation holds. The file is a JSON list of
      [promql, op, value] with op one of == >= > <= <; each query must return
      exactly one sample (a scalar or a one-series vector).
  expressions URL DASHBOARD.json ALERTS.yml
      Evaluates every PromQL expression of the Grafana dashboard (panels,
      templating) and of the alerting rules: each must parse and return at
      least one series. Comparisons in alert expressions are evaluated with
      the `bool` modifier, so that "up == 0" returns a series whether or not
      it would fire. Expressions over VRAM series may return nothing when
      the daemon reports no GPU; this is printed. Also checks that every
      rule Prometheus loaded has been evaluated without error.

Only the standard library and PyYAML (a yamllint dependency).
"""
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

# Grafana's variables, replaced by values that make sense for a test whose
# Prometheus scrapes every second.
GRAFANA_VARS = {
    "__rate_interval": "30s",
    "__interval": "5s",
    "__range": "5m",
    "instance": ".*",
}


def fail(msg):
    print(f"prom_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def get(url, path, params=None, timeout=10):
    full = url.rstrip("/") + path
    if params:
        full += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(full, timeout=timeout) as r:
        return r.status, r.read().decode()


def query(url, expr):
    """Returns (ok, result or error message)."""
    try:
        _, body = get(url, "/api/v1/query", {"query": expr})
    except urllib.error.HTTPError as e:  # 400 for parse errors
        try:
            return False, json.loads(e.read().decode()).get("error", str(e))
        except ValueError:
            return False, str(e)
    except (urllib.error.URLError, OSError) as e:
        return False, f"cannot reach Prometheus: {e}"
    data = json.loads(body)
    if data.get("status") != "success":
        return False, data.get("error", body)
    return True, data["data"]


def single_value(data):
    """The one sample of a query result, or None."""
    if data["resultType"] == "scalar":
        return float(data["result"][1])
    if data["resultType"] == "vector" and len(data["result"]) == 1:
        return float(data["result"][0]["value"][1])
    return None


def cmd_ready(url, timeout):
    deadline = time.time() + float(timeout)
    last = ""
    while time.time() < deadline:
        try:
            status, _ = get(url, "/-/ready", timeout=2)
            if status == 200:
                print(f"prom_check: Prometheus ready at {url}")
                return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    fail(f"Prometheus at {url} not ready after {timeout}s ({last})")


def cmd_config(url, job):
    _, body = get(url, "/api/v1/status/config")
    data = json.loads(body)
    config = yaml.safe_load(data["data"]["yaml"])
    jobs = [s["job_name"] for s in config.get("scrape_configs", [])]
    if job not in jobs:
        fail(f"scrape job {job!r} not in the running config (jobs: {jobs})")
    print(f"prom_check: running config scrapes job {job!r}")


OPS = {
    "==": lambda a, b: abs(a - b) <= 1e-9 * max(1.0, abs(b)),
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


def cmd_expect(url, timeout, path):
    with open(path) as f:
        expectations = json.load(f)
    deadline = time.time() + float(timeout)
    while True:
        failures = []
        for expr, op, want in expectations:
            ok, data = query(url, expr)
            if not ok:
                failures.append(f"{expr}: query error: {data}")
                continue
            got = single_value(data)
            if got is None:
                failures.append(f"{expr}: expected one sample, got "
                                f"{json.dumps(data['result'])[:300]}")
            elif not OPS[op](got, float(want)):
                failures.append(f"{expr}: got {got}, want {op} {want}")
        if not failures:
            for expr, op, want in expectations:
                print(f"prom_check: ok: {expr} {op} {want}")
            return
        if time.time() >= deadline:
            fail("expectations not met after %ss:\n  %s" %
                 (timeout, "\n  ".join(failures)))
        time.sleep(1)


def substitute_grafana(expr):
    def repl(m):
        name = m.group(1) or m.group(2)
        if name not in GRAFANA_VARS:
            fail(f"unknown Grafana variable ${name} in: {expr}")
        return GRAFANA_VARS[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def dashboard_exprs(path):
    with open(path) as f:
        dash = json.load(f)
    out = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p.get('title')!r} {t.get('refId')}",
                            substitute_grafana(t["expr"])))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        # label_values(METRIC, LABEL): Grafana asks Prometheus for METRIC's
        # series; evaluate METRIC.
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q or "")
        if m:
            q = m.group(1)
        out.append((f"variable ${v.get('name')}", substitute_grafana(q)))
    return out


def with_bool(expr):
    """Adds `bool` to comparison operators outside label matchers/strings."""
    out, i, depth = [], 0, 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            j = expr.index(c, i + 1)
            out.append(expr[i:j + 1])
            i = j + 1
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if depth == 0:
            m = re.match(r"(==|!=|>=|<=|>|<)(\s*bool\b)?", expr[i:])
            if m:
                out.append(m.group(1) + (m.group(2) or " bool"))
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def alert_exprs(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    out = []
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            out.append((f"rule {name}", r["expr"]))
    return out


def cmd_expressions(url, dashboard, alerts, timeout=30):
    # Rates need two scrapes in their window and rules one evaluation: retry
    # for a while before reporting what still fails.
    deadline = time.time() + timeout
    while True:
        failures = check_expressions_once(url, dashboard, alerts,
                                          quiet=time.time() < deadline)
        if not failures:
            return
        if time.time() >= deadline:
            fail("\n  " + "\n  ".join(failures))
        time.sleep(1)


def check_expressions_once(url, dashboard, alerts, quiet):
    """Returns the list of failures; prints a summary unless `quiet` and
    something failed."""
    notes = []
    ok, data = query(url, "regserve_vram_budget_bytes")
    has_gpu = ok and len(data["result"]) > 0
    exprs = dashboard_exprs(dashboard) + [
        (where, with_bool(e)) for where, e in alert_exprs(alerts)]
    failures, passed, gpu_empty = [], 0, 0
    for where, expr in exprs:
        ok, data = query(url, expr)
        if not ok:
            failures.append(f"{where}: does not evaluate: {data}\n    {expr}")
            continue
        n = len(data["result"]) if data["resultType"] in ("vector", "matrix") else 1
        if n == 0:
            if "regserve_vram_" in expr and not has_gpu:
                gpu_empty += 1
                notes.append(f"prom_check: note: {where}: no series (no GPU here)")
                continue
            failures.append(f"{where}: returns no series\n    {expr}")
            continue
        passed += 1
    summary = (f"prom_check: {passed} expressions returned series, "
               f"{gpu_empty} VRAM expressions empty without a GPU, "
               f"{len(failures)} failed (of {len(exprs)})")
    # Rules loaded by this Prometheus: evaluated, no errors.
    _, body = get(url, "/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    want = {name.split(" ", 1)[1] for name, _ in alert_exprs(alerts)}
    names = {r["name"] for r in loaded}
    if want - names:
        failures.append(f"rules not loaded by Prometheus: {sorted(want - names)}")
    for r in loaded:
        if r.get("health") != "ok":
            failures.append(f"rule {r['name']}: health {r.get('health')!r} "
                            f"{r.get('lastError', '')}")
    if failures and quiet:
        return failures
    for n in notes:
        print(n)
    print(summary)
    if not failures:
        print(f"prom_check: {len(loaded)} loaded rules evaluated with health ok")
    return failures


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "ready" and len(args) == 2:
        cmd_ready(*args)
    elif cmd == "config" and len(args) == 2:
        cmd_config(*args)
    elif cmd == "expect" and len(args) == 3:
        cmd_expect(*args)
    elif cmd == "expressions" and len(args) == 3:
        cmd_expressions(*args)
    else:
        fail(f"bad arguments: {argv[1:]}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)

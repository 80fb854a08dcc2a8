#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests (kubectl kustomize DIR | k8s_check.py DIR).

Offline structure checks where no cluster or schema bundle is at hand: the
apiVersion of each kind, names and namespaces, selectors that match the
pods they select, ports, volumes and claims that exist, probes and memory
limits on every container, autoscaler and disruption-budget targets, and
for a fleet overlay the flags and the ReadWriteMany volume fleet mode
needs. Exits 1 with one line per problem.
"""
import sys

import yaml

API = {
    "Namespace": "v1", "Service": "v1", "PersistentVolumeClaim": "v1",
    "ConfigMap": "v1", "Secret": "v1", "StatefulSet": "apps/v1",
    "Deployment": "apps/v1", "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
}
WORKLOADS = ("StatefulSet", "Deployment")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_workload(obj, claims, problems):
    name = obj["metadata"]["name"]
    spec = obj["spec"]
    pod = spec["template"]
    if not matches(spec["selector"]["matchLabels"], pod["metadata"]["labels"]):
        problems.append(f"{name}: selector does not match its pod labels")
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    for v in volumes.values():
        claim = v.get("persistentVolumeClaim", {}).get("claimName")
        if claim and claim not in claims:
            problems.append(f"{name}: volume {v['name']} claims missing PVC {claim}")
    for c in pod["spec"]["containers"]:
        where = f"{name}/{c['name']}"
        if not c.get("image"):
            problems.append(f"{where}: no image")
        if "memory" not in c.get("resources", {}).get("limits", {}):
            problems.append(f"{where}: no memory limit")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                problems.append(f"{where}: no {probe}")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes and m["name"] not in templates:
                problems.append(f"{where}: mounts undeclared volume {m['name']}")


def check(docs, fleet):
    problems = []
    by_kind = {}
    for d in docs:
        kind, meta = d.get("kind"), d.get("metadata", {})
        if API.get(kind) and d.get("apiVersion") != API[kind]:
            problems.append(f"{kind} {meta.get('name')}: apiVersion {d.get('apiVersion')}, want {API[kind]}")
        if not meta.get("name"):
            problems.append(f"{kind}: no metadata.name")
        if kind != "Namespace" and not meta.get("namespace"):
            problems.append(f"{kind} {meta.get('name')}: no namespace")
        by_kind.setdefault(kind, []).append(d)
    claims = {c["metadata"]["name"] for c in by_kind.get("PersistentVolumeClaim", [])}
    workloads = [w for k in WORKLOADS for w in by_kind.get(k, [])]
    for w in workloads:
        check_workload(w, claims, problems)
    pods = [w["spec"]["template"] for w in workloads]
    for s in by_kind.get("Service", []):
        sel = s["spec"].get("selector", {})
        chosen = [p for p in pods if matches(sel, p["metadata"]["labels"])]
        if not chosen:
            problems.append(f"Service {s['metadata']['name']}: selects no pods")
        names = {port.get("name") for p in chosen for c in p["spec"]["containers"]
                 for port in c.get("ports", [])}
        for port in s["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in names:
                problems.append(f"Service {s['metadata']['name']}: no container port {target}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not any(matches(pdb["spec"]["selector"]["matchLabels"], p["metadata"]["labels"]) for p in pods):
            problems.append(f"PDB {pdb['metadata']['name']}: selects no pods")
    names = {(w["kind"], w["metadata"]["name"]) for w in workloads}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) not in names:
            problems.append(f"HPA {hpa['metadata']['name']}: no target {ref['kind']}/{ref['name']}")
    if fleet:
        args = [a for w in workloads for c in w["spec"]["template"]["spec"]["containers"]
                for a in c.get("args", [])]
        for flag in ("--fleet_db=", "--fleet_replica=", "--data_dir="):
            if not any(a.startswith(flag) for a in args):
                problems.append(f"fleet: no replica passes {flag}")
        rwx = [c for c in by_kind.get("PersistentVolumeClaim", [])
               if "ReadWriteMany" in c["spec"]["accessModes"]]
        if not rwx:
            problems.append("fleet: no ReadWriteMany volume for the shared data_dir")
    return problems, sum(len(v) for v in by_kind.values())


def main():
    where = sys.argv[1] if len(sys.argv) > 1 else "stdin"
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    problems, n = check(docs, fleet=where.rstrip("/").endswith("fleet"))
    for p in problems:
        print(f"k8s_check {where}: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"k8s_check {where}: {n} objects checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())

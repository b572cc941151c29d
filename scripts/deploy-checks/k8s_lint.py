"""Checks on rendered hexcast manifests that a schema cannot express: the operational
promises of k8s/ (non-root, read-only, no capabilities, probes on the health port, limits,
a grace period longer than the transaction timeout, a stable instance id for push, no
secret values, selectors that select something).

usage: k8s_lint.py RENDERED.yaml...     exit 1 and one line per problem when any
"""

import sys

import yaml

HEALTH_PORT = 8081
METRICS_PORT = 9100
# kafka.transaction_timeout_ms (10 s) plus room to leave the group and flush.
MIN_GRACE_SECONDS = 15
STAGES = {"ingest", "dedup", "policy", "spatial"}


def problems_in(path):
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    out = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)

    def where(d):
        return f"{path}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"

    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    pod_labels = []
    targets_seen = set()
    for w in workloads:
        spec = w.get("spec", {})
        tpl = spec.get("template", {})
        pod = tpl.get("spec", {})
        labels = tpl.get("metadata", {}).get("labels", {})
        pod_labels.append((w.get("kind"), w["metadata"]["name"], labels))
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            out.append(f"{where(w)}: pod securityContext.runAsNonRoot must be true")
        if pod.get("automountServiceAccountToken") is not False:
            out.append(f"{where(w)}: automountServiceAccountToken must be false")
        grace = pod.get("terminationGracePeriodSeconds")
        if not isinstance(grace, int) or grace < MIN_GRACE_SECONDS:
            out.append(f"{where(w)}: terminationGracePeriodSeconds must be >= {MIN_GRACE_SECONDS} "
                       f"(batch commit within the 10 s transaction timeout), got {grace}")
        if not pod.get("topologySpreadConstraints"):
            out.append(f"{where(w)}: topologySpreadConstraints missing")
        for c in pod.get("containers", []):
            cw = f"{where(w)} container {c.get('name')}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{cw}: securityContext.readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{cw}: securityContext.allowPrivilegeEscalation must be false")
            if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
                out.append(f"{cw}: securityContext.capabilities.drop must contain ALL")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        out.append(f"{cw}: resources.{kind}.{r} missing")
            for probe in ("readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if not p or p.get("grpc", {}).get("port") != HEALTH_PORT:
                    out.append(f"{cw}: {probe} must be a grpc probe on port {HEALTH_PORT}")
            ports = {p.get("containerPort") for p in c.get("ports", [])}
            if METRICS_PORT not in ports or HEALTH_PORT not in ports:
                out.append(f"{cw}: containerPorts must include {METRICS_PORT} (metrics) and {HEALTH_PORT} (health)")
            args = c.get("args") or []
            target = args[args.index("--target") + 1] if "--target" in args[:-1] else None
            if target is None:
                out.append(f"{cw}: args must choose a --target")
            targets_seen.add(target)
            env = {e.get("name"): e for e in c.get("env", [])}
            iid = env.get("HEXCAST__KAFKA__INSTANCE_ID", {})
            if iid.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
                out.append(f"{cw}: HEXCAST__KAFKA__INSTANCE_ID must come from metadata.name (downward API)")
            if target == "push":
                if w.get("kind") != "StatefulSet":
                    out.append(f"{where(w)}: push must be a StatefulSet (stable pod name = instance id)")
                if 50051 not in ports:
                    out.append(f"{cw}: push must expose containerPort 50051")
            if target in STAGES and w.get("kind") != "Deployment":
                out.append(f"{where(w)}: stage {target} must be a Deployment")
    missing = (STAGES | {"push"}) - targets_seen
    if workloads and missing:
        out.append(f"{path}: no workload runs target(s) {sorted(missing)}")

    def selects(selector):
        return [n for _, n, labels in pod_labels
                if selector and all(labels.get(k) == v for k, v in selector.items())]

    for s in by_kind.get("Service", []):
        if not selects(s.get("spec", {}).get("selector")):
            out.append(f"{where(s)}: selector matches no pod template")
    for p in by_kind.get("PodDisruptionBudget", []):
        if not selects(p.get("spec", {}).get("selector", {}).get("matchLabels")):
            out.append(f"{where(p)}: selector matches no pod template")
    names = {(k, n) for k, n, _ in pod_labels}
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h.get("spec", {}).get("scaleTargetRef", {})
        if (ref.get("kind"), ref.get("name")) not in names:
            out.append(f"{where(h)}: scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not rendered")
        if h["spec"].get("minReplicas", 1) > h["spec"].get("maxReplicas", 0):
            out.append(f"{where(h)}: minReplicas > maxReplicas")
    for s in by_kind.get("Secret", []):
        if s.get("data") or s.get("stringData"):
            out.append(f"{where(s)}: secret values must not be committed; reference the Secret by name")
    return out


def main():
    problems = [p for path in sys.argv[1:] for p in problems_in(path)]
    for p in problems:
        print(f"k8s-lint: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

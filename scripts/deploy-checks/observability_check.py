"""Checks the Grafana dashboards and provisioning, and the metric names used by the
dashboards and the Prometheus rules, then writes every dashboard query as a recording rule
so that promtool can parse the PromQL (Grafana variables replaced by plain values).

usage: observability_check.py DEPLOY_DIR OUT_RULES_FILE     exit 1 on any problem
"""

import json
import pathlib
import re
import sys

import yaml

# The metric names hexcast exports (README "Metrics", services/runtime/src/telemetry.rs),
# plus the ones later issues add (marked). A name not here is a typo or a new metric that
# must be added here on purpose. This offline list catches typos early; that every name the
# rules and dashboards query really is on /metrics is asserted against a running pipeline
# by tests/tests/metrics.rs.
KNOWN_METRICS = {
    "hexcast_runner_records_received_total",
    "hexcast_runner_records_emitted_total",
    "hexcast_runner_records_filtered_total",
    "hexcast_runner_records_rejected_total",
    "hexcast_runner_batch_seconds",
    "hexcast_runner_batches_committed_total",
    "hexcast_runner_batches_aborted_total",
    "hexcast_runner_consumer_lag_records",
    "hexcast_push_connected_backends",
    # later issues:
    "hexcast_policy_decisions_total",
    "hexcast_push_match_seconds",
    "hexcast_push_delivery_seconds",
    "hexcast_runner_stalled",
    "hexcast_runner_hanging_commits_closed_total",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_RE = re.compile(r"\b(hexcast_[a-z0-9_]+)")
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
}


def unknown_metrics(expr):
    bad = []
    for name in METRIC_RE.findall(expr):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if base.endswith(suffix) and base[: -len(suffix)] in KNOWN_METRICS:
                base = base[: -len(suffix)]
        if base not in KNOWN_METRICS:
            bad.append(name)
    return bad


def substitute(expr):
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    # Remaining template variables ($stage, ${stage}) stand for label values in matchers.
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def main():
    deploy = pathlib.Path(sys.argv[1])
    out_rules = pathlib.Path(sys.argv[2])
    problems = []
    datasource_uids = set()
    for f in sorted((deploy / "grafana" / "provisioning").rglob("*.y*ml")):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            problems.append(f"{f}: {e}")
            continue
        if not isinstance(doc, dict) or doc.get("apiVersion") != 1:
            problems.append(f"{f}: provisioning file needs apiVersion: 1")
            continue
        for ds in doc.get("datasources", []):
            datasource_uids.add(ds.get("uid"))
    rules = []
    dashboards = sorted((deploy / "grafana" / "dashboards").glob("*.json"))
    if not dashboards:
        problems.append(f"{deploy}/grafana/dashboards: no dashboard")
    for f in dashboards:
        try:
            dash = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            problems.append(f"{f}: invalid JSON: {e}")
            continue
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in dash:
                problems.append(f"{f}: missing {key}")
        variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
        ds_var = variables.get("datasource", {})
        if ds_var and ds_var.get("current", {}).get("value") not in datasource_uids:
            problems.append(f"{f}: datasource variable default {ds_var.get('current')} is not a provisioned uid {sorted(datasource_uids)}")
        ids = set()
        for p in all_panels(dash.get("panels", [])):
            where = f"{f}: panel {p.get('id')} '{p.get('title')}'"
            if p.get("id") in ids:
                problems.append(f"{where}: duplicate panel id")
            ids.add(p.get("id"))
            if p.get("type") == "row":
                continue
            if not p.get("targets"):
                problems.append(f"{where}: no query")
            for t in p.get("targets", []):
                expr = t.get("expr", "")
                for name in unknown_metrics(expr):
                    problems.append(f"{where}: unknown metric {name}")
                uid = (t.get("datasource") or p.get("datasource") or {}).get("uid")
                if uid not in datasource_uids and not (uid or "").startswith("$"):
                    problems.append(f"{where}: datasource uid {uid} is not provisioned")
                rules.append({"record": f"dashboard:panel_{p.get('id')}_{t.get('refId', 'A').lower()}",
                              "expr": substitute(expr)})
    for f in sorted((deploy / "prometheus" / "rules").glob("*.yml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                for name in unknown_metrics(r.get("expr", "")):
                    problems.append(f"{f}: rule {r.get('alert') or r.get('record')}: unknown metric {name}")
    out_rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}), encoding="utf-8")
    for p in problems:
        print(f"observability: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Pulls PromQL out of the places it hides and prints it as a Prometheus rule file, so that
`promtool check rules` parses every expression (used by scripts/check-charts.sh).

  extract-promql.py dashboard FILE.json          every target and annotation `expr` of a Grafana dashboard
  extract-promql.py rollouts FILE.yaml...        spec.analysis.queries of EmbeddingRollout objects
  extract-promql.py interfaces docs/interfaces.md  the default query templates
  extract-promql.py prometheusrule FILE.yaml     the spec of the PrometheusRule documents in a manifest

Grafana variables and the operator's `{{placeholders}}` are replaced by the values they take at run
time; an unknown one is an error, so a new variable cannot slip through unchecked.
"""
import json
import re
import sys

import yaml

# Grafana: built-in intervals and the dashboard's own variables (regex-matched `service` takes `.+`).
GRAFANA_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h",
                "service": ".+", "candidate": "candle", "baseline": "mlx"}
# The operator's templates (docs/interfaces.md).
ROLLOUT_VARS = {"service": "candle", "window": "5m", "quantile": "0.95"}


class Unknown(Exception):
    pass


def grafana(expr):
    def sub(m):
        name = m.group(1) or m.group(2)
        if name not in GRAFANA_VARS:
            raise Unknown(f"unknown Grafana variable ${name} in: {expr}")
        return GRAFANA_VARS[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def rollout(expr):
    def sub(m):
        if m.group(1) not in ROLLOUT_VARS:
            raise Unknown(f"unknown placeholder {{{{{m.group(1)}}}}} in: {expr}")
        return ROLLOUT_VARS[m.group(1)]
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", sub, expr)


def rules(group, exprs):
    return {"groups": [{"name": group, "rules": [
        {"record": f"check:{group}:{re.sub(r'[^a-zA-Z0-9_]', '_', label)}", "expr": expr}
        for label, expr in exprs]}]}


def from_dashboard(path):
    d = json.load(open(path))
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel_{p['id']}_{t.get('refId', 'A')}", grafana(t["expr"])))
            walk(p.get("panels", []))  # collapsed rows nest their panels
    walk(d.get("panels", []))
    for i, a in enumerate(d.get("annotations", {}).get("list", [])):
        if a.get("expr"):
            out.append((f"annotation_{i}", grafana(a["expr"])))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        # label_values(metric, label) is Grafana syntax, not PromQL: check the metric selector.
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
        if v.get("type") == "query" and m:
            out.append((f"variable_{v['name']}", grafana(m.group(1))))
    return rules("dashboard", out)


def from_rollouts(paths):
    out = []
    for path in paths:
        for doc in yaml.safe_load_all(open(path)):
            if not doc or doc.get("kind") != "EmbeddingRollout":
                continue
            queries = doc.get("spec", {}).get("analysis", {}).get("queries", {}) or {}
            for key, expr in queries.items():
                out.append((f"{doc['metadata']['name']}_{key}", rollout(expr)))
    return rules("rollouts", out)


def from_interfaces(path):
    out = []
    for line in open(path):
        m = re.match(r"^- (p95|errorRate|requests|breaker|latencyBuckets|errors): `(.+)`", line.strip())
        if m:
            out.append((f"default_{m.group(1)}", rollout(m.group(2))))
    if len(out) != 6:
        raise Unknown(f"expected the 6 default queries in {path}, found {len(out)}")
    return rules("defaults", out)


def from_prometheusrule(path):
    groups = []
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "PrometheusRule":
            groups += doc["spec"]["groups"]
    if not groups:
        raise Unknown(f"no PrometheusRule in {path}")
    return {"groups": groups}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    mode, args = sys.argv[1], sys.argv[2:]
    try:
        if mode == "dashboard":
            doc = from_dashboard(args[0])
        elif mode == "rollouts":
            doc = from_rollouts(args)
        elif mode == "interfaces":
            doc = from_interfaces(args[0])
        elif mode == "prometheusrule":
            doc = from_prometheusrule(args[0])
        else:
            sys.exit(__doc__)
    except (Unknown, ValueError, KeyError) as e:
        sys.exit(f"extract-promql: {e}")
    n = sum(len(g["rules"]) for g in doc["groups"])
    print(f"extract-promql: {n} expressions from {mode}", file=sys.stderr)
    yaml.safe_dump(doc, sys.stdout, sort_keys=False, width=1000)


if __name__ == "__main__":
    main()

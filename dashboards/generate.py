#!/usr/bin/env python3
"""Prints the Grafana dashboard "Candle vs MLX" as JSON.

Edit the panels here, then
  python3 dashboards/generate.py > charts/embedding-rollout-operator/dashboards/candle-vs-mlx.json
and commit both; scripts/check-charts.sh fails when the JSON and this generator disagree.
"""
import json

DS = {"type": "prometheus", "uid": "${datasource}"}
SVC = 'service=~"$service"'
panels = []
pid = [0]

def panel(kind, title, targets, x, y, w, h, unit=None, desc="", **extra):
    pid[0] += 1
    p = {
        "id": pid[0], "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [dict(datasource=DS, refId=chr(65 + i), **t) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {},
    }
    if unit:
        p["fieldConfig"]["defaults"]["unit"] = unit
    for k, v in extra.items():
        if k == "defaults":
            p["fieldConfig"]["defaults"].update(v)
        else:
            p[k] = v
    panels.append(p)
    return p

def row(title, y):
    pid[0] += 1
    panels.append({"id": pid[0], "type": "row", "title": title, "collapsed": False,
                   "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})

def thresholds(*steps):
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}

ts_opts = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
           "tooltip": {"mode": "multi", "sort": "desc"}}

def q(expr, legend, instant=False, fmt="time_series"):
    t = {"expr": expr, "legendFormat": legend, "range": not instant, "instant": instant, "format": fmt}
    return t

# ---- rollout state ----
row("Rollout (operator)", 0)
panel("table", "Rollouts: current phase and canary weight",
      [q('max by (namespace, rollout, phase) (embedding_rollout_phase == 1)', "", True, "table"),
       q('max by (namespace, rollout) (embedding_rollout_canary_weight)', "", True, "table")],
      0, 1, 12, 7,
      desc="One row per EmbeddingRollout: the phase the operator reports (embedding_rollout_phase == 1) and the share of traffic on the candidate.",
      transformations=[{"id": "merge", "options": {}},
                       {"id": "organize", "options": {
                           "excludeByName": {"Time": True, "Value #A": True},
                           "renameByName": {"Value #B": "canary weight %"}}}],
      options={"showHeader": True, "cellHeight": "sm"})
panel("timeseries", "Canary weight",
      [q('max by (namespace, rollout) (embedding_rollout_canary_weight)', "{{namespace}}/{{rollout}}")],
      12, 1, 12, 7, unit="percent",
      desc="Percent of traffic the nginx canary Ingress sends to the candidate (100 after promotion, 0 after rollback).",
      options=ts_opts, defaults={"min": 0, "max": 100, "custom": {"lineInterpolation": "stepAfter", "fillOpacity": 10}})
panel("state-timeline", "Rollout phase",
      [q('max by (namespace, rollout, phase) (embedding_rollout_phase == 1)', "{{namespace}}/{{rollout}} {{phase}}")],
      0, 8, 12, 7,
      desc="Which phase each rollout was in over time (Deploying, Progressing, Paused, Promoting, Promoted, RollingBack, RolledBack, Failed, ...).",
      options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "legend": {"showLegend": False}},
      defaults={"color": {"mode": "palette-classic"}})
panel("timeseries", "Gate analyses and rollbacks",
      [q('sum by (namespace, rollout, verdict) (increase(embedding_rollout_analysis_total[$__rate_interval]))', "{{namespace}}/{{rollout}} {{verdict}}"),
       q('sum by (namespace, rollout) (increase(embedding_rollout_rollbacks_total[$__rate_interval]))', "{{namespace}}/{{rollout}} rollback")],
      12, 8, 12, 7, unit="short",
      desc="Gate verdicts per interval (Pass / Fail / Inconclusive) and rollbacks started. A rollback also fires the EmbeddingRolloutRolledBack alert.",
      options=ts_opts, defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}})

# ---- latency ----
row("Latency: Candle vs MLX", 15)
for i, (qt, name) in enumerate([("0.95", "P95"), ("0.99", "P99")]):
    panel("timeseries", f"{name} latency per service",
          [q(f'histogram_quantile({qt}, sum by (service, le) (rate(embedding_request_duration_seconds_bucket{{{SVC}}}[$__rate_interval])))', "{{service}}")],
          12 * i, 16, 12, 8, unit="s",
          desc=f"{name} of embedding_request_duration_seconds. Gates: candidate P95 <= 35 ms and <= baseline + 5 ms; rollback above 50 ms sustained 5 min.",
          options=ts_opts,
          defaults={"thresholds": thresholds((None, "green"), (0.035, "orange"), (0.05, "red")),
                    "custom": {"thresholdsStyle": {"mode": "line+area" if name == "P95" else "off"}}})

# ---- errors and traffic ----
row("Errors and traffic", 24)
panel("timeseries", "Error rate per service",
      [q(f'sum by (service) (rate(embedding_errors_total{{{SVC}}}[$__rate_interval])) / sum by (service) (rate(embedding_requests_total{{{SVC}}}[$__rate_interval]))', "{{service}}")],
      0, 25, 12, 8, unit="percentunit",
      desc="Server-side failures (5xx and 429) over all embed requests. Gate: < 0.5 %; rollback at 1 %.",
      options=ts_opts,
      defaults={"min": 0, "thresholds": thresholds((None, "green"), (0.005, "orange"), (0.01, "red")),
                "custom": {"thresholdsStyle": {"mode": "line+area"}}})
panel("timeseries", "QPS per service",
      [q(f'sum by (service) (rate(embedding_requests_total{{{SVC}}}[$__rate_interval]))', "{{service}}")],
      12, 25, 12, 8, unit="reqps",
      desc="Embed requests per second reaching each service; the candidate's share should follow the canary weight.",
      options=ts_opts, defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 20}})
panel("timeseries", "Responses by status code",
      [q(f'sum by (service, code) (rate(embedding_requests_total{{{SVC}}}[$__rate_interval]))', "{{service}} {{code}}")],
      0, 33, 12, 8, unit="reqps", options=ts_opts,
      desc="Embed requests per second by HTTP status: 413/400 are client errors, 429 means the queue was full, 5xx are failures.")
panel("timeseries", "Candidate share of traffic vs canary weight",
      [q('100 * sum(rate(embedding_requests_total{service="$candidate"}[$__rate_interval])) / sum(rate(embedding_requests_total{service=~"$candidate|$baseline"}[$__rate_interval]))', "observed candidate share"),
       q('max(embedding_rollout_canary_weight)', "canary weight (operator)")],
      12, 33, 12, 8, unit="percent", options=ts_opts,
      desc="What nginx actually sends to the candidate, next to the weight the operator set.",
      defaults={"min": 0, "max": 100})

# ---- health ----
row("Health", 41)
panel("state-timeline", "Circuit breaker state",
      [q('max by (backend) (circuit_breaker_state{service="embedding"})', "{{backend}}")],
      0, 42, 12, 6,
      desc="circuit_breaker_state: 0 closed, 1 open, 2 half-open. The rollout gate requires closed for the whole window.",
      options={"showValue": "auto", "mergeValues": True, "legend": {"showLegend": False}},
      defaults={"mappings": [{"type": "value", "options": {
          "0": {"text": "closed", "color": "green", "index": 0},
          "1": {"text": "open", "color": "red", "index": 1},
          "2": {"text": "half-open", "color": "orange", "index": 2}}}],
          "color": {"mode": "thresholds"},
          "thresholds": thresholds((None, "green"), (1, "red"))})
panel("timeseries", "Models loaded",
      [q(f'sum by (service) (model_loaded_count{{{SVC}}})', "{{service}}")],
      12, 42, 12, 6, unit="short", options=ts_opts,
      desc="Models loaded across the service's pods (each pod should have >= 1).")
panel("timeseries", "Queue depth",
      [q(f'sum by (service) (embedding_queue_depth{{{SVC}}})', "{{service}}")],
      0, 48, 12, 7, unit="short", options=ts_opts,
      desc="Texts waiting for a batch; near --queue-capacity the server answers 429.")
panel("timeseries", "Batch size (P50 / P95)",
      [q(f'histogram_quantile(0.5, sum by (service, le) (rate(embedding_batch_size_bucket{{{SVC}}}[$__rate_interval])))', "{{service}} p50"),
       q(f'histogram_quantile(0.95, sum by (service, le) (rate(embedding_batch_size_bucket{{{SVC}}}[$__rate_interval])))', "{{service}} p95")],
      12, 48, 12, 7, unit="short", options=ts_opts,
      desc="Texts per inference batch (dynamic batching).")

dashboard = {
    "uid": "candle-vs-mlx",
    "title": "Candle vs MLX",
    "description": "Embedding rollout: candle-embedder (candidate) against the MLX baseline, with the operator's phase and canary weight.",
    "tags": ["embedding-rollout", "candle", "mlx"],
    "timezone": "utc",
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "options": []},
        {"name": "service", "label": "Service", "type": "query", "datasource": DS,
         "query": {"query": "label_values(embedding_requests_total, service)", "refId": "service"},
         "definition": "label_values(embedding_requests_total, service)",
         "multi": True, "includeAll": True, "allValue": ".+",
         "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1, "hide": 0, "options": []},
        {"name": "candidate", "label": "Candidate service label", "type": "custom", "query": "candle",
         "current": {"text": "candle", "value": "candle"}, "hide": 0, "multi": False, "includeAll": False,
         "options": [{"text": "candle", "value": "candle", "selected": True}]},
        {"name": "baseline", "label": "Baseline service label", "type": "custom", "query": "mlx",
         "current": {"text": "mlx", "value": "mlx"}, "hide": 0, "multi": False, "includeAll": False,
         "options": [{"text": "mlx", "value": "mlx", "selected": True}]},
    ]},
    "annotations": {"list": [
        {"name": "Annotations & Alerts", "builtIn": 1, "type": "dashboard", "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "datasource": {"type": "grafana", "uid": "-- Grafana --"}},
        {"name": "Rollbacks", "enable": True, "iconColor": "red", "datasource": DS,
         "expr": "sum by (namespace, rollout) (increase(embedding_rollout_rollbacks_total[2m])) > 0",
         "titleFormat": "rollback", "textFormat": "{{namespace}}/{{rollout}} rolled back", "step": "1m"},
    ]},
    "panels": panels,
}
print(json.dumps(dashboard, indent=2))

// The EmbeddingRollout dashboard: renders /api/rollouts (the list) or /api/rollouts/{ns}/{name}
// (one rollout) and polls it. Charts are drawn as SVG by the small renderer below; nothing is
// loaded from anywhere but the operator. Read-only: the page only ever sends GET requests.
"use strict";

const TOKEN_KEY = "erollout-dashboard-token";
const SVG_NS = "http://www.w3.org/2000/svg";

// A token in the URL fragment (#token=...) is kept for this tab and removed from the address bar.
(function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

// ------------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") el.textContent = v;
    else if (k === "onsubmit") el.addEventListener("submit", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
}

// ------------------------------------------------------------------------------------------------
// Formatting (times in UTC, so every viewer reads the same)

const pad = (n) => String(n).padStart(2, "0");
function utcTime(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}
function utcDateTime(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${utcTime(iso)} UTC`;
}
function age(iso, nowIso) {
  if (!iso) return "-";
  let sec = Math.max(0, Math.round((new Date(nowIso) - new Date(iso)) / 1000));
  if (sec < 120) return `${sec}s`;
  if (sec < 7200) return `${Math.round(sec / 60)}m`;
  if (sec < 172800) return `${Math.round(sec / 3600)}h`;
  return `${Math.round(sec / 86400)}d`;
}
function num(v) {
  if (v === undefined || v === null || !isFinite(v)) return "-";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 1) return String(+v.toPrecision(3));
  return String(+v.toPrecision(2));
}
const ms = (v) => (v === undefined || v === null ? "-" : `${v.toFixed(1)} ms`);
const pct = (v) => (v === undefined || v === null ? "-" : `${(v * 100).toFixed(2)} %`);
const stepOf = (index, n) => `${index + 1}/${n}`;
const badge = (cls, text) => h("span", { class: `badge ${cls}`, text });

// ------------------------------------------------------------------------------------------------
// The SVG chart renderer: time on x, one or more series, an optional threshold and CI band.
//
// spec: { name, title, sub, yMin, yMax, yFmt, series: [{label, points: [{t, v, cls, tip}], step}],
//         threshold: [{t, v}], band: [{t, lo, hi}] }

const W = 560, H = 210, M = { l: 52, r: 14, t: 10, b: 26 };

function niceTicks(lo, hi, count) {
  const span = hi - lo || 1;
  const raw = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => span / x <= count) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

function chart(spec) {
  const all = [];
  for (const se of spec.series) for (const p of se.points) if (p.v !== null && p.v !== undefined) all.push(p);
  const ts = all.map((p) => p.t)
    .concat((spec.threshold || []).map((p) => p.t))
    .concat((spec.band || []).map((p) => p.t));
  const svg = s("svg", {
    class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "data-chart": spec.name, "data-points": all.length, "aria-label": spec.title,
  });
  const fig = h("figure", { class: "chart", "data-figure": spec.name },
    h("figcaption", {}, spec.title, spec.sub ? h("span", { class: "sub", text: ` ${spec.sub}` }) : null),
    svg, legend(spec));
  if (all.length === 0) {
    svg.appendChild(s("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle", text: "no data yet" }));
    return fig;
  }
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t1 - t0 < 60000) { t0 -= 30000; t1 += 30000; }
  const vals = all.map((p) => p.v)
    .concat((spec.threshold || []).map((p) => p.v).filter((v) => v !== null && v !== undefined))
    .concat((spec.band || []).flatMap((p) => [p.lo, p.hi]).filter((v) => v !== null && v !== undefined));
  let y0 = spec.yMin !== undefined ? spec.yMin : Math.min(0, ...vals);
  let y1 = spec.yMax !== undefined ? spec.yMax : Math.max(...vals) * 1.12;
  if (y1 <= y0) y1 = y0 + 1;
  const x = (t) => M.l + ((t - t0) / (t1 - t0)) * (W - M.l - M.r);
  const y = (v) => H - M.b - ((v - y0) / (y1 - y0)) * (H - M.t - M.b);
  const fmt = spec.yFmt || num;

  for (const v of niceTicks(y0, y1, 4)) {
    svg.appendChild(s("line", { class: "grid", x1: M.l, x2: W - M.r, y1: y(v), y2: y(v) }));
    svg.appendChild(s("text", { x: M.l - 6, y: y(v) + 3, "text-anchor": "end", text: fmt(v) }));
  }
  const tTicks = 5;
  // Over more than a day the date matters more than the seconds.
  const tLabel = (t) => {
    const iso = new Date(t).toISOString();
    return t1 - t0 > 20 * 3600 * 1000 ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : utcTime(iso);
  };
  for (let i = 0; i <= tTicks; i++) {
    const t = t0 + ((t1 - t0) * i) / tTicks;
    svg.appendChild(s("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === tTicks ? "end" : "middle",
      text: tLabel(t) }));
  }
  svg.appendChild(s("line", { class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }));
  svg.appendChild(s("line", { class: "axis", x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }));

  const band = (spec.band || []).filter((p) => p.lo !== null && p.lo !== undefined && p.hi !== null && p.hi !== undefined);
  if (band.length > 1) {
    const upper = band.map((p) => `${x(p.t)},${y(p.hi)}`);
    const lower = band.slice().reverse().map((p) => `${x(p.t)},${y(p.lo)}`);
    svg.appendChild(s("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
  }
  const threshold = (spec.threshold || []).filter((p) => p.v !== null && p.v !== undefined);
  if (threshold.length) {
    const pts = threshold.length === 1 ? [{ t: t0, v: threshold[0].v }, { t: t1, v: threshold[0].v }] : threshold;
    svg.appendChild(s("path", { class: "threshold", d: stepPath(pts, x, y, t1) }));
  }
  spec.series.forEach((se, i) => {
    const pts = se.points.filter((p) => p.v !== null && p.v !== undefined);
    if (pts.length === 0) return;
    const d = se.step ? stepPath(pts, x, y, null) : pts.map((p, j) => `${j ? "L" : "M"}${x(p.t)},${y(p.v)}`).join(" ");
    svg.appendChild(s("path", { class: `line s${i}`, d, "data-series": se.label }));
    for (const p of pts) {
      svg.appendChild(s("circle", { class: p.cls || `s${i}`, cx: x(p.t), cy: y(p.v), r: 3.5 },
        s("title", { text: `${utcTime(new Date(p.t).toISOString())}  ${se.label}: ${fmt(p.v)}${p.tip ? "\n" + p.tip : ""}` })));
    }
  });
  return fig;
}

// A step line: each value holds until the next point (to `until` after the last, if given).
function stepPath(pts, x, y, until) {
  let d = `M${x(pts[0].t)},${y(pts[0].v)}`;
  for (let i = 1; i < pts.length; i++) d += ` H${x(pts[i].t)} V${y(pts[i].v)}`;
  if (until !== null && until !== undefined) d += ` H${x(until)}`;
  return d;
}

function legend(spec) {
  const items = spec.series.map((se, i) => h("span", {}, h("i", { class: `s${i}` }), se.label));
  if ((spec.threshold || []).length) items.push(h("span", {}, h("i", { class: "threshold" }), "threshold"));
  if ((spec.band || []).length) items.push(h("span", {}, h("i", { class: "band" }), "confidence bounds"));
  return h("div", { class: "legend" }, items);
}

const ts = (iso) => new Date(iso).getTime();

function weightChart(d) {
  return chart({
    name: "weight", title: "Canary weight", sub: "(% of traffic on the candidate)", yMin: 0, yMax: 100,
    yFmt: (v) => `${v} %`,
    series: [{ label: "weight", step: true, points: d.weightSeries.map((p) => ({ t: ts(p.t), v: p.weight })) }],
  });
}

function latencyChart(d) {
  return chart({
    name: "latency", title: "Window P95", sub: "(ms, each analysis)", yFmt: num,
    series: [
      { label: "candidate", points: d.latencySeries.map((p) => ({ t: ts(p.t), v: p.candidateP95Ms })) },
      { label: "baseline", points: d.latencySeries.map((p) => ({ t: ts(p.t), v: p.baselineP95Ms })) },
    ],
  });
}

function gateChart(g) {
  const last = g.points[g.points.length - 1];
  return chart({
    name: `gate-${g.gate}`, title: g.gate, sub: last ? `(last: ${last.verdict}, ${last.evidence})` : "",
    series: [{
      label: "measured",
      points: g.points.map((p) => ({
        t: ts(p.t), v: p.value, cls: `v-${p.verdict}`,
        tip: `${p.verdict} at step ${p.step + 1}, ${p.weight} %: ${p.evidence}`,
      })),
    }],
    threshold: g.points.map((p) => ({ t: ts(p.t), v: p.threshold })),
    band: g.points.map((p) => ({ t: ts(p.t), lo: p.low, hi: p.high })),
  });
}

// ------------------------------------------------------------------------------------------------
// Views

function weightCell(w) {
  return h("td", { class: "num", "data-field": "weight" },
    h("span", { class: "bar" }, h("span", { "data-w": w })), `${w} %`);
}

function renderList(data) {
  const main = document.getElementById("main");
  const title = h("h1", {}, "EmbeddingRollouts",
    h("span", { class: "sub", text: data.namespace ? `namespace ${data.namespace}` : "all namespaces" }));
  if (data.rollouts.length === 0) {
    main.replaceChildren(title, h("div", { class: "empty-state", text: "No EmbeddingRollout yet." }));
    return;
  }
  const rows = data.rollouts.map((r) => h("tr", { "data-rollout": `${r.namespace}/${r.name}` },
    h("td", { text: r.namespace }),
    h("td", {}, h("a", { href: `/rollouts/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}`, text: r.name })),
    h("td", { "data-field": "phase" }, badge(`phase-${r.phase}`, r.phase), r.paused && r.phase !== "Paused" ? " (paused)" : ""),
    h("td", { class: "num", "data-field": "step", text: r.step }),
    weightCell(r.weight),
    h("td", {}, r.verdict ? badge(`verdict-${r.verdict}`, r.verdict) : "-"),
    h("td", { text: r.candidateImage }),
    h("td", { class: "num", text: age(r.createdAt, data.generatedAt) }),
    h("td", { class: "msg", text: r.message || "" })));
  main.replaceChildren(title, h("table", { id: "rollouts" },
    h("thead", {}, h("tr", {}, ["Namespace", "Name", "Phase", "Step", "Weight", "Verdict", "Candidate", "Age", "Message"]
      .map((c) => h("th", { class: ["Step", "Weight", "Age"].includes(c) ? "num" : null, text: c })))),
    h("tbody", {}, rows)));
  sizeBars();
}

// Bar widths through the CSSOM (the page's CSP forbids style attributes in markup).
function sizeBars() {
  for (const el of document.querySelectorAll("[data-w]")) el.style.width = `${el.getAttribute("data-w")}%`;
}

function fact(k, field, ...v) {
  return h("div", { class: ["candidate", "phaseSince"].includes(field) ? "fact wide" : "fact" }, h("div", { class: "k", text: k }), h("div", { class: "v", "data-field": field }, v));
}

function table(id, headers, rows, empty) {
  if (rows.length === 0) return h("div", { class: "empty-state", id, text: empty });
  return h("table", { id },
    h("thead", {}, h("tr", {}, headers.map((c) => h("th", { text: c })))),
    h("tbody", {}, rows));
}

function renderDetail(d) {
  const main = document.getElementById("main");
  const n = d.steps;
  const last = d.history.length ? d.history[d.history.length - 1] : null;
  const parts = [
    h("p", {}, h("a", { href: "/", text: "\u2190 all rollouts" })),
    h("h1", {}, `${d.namespace}/${d.name}`, badge(`phase-${d.phase}`, d.phase)),
    h("div", { class: "facts" },
      fact("Phase", "phase", d.phase + (d.paused && d.phase !== "Paused" ? " (paused)" : "")),
      fact("Step", "step", d.step),
      fact("Weight", "weight", `${d.weight} %`),
      fact("Last verdict", "verdict", d.verdict || "-"),
      fact("Candidate P95", "candidateP95", last ? ms(last.candidateP95Ms) : "-"),
      fact("Baseline P95", "baselineP95", last ? ms(last.baselineP95Ms) : "-"),
      fact("Error rate", "errorRate", last ? pct(last.errorRate) : "-"),
      fact("Candidate", "candidate", d.candidateImage),
      fact("In phase since", "phaseSince", utcDateTime(d.phaseStartedAt))),
  ];
  if (d.message) parts.push(h("div", { class: "note", "data-field": "message", text: d.message }));
  if (d.rollback) {
    const rb = d.rollback;
    parts.push(h("div", { class: "note bad", "data-field": "rollback" },
      h("b", { text: "Rollback: " }), rb.reason,
      ` (from ${rb.fromPhase}, started ${utcDateTime(rb.startedAt)}`,
      rb.completedAt ? `, all traffic on the baseline ${utcDateTime(rb.completedAt)}` : ", in progress",
      rb.secondsSinceFirstFailure !== undefined && rb.secondsSinceFirstFailure !== null
        ? `, ${rb.secondsSinceFirstFailure.toFixed(1)} s after the first failing check` : "", ")"));
  }
  parts.push(h("div", { class: "plan", id: "plan" }, d.specSteps.map((st, i) => {
    const cls = d.stepIndex === null || d.stepIndex === undefined ? "" : i < d.stepIndex ? "done" : i === d.stepIndex ? "current" : "";
    return h("span", { class: cls || null, text: `${stepOf(i, n)}: ${st.weight} % for ${st.duration}${st.approval ? " (approval)" : ""}` });
  })));

  parts.push(h("h2", { text: "Charts" }));
  parts.push(h("div", { class: "charts", id: "charts" }, weightChart(d), latencyChart(d), d.gateSeries.map(gateChart)));

  parts.push(h("h2", { text: "Steps" }));
  parts.push(table("steps", ["Step", "Weight", "Started", "Duration", "Outcome", "Analyses (pass/fail/inconcl.)", "Requests (cand/base)", "Max P95 (cand/base)", "Max error rate", "Approved by"],
    d.stepSummaries.map((x) => h("tr", {},
      h("td", { text: stepOf(x.step, n) }), h("td", { text: `${x.weight} %` }), h("td", { text: utcDateTime(x.startedAt) }),
      h("td", { text: x.durationSeconds !== undefined && x.durationSeconds !== null ? `${x.durationSeconds} s` : "running" }),
      h("td", { text: x.outcome || "-" }),
      h("td", { text: `${x.analyses} (${x.passed}/${x.failed}/${x.inconclusive})` }),
      h("td", { text: `${x.candidateRequests ?? "-"} / ${x.baselineRequests ?? "-"}` }),
      h("td", { text: `${ms(x.maxCandidateP95Ms)} / ${ms(x.maxBaselineP95Ms)}` }),
      h("td", { text: pct(x.maxErrorRate) }), h("td", { text: x.approvedBy || "-" }))),
    "No step has started yet."));

  parts.push(h("h2", { text: "Analysis history (newest first)" }));
  parts.push(table("history", ["Time", "Step", "Weight", "Cand P95", "Base P95", "Error rate", "Breaker", "Requests", "Verdict", "Reasons"],
    d.history.slice().reverse().map((a) => h("tr", {},
      h("td", { text: utcTime(a.time) }), h("td", { text: stepOf(a.step, n) }), h("td", { text: `${a.weight} %` }),
      h("td", { class: "num", text: ms(a.candidateP95Ms) }), h("td", { class: "num", text: ms(a.baselineP95Ms) }),
      h("td", { class: "num", text: pct(a.errorRate) }), h("td", { text: a.breakerState || "-" }),
      h("td", { class: "num", text: a.stepRequests ?? "-" }),
      h("td", {}, badge(`verdict-${a.verdict}`, a.verdict)),
      h("td", { class: "msg", text: (a.reasons || []).join("; ") }))),
    "No analysis yet."));

  parts.push(h("h2", { text: "Manual commands (who did what)" }));
  parts.push(table("commands", ["Handled", "Command", "By", "Via", "Phase", "Result", "What it did"],
    d.commands.slice().reverse().map((c) => h("tr", {},
      h("td", { text: utcDateTime(c.handledAt) }), h("td", { text: c.command }), h("td", { text: c.by || "-" }),
      h("td", { text: c.manager || "-" }), h("td", { text: c.phase }), h("td", { text: c.result }),
      h("td", { class: "msg", text: c.message }))),
    "No manual command."));

  parts.push(h("h2", { text: "Recent events" }));
  if (d.eventsError) parts.push(h("div", { class: "note bad", text: d.eventsError }));
  parts.push(table("events", ["Last seen", "Type", "Reason", "Count", "Message"],
    d.events.map((e) => h("tr", {},
      h("td", { text: utcDateTime(e.time) }), h("td", { text: e.type }), h("td", { text: e.reason }),
      h("td", { class: "num", text: e.count }), h("td", { class: "msg", text: e.note }))),
    "No recent events."));

  main.replaceChildren(...parts);
}

function renderLogin(message) {
  const main = document.getElementById("main");
  const input = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "bearer token" });
  main.replaceChildren(h("form", {
    class: "login", id: "login",
    onsubmit: (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      poll();
    },
  }, h("h2", { text: "This dashboard needs a token" }),
  h("p", { text: "Paste the dashboard's bearer token (kept in this tab only), or open the page with #token=... in the URL." }),
  message ? h("p", { class: "err", text: message }) : null,
  input, h("button", { type: "submit", text: "Show rollouts" })));
}

function renderError(message) {
  document.getElementById("main").replaceChildren(h("div", { class: "empty-state err", id: "error", text: message }));
}

// ------------------------------------------------------------------------------------------------
// Polling

let timer = null;
let polls = 0;

function apiPath() {
  const m = /^\/rollouts\/([^/]+)\/([^/]+)\/?$/.exec(location.pathname);
  return m ? `/api/rollouts/${m[1]}/${m[2]}` : "/api/rollouts";
}

function setLive(ok, text) {
  const el = document.getElementById("live");
  el.className = ok ? "live ok" : "live error";
  el.textContent = text;
}

async function poll() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(TOKEN_KEY);
  let refresh = 5;
  try {
    const resp = await fetch(apiPath(), {
      method: "GET", cache: "no-store",
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    });
    if (resp.status === 401) {
      setLive(false, "token needed");
      renderLogin(token ? "The token was not accepted." : "");
      return; // no polling until a token is entered
    }
    const body = await resp.json();
    if (!resp.ok) {
      setLive(false, `error ${resp.status}`);
      renderError(body.error || `HTTP ${resp.status}`);
    } else {
      refresh = body.refreshSeconds || refresh;
      if (Array.isArray(body.rollouts)) renderList(body);
      else renderDetail(body);
      polls += 1;
      document.body.setAttribute("data-polls", polls);
      setLive(true, `live, updated ${utcTime(body.generatedAt)} UTC (${body.origin === "cache" ? "operator cache" : "API server"})`);
    }
  } catch (e) {
    setLive(false, `offline: ${e.message}`);
  }
  timer = setTimeout(poll, refresh * 1000);
}

poll();

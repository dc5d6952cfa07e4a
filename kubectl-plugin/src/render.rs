//! Tables for people. Pure functions of the objects and `now`, so they are tested without a cluster.

use chrono::{DateTime, Utc};
use embedding_rollout_operator::crd::{
    AnalysisRecord, BreakerState, EmbeddingRollout, EmbeddingRolloutAnalysis, GateResult, Phase,
    StepSummary, HISTORY_LIMIT,
};
use embedding_rollout_operator::history;

/// Longest MESSAGE in `list` (the full one is in `get`).
pub const LIST_MESSAGE_WIDTH: usize = 60;
const MISSING: &str = "-";

/// Left-aligned columns separated by three spaces, like kubectl; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// At most `max` characters, the cut marked with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    // One line: a multi-line message would break the table.
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// kubectl's age style: `45s`, `5m12s`, `42m`, `3h20m`, `11h`, `2d4h`, `12d`.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 60 {
        format!("{s}s")
    } else if m < 10 {
        format!("{m}m{}s", s % 60)
    } else if h < 1 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if d < 2 {
        format!("{h}h")
    } else if d < 8 {
        format!("{d}d{}h", h % 24)
    } else {
        format!("{d}d")
    }
}

fn age_since(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map(|t| human_age((now - t).num_seconds()))
        .unwrap_or_else(|| MISSING.into())
}

pub fn created_at(r: &EmbeddingRollout) -> Option<DateTime<Utc>> {
    let t = r.metadata.creation_timestamp.as_ref()?;
    DateTime::from_timestamp(t.0.as_second(), 0)
}

/// `2/4` for the second of four steps (the status holds a 0-based index); `-/4` before the
/// operator wrote any status.
pub fn step_of(r: &EmbeddingRollout) -> String {
    let n = r.spec.steps.len();
    match &r.status {
        Some(s) => format!("{}/{n}", s.current_step as usize + 1),
        None => format!("{MISSING}/{n}"),
    }
}

/// Step `index` (0-based, as in an analysis record) of `n`, for people.
pub fn step_index(index: u32, n: usize) -> String {
    format!("{}/{n}", index as usize + 1)
}

pub fn phase_of(r: &EmbeddingRollout) -> Option<Phase> {
    r.status.as_ref().map(|s| s.phase)
}

fn phase_text(r: &EmbeddingRollout) -> String {
    match phase_of(r) {
        Some(p) => p.to_string(),
        None => MISSING.into(),
    }
}

fn weight_text(r: &EmbeddingRollout) -> String {
    match &r.status {
        Some(s) => format!("{}%", s.current_weight),
        None => MISSING.into(),
    }
}

fn verdict_text(r: &EmbeddingRollout) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.last_analysis.as_ref())
        .map(|a| a.verdict.as_str().to_string())
        .unwrap_or_else(|| MISSING.into())
}

fn message_text(r: &EmbeddingRollout) -> &str {
    r.status
        .as_ref()
        .and_then(|s| s.message.as_deref())
        .filter(|m| !m.is_empty())
        .unwrap_or(MISSING)
}

fn name(r: &EmbeddingRollout) -> &str {
    r.metadata.name.as_deref().unwrap_or(MISSING)
}

/// The columns of `list` and of the first line of `get`.
const SUMMARY_HEADER: [&str; 8] = [
    "NAME",
    "PHASE",
    "STEP",
    "WEIGHT",
    "CANDIDATE",
    "VERDICT",
    "AGE",
    "MESSAGE",
];

/// The `list` table; with `namespaces`, a NAMESPACE column first (`-A`).
pub fn list_table(items: &[EmbeddingRollout], namespaces: bool, now: DateTime<Utc>) -> String {
    let mut header = SUMMARY_HEADER.to_vec();
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let mut row = summary_row(r, now, Some(LIST_MESSAGE_WIDTH));
            if namespaces {
                row.insert(
                    0,
                    r.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| MISSING.into()),
                );
            }
            row
        })
        .collect();
    table(&header, &rows)
}

fn summary_row(
    r: &EmbeddingRollout,
    now: DateTime<Utc>,
    message_max: Option<usize>,
) -> Vec<String> {
    let message = message_text(r);
    vec![
        name(r).to_string(),
        phase_text(r),
        step_of(r),
        weight_text(r),
        r.spec.candidate.image.clone(),
        verdict_text(r),
        age_since(created_at(r), now),
        match message_max {
            Some(max) => truncate(message, max),
            None => truncate(message, usize::MAX),
        },
    ]
}

/// Numbers as short as they can be without losing what matters: `35`, `21.4`, `0.0042`.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return MISSING.into();
    }
    let decimals = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 1.0 {
        2
    } else {
        4
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| MISSING.into())
}

fn percent(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map(|v| format!("{}%", num(v * 100.0)))
        .unwrap_or_else(|| MISSING.into())
}

/// `21.4 (18.9–24.1)` when the gate carries confidence bounds.
fn gate_value(g: &GateResult) -> String {
    match (g.value, g.low, g.high) {
        (Some(v), Some(lo), Some(hi)) => format!("{} ({}–{})", num(v), num(lo), num(hi)),
        (Some(v), _, _) => num(v),
        (None, Some(lo), Some(hi)) => format!("({}–{})", num(lo), num(hi)),
        _ => MISSING.into(),
    }
}

/// The gates of one analysis: gate, verdict, value against threshold, samples, evidence.
pub fn gates_table(a: &AnalysisRecord) -> String {
    let rows: Vec<Vec<String>> = a
        .gates
        .iter()
        .map(|g| {
            vec![
                g.gate.clone(),
                g.verdict.as_str().to_string(),
                gate_value(g),
                opt_num(g.threshold),
                g.samples
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| MISSING.into()),
                g.evidence.clone(),
            ]
        })
        .collect();
    table(
        &[
            "GATE",
            "VERDICT",
            "VALUE",
            "THRESHOLD",
            "SAMPLES",
            "EVIDENCE",
        ],
        &rows,
    )
}

/// `get NAME`: the summary row with the whole message, then the last analysis and its gates.
pub fn get_view(r: &EmbeddingRollout, now: DateTime<Utc>) -> String {
    let mut out = table(&SUMMARY_HEADER, &[summary_row(r, now, None)]);
    let n = r.spec.steps.len();
    let Some(status) = &r.status else {
        out.push_str("\nNo status yet: the operator has not reconciled this rollout.\n");
        return out;
    };
    if status.manual_pause || r.spec.paused {
        let by = match (status.manual_pause, r.spec.paused) {
            (true, true) => "the pause command and spec.paused",
            (true, false) => "the pause command",
            _ => "spec.paused",
        };
        out.push_str(&format!("\nPaused by {by}.\n"));
    }
    if let Some(rb) = &status.rollback {
        let took = rb
            .seconds
            .map(|s| format!(", took {}s", num(s)))
            .unwrap_or_default();
        out.push_str(&format!(
            "\nRollback from {}: {} (started {} ago{took})\n",
            rb.from_phase,
            rb.reason,
            age_since(Some(rb.started_at), now)
        ));
    }
    if !status.step_summaries.is_empty() {
        out.push_str("\nSteps:\n");
        out.push_str(&steps_table(&status.step_summaries, n, now));
    }
    match &status.last_analysis {
        None => out.push_str("\nNo analysis yet.\n"),
        Some(a) => {
            out.push_str(&format!(
                "\nLast analysis {} ago at step {}, weight {}%{}: {}\n",
                age_since(Some(a.time), now),
                step_index(a.step, n),
                a.weight,
                a.look.map(|l| format!(", look {l}")).unwrap_or_default(),
                a.verdict.as_str(),
            ));
            out.push_str(&format!(
                "  candidate P95 {} ms, baseline P95 {} ms, error rate {}, breaker {}, step requests {} candidate / {} baseline\n",
                opt_num(a.candidate_p95_ms),
                opt_num(a.baseline_p95_ms),
                percent(a.error_rate),
                breaker(a.breaker_state),
                a.step_requests.map(|n| n.to_string()).unwrap_or_else(|| MISSING.into()),
                a.baseline_step_requests.map(|n| n.to_string()).unwrap_or_else(|| MISSING.into()),
            ));
            if a.gates.is_empty() {
                out.push_str("  (no gate results recorded)\n");
            } else {
                out.push('\n');
                out.push_str(&gates_table(a));
            }
            if !a.reasons.is_empty() {
                out.push_str("\nReasons:\n");
                for reason in &a.reasons {
                    out.push_str(&format!("  - {reason}\n"));
                }
            }
        }
    }
    out
}

/// One row per step summary: the go/no-go meeting's numbers.
pub fn steps_table(steps: &[StepSummary], n: usize, now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|x| {
            let lasted = x
                .duration_seconds
                .map(|d| d as i64)
                .unwrap_or_else(|| (now - x.started_at).num_seconds());
            let count = |v: Option<u64>| v.map_or_else(|| MISSING.into(), |v| v.to_string());
            vec![
                step_index(x.step, n),
                format!("{}%", x.weight),
                human_age(lasted.max(0)),
                x.outcome.clone().unwrap_or_else(|| "running".into()),
                format!("{}/{}/{}", x.passed, x.failed, x.inconclusive),
                format!(
                    "{}/{}",
                    count(x.candidate_requests),
                    count(x.baseline_requests)
                ),
                format!(
                    "{}/{}",
                    opt_num(x.max_candidate_p95_ms),
                    opt_num(x.max_baseline_p95_ms)
                ),
                percent(x.max_error_rate),
                x.min_parity_cosine
                    .map_or_else(|| MISSING.into(), |c| format!("{c:.5}")),
                x.approved_by.clone().unwrap_or_else(|| MISSING.into()),
            ]
        })
        .collect();
    table(
        &[
            "STEP",
            "WEIGHT",
            "LASTED",
            "OUTCOME",
            "PASS/FAIL/UNDECIDED",
            "REQUESTS C/B",
            "MAX P95 MS C/B",
            "MAX ERRORS",
            "MIN COSINE",
            "APPROVED BY",
        ],
        &rows,
    )
}

fn breaker(b: Option<BreakerState>) -> String {
    match b {
        Some(BreakerState::Closed) => "closed".into(),
        Some(BreakerState::Open) => "open".into(),
        Some(BreakerState::HalfOpen) => "half-open".into(),
        None => MISSING.into(),
    }
}

/// `history NAME`: every analysis of the rollout, oldest first (those its
/// EmbeddingRolloutAnalysis objects `kept` hold, then any newer in the status, not appended yet;
/// without objects, the last ones in the status), a note for any the objects never got, then
/// the manual commands the operator acted on (who, as far as the API server can tell, and what
/// each did).
pub fn history_table(r: &EmbeddingRollout, kept: &[EmbeddingRolloutAnalysis]) -> String {
    let records = history::all_analyses(kept, r.metadata.uid.as_deref(), r.status.as_ref());
    let mut out = analyses_table(r, &records);
    let n = r.spec.steps.len();
    // Without objects the status shows only its last analyses, by design: nothing is missing.
    let held = !history::all_analyses(kept, r.metadata.uid.as_deref(), None).is_empty();
    let gaps = if held {
        history::gaps(&records)
    } else {
        Vec::new()
    };
    for (at, missing) in gaps {
        let step = records.iter().find(|a| a.time == at).map_or(0, |a| a.step);
        out.push_str(&format!(
            "note: {missing} analyses of step {} before {} were never kept (the operator could not \
             append them while status.history held the last {HISTORY_LIMIT})\n",
            step_index(step, n),
            at.format("%Y-%m-%dT%H:%M:%SZ")
        ));
    }
    let commands = r
        .status
        .as_ref()
        .map(|s| s.commands.as_slice())
        .unwrap_or_default();
    if !commands.is_empty() {
        let rows: Vec<Vec<String>> = commands
            .iter()
            .map(|c| {
                vec![
                    c.handled_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    c.command.clone(),
                    c.by.clone().unwrap_or_else(|| MISSING.into()),
                    c.manager.clone().unwrap_or_else(|| MISSING.into()),
                    c.phase.to_string(),
                    c.result.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        out.push_str("\nManual commands:\n");
        out.push_str(&table(
            &["TIME", "COMMAND", "BY", "VIA", "PHASE", "RESULT", "MESSAGE"],
            &rows,
        ));
    }
    out
}

/// Where `history` found the analyses it shows, for stderr.
pub fn history_source(r: &EmbeddingRollout, kept: &[EmbeddingRolloutAnalysis]) -> String {
    let uid = r.metadata.uid.as_deref();
    let records = history::all_analyses(kept, uid, r.status.as_ref());
    let objects = history::all_analyses(kept, uid, None);
    let owned = kept
        .iter()
        .filter(|o| {
            uid.is_none_or(|u| {
                o.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|x| x.uid == u)
            })
        })
        .count();
    if owned == 0 {
        return format!(
            "{}: no EmbeddingRolloutAnalysis objects; {} analyses from status.history (it holds the last {HISTORY_LIMIT})",
            name(r),
            records.len()
        );
    }
    format!(
        "{}: {} analyses, {} from {owned} EmbeddingRolloutAnalysis object{}, {} from status.history (not kept yet)",
        name(r),
        records.len(),
        objects.len(),
        if owned == 1 { "" } else { "s" },
        records.len() - objects.len()
    )
}

fn analyses_table(r: &EmbeddingRollout, history: &[AnalysisRecord]) -> String {
    let n = r.spec.steps.len();
    if history.is_empty() {
        return format!("No analyses yet for {}.\n", name(r));
    }
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|a| {
            vec![
                a.time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                step_index(a.step, n),
                format!("{}%", a.weight),
                opt_num(a.candidate_p95_ms),
                opt_num(a.baseline_p95_ms),
                percent(a.error_rate),
                breaker(a.breaker_state),
                a.verdict.as_str().to_string(),
                if a.reasons.is_empty() {
                    MISSING.into()
                } else {
                    a.reasons.join("; ")
                },
            ]
        })
        .collect();
    table(
        &[
            "TIME",
            "STEP",
            "WEIGHT",
            "CAND P95 MS",
            "BASE P95 MS",
            "ERROR RATE",
            "BREAKER",
            "VERDICT",
            "REASONS",
        ],
        &rows,
    )
}

/// One frame of `watch`: a title line, then what `get` shows.
pub fn watch_frame(r: &EmbeddingRollout, now: DateTime<Utc>) -> String {
    format!(
        "{}/{} at {} (Ctrl-C to stop)\n\n{}",
        r.metadata.namespace.as_deref().unwrap_or(MISSING),
        name(r),
        now.format("%H:%M:%S"),
        get_view(r, now)
    )
}

/// Promoted, Decommissioned, RolledBack and Failed: nothing happens without a new command.
pub fn is_terminal(p: Phase) -> bool {
    matches!(
        p,
        Phase::Promoted | Phase::Decommissioned | Phase::RolledBack | Phase::Failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2025-01-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn get_lists_every_step_with_its_numbers_and_who_approved_it() {
        let r = rollout(json!({
            "phase": "Progressing", "currentStep": 1, "currentWeight": 10,
            "stepSummaries": [
                {"step": 0, "weight": 1, "startedAt": "2024-12-30T12:00:00Z",
                 "endedAt": "2025-01-01T11:00:00Z", "durationSeconds": 169200, "outcome": "Advanced",
                 "analyses": 2820, "passed": 2790, "failed": 0, "inconclusive": 30,
                 "candidateRequests": 170000, "baselineRequests": 16830000,
                 "maxCandidateP95Ms": 14.2, "maxBaselineP95Ms": 31.5, "maxErrorRate": 0.0004,
                 "minParityCosine": 0.999981, "approvedBy": "release-manager"},
                {"step": 1, "weight": 10, "startedAt": "2025-01-01T11:00:00Z", "analyses": 0,
                 "passed": 0, "failed": 0, "inconclusive": 0}
            ]
        }));
        let v = get_view(&r, now());
        let steps = v.split("Steps:\n").nth(1).expect("a Steps table");
        let lines: Vec<&str> = steps.lines().take(3).collect();
        assert!(lines[0].starts_with("STEP"), "{v}");
        for want in [
            "1/4",
            "1%",
            "47h",
            "Advanced",
            "2790/0/30",
            "170000/16830000",
            "14.2/31.5",
            "0.04%",
            "0.99998",
            "release-manager",
        ] {
            assert!(lines[1].contains(want), "{want:?} missing: {}", lines[1]);
        }
        assert!(
            lines[2].contains("2/4") && lines[2].contains("running") && lines[2].contains("1h"),
            "{}",
            lines[2]
        );
    }

    fn rollout(status: serde_json::Value) -> EmbeddingRollout {
        let mut v = json!({
            "apiVersion": "rollout.akidb.io/v1alpha1",
            "kind": "EmbeddingRollout",
            "metadata": {"name": "embed", "namespace": "production",
                         "creationTimestamp": "2025-01-01T11:55:00Z"},
            "spec": {
                "baseline": {"deployment": "mlx", "service": "mlx"},
                "candidate": {"image": "ghcr.io/akidb/candle-embedder:1.2.0"},
                "ingress": {"name": "embed"},
                "steps": [{"weight": 1, "duration": "1h"}, {"weight": 10, "duration": "1h"},
                          {"weight": 50, "duration": "1h"}, {"weight": 100, "duration": "1h"}]
            }
        });
        if !status.is_null() {
            v["status"] = status;
        }
        serde_json::from_value(v).expect("a rollout")
    }

    fn analysis() -> serde_json::Value {
        json!({
            "time": "2025-01-01T11:59:30Z", "step": 1, "weight": 10,
            "candidateP95Ms": 21.37, "baselineP95Ms": 19.0, "errorRate": 0.0012,
            "breakerState": "Closed", "stepRequests": 640, "baselineStepRequests": 5800, "look": 3,
            "verdict": "Inconclusive",
            "reasons": ["maxErrorRate: not enough requests yet"],
            "gates": [
                {"gate": "maxP95Ms", "verdict": "Pass", "evidence": "P(>35 ms) = 1.2 %",
                 "value": 0.012, "low": 0.004, "high": 0.03, "threshold": 0.05, "samples": 640},
                {"gate": "maxErrorRate", "verdict": "Inconclusive", "evidence": "1 of 640 failed",
                 "value": 0.0016, "threshold": 0.005, "samples": 640}
            ]
        })
    }

    fn data_lines(t: &str) -> Vec<&str> {
        t.lines().skip(1).collect()
    }

    #[test]
    fn step_is_a_people_count_of_the_spec_steps() {
        let r = rollout(json!({"phase": "Progressing", "currentStep": 1, "currentWeight": 10}));
        assert_eq!(step_of(&r), "2/4");
        let last = rollout(json!({"phase": "Promoted", "currentStep": 3, "currentWeight": 100}));
        assert_eq!(step_of(&last), "4/4");
        let t = list_table(&[r], false, now());
        let row = data_lines(&t)[0];
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cells[..7],
            [
                "embed",
                "Progressing",
                "2/4",
                "10%",
                "ghcr.io/akidb/candle-embedder:1.2.0",
                "-",
                "5m0s"
            ]
        );
    }

    #[test]
    fn list_has_the_columns_in_order_and_a_namespace_with_all_namespaces() {
        let r = rollout(json!({"phase": "Paused"}));
        let t = list_table(std::slice::from_ref(&r), false, now());
        let header: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "PHASE",
                "STEP",
                "WEIGHT",
                "CANDIDATE",
                "VERDICT",
                "AGE",
                "MESSAGE"
            ]
        );
        let t = list_table(&[r], true, now());
        assert!(t.starts_with("NAMESPACE"), "{t}");
        assert!(data_lines(&t)[0].starts_with("production   embed"), "{t}");
    }

    #[test]
    fn columns_line_up() {
        let a = rollout(json!({"phase": "Progressing"}));
        let mut b = rollout(json!({"phase": "RolledBack", "currentStep": 3}));
        b.metadata.name = Some("a-much-longer-name".into());
        let t = list_table(&[a, b], false, now());
        let lines: Vec<&str> = t.lines().collect();
        let col = |l: &str| {
            l.find("PHASE")
                .or_else(|| l.find("Progressing"))
                .or_else(|| l.find("RolledBack"))
        };
        assert_eq!(col(lines[0]), col(lines[1]), "{t}");
        assert_eq!(col(lines[0]), col(lines[2]), "{t}");
        assert_eq!(col(lines[0]), Some("a-much-longer-name".len() + 3), "{t}");
    }

    #[test]
    fn a_long_message_is_cut_in_list_and_whole_in_get() {
        let long = "waiting for the baseline Deployment mlx in namespace production to have ready replicas before anything happens";
        let r = rollout(json!({"phase": "Pending", "message": long}));
        let t = list_table(std::slice::from_ref(&r), false, now());
        let row = data_lines(&t)[0];
        assert!(!row.contains(long), "{row}");
        let shown = &row[row.find("waiting").unwrap()..];
        assert_eq!(shown.chars().count(), LIST_MESSAGE_WIDTH, "{shown}");
        assert!(shown.ends_with('…'), "{shown}");
        assert!(get_view(&r, now()).contains(long));
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("two\nlines", 20), "two lines");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn no_status_shows_dashes_not_zeros() {
        let r = rollout(serde_json::Value::Null);
        assert_eq!(step_of(&r), "-/4");
        let t = list_table(std::slice::from_ref(&r), false, now());
        let cells: Vec<&str> = data_lines(&t)[0].split_whitespace().collect();
        assert_eq!(cells[1], "-", "phase: {t}");
        assert_eq!(cells[3], "-", "weight: {t}");
        assert_eq!(cells[5], "-", "verdict: {t}");
        assert_eq!(cells.last(), Some(&"-"), "message: {t}");
        assert!(get_view(&r, now()).contains("No status yet"));
        assert!(history_table(&r, &[]).contains("No analyses yet"));
    }

    #[test]
    fn missing_fields_do_not_break_the_views() {
        // A status with only a phase, and an analysis with nothing measured.
        let mut r = rollout(json!({"phase": "Progressing",
            "lastAnalysis": {"time": "2025-01-01T11:59:00Z", "step": 0, "weight": 1, "verdict": "Inconclusive"},
            "history": [{"time": "2025-01-01T11:59:00Z", "step": 0, "weight": 1, "verdict": "Inconclusive"}]}));
        r.metadata.creation_timestamp = None;
        let g = get_view(&r, now());
        assert!(
            g.contains("Last analysis 1m0s ago at step 1/4, weight 1%: Inconclusive"),
            "{g}"
        );
        assert!(g.contains("candidate P95 - ms"), "{g}");
        assert!(g.contains("no gate results recorded"), "{g}");
        let h = history_table(&r, &[]);
        let cells: Vec<&str> = data_lines(&h)[0].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "2025-01-01T11:59:00Z",
                "1/4",
                "1%",
                "-",
                "-",
                "-",
                "-",
                "Inconclusive",
                "-"
            ]
        );
        let l = list_table(&[r], false, now());
        let cells: Vec<&str> = data_lines(&l)[0].split_whitespace().collect();
        assert_eq!(cells[6], "-", "age without creationTimestamp: {l}");
    }

    #[test]
    fn get_shows_each_gate_against_its_threshold_with_evidence() {
        let r = rollout(
            json!({"phase": "Progressing", "currentStep": 1, "currentWeight": 10,
                               "lastAnalysis": analysis()}),
        );
        let g = get_view(&r, now());
        assert!(
            g.contains("Last analysis 30s ago at step 2/4, weight 10%, look 3: Inconclusive"),
            "{g}"
        );
        assert!(
            g.contains(
                "candidate P95 21.37 ms, baseline P95 19 ms, error rate 0.12%, breaker closed"
            ),
            "{g}"
        );
        let gates: Vec<&str> = g.lines().skip_while(|l| !l.starts_with("GATE")).collect();
        assert!(
            gates[0].contains("THRESHOLD") && gates[0].contains("EVIDENCE"),
            "{g}"
        );
        assert!(gates[1].starts_with("maxP95Ms"), "{g}");
        assert!(gates[1].contains("0.012 (0.004–0.03)   0.05"), "{g}");
        assert!(gates[1].ends_with("P(>35 ms) = 1.2 %"), "{g}");
        assert!(
            gates[2].contains("Inconclusive   0.0016") && gates[2].contains("0.005"),
            "{g}"
        );
        assert!(
            g.contains("  - maxErrorRate: not enough requests yet"),
            "{g}"
        );
    }

    #[test]
    fn history_has_a_row_per_analysis_with_step_of_n() {
        let mut second = analysis();
        second["step"] = json!(3);
        second["weight"] = json!(100);
        second["verdict"] = json!("Pass");
        second["reasons"] = json!([]);
        second["breakerState"] = json!("HalfOpen");
        let r = rollout(json!({"phase": "Promoted", "history": [analysis(), second]}));
        let h = history_table(&r, &[]);
        let rows = data_lines(&h);
        assert_eq!(rows.len(), 2, "{h}");
        let first: Vec<&str> = rows[0].split_whitespace().collect();
        assert_eq!(
            &first[..8],
            [
                "2025-01-01T11:59:30Z",
                "2/4",
                "10%",
                "21.37",
                "19",
                "0.12%",
                "closed",
                "Inconclusive"
            ]
        );
        assert!(
            rows[0].ends_with("maxErrorRate: not enough requests yet"),
            "{h}"
        );
        let last: Vec<&str> = rows[1].split_whitespace().collect();
        assert_eq!(&last[1..3], ["4/4", "100%"]);
        assert_eq!(last[6], "half-open");
        assert_eq!(last[8], "-", "no reasons");
        assert!(!h.contains("Manual commands"), "none recorded, none shown");
    }

    #[test]
    fn history_lists_the_manual_commands_with_who_and_what_they_did() {
        let r = rollout(json!({"phase": "RolledBack", "commands": [
            {"command": "abort", "by": "alice@example.com", "manager": "kubectl-embeddingrollout",
             "requestedAt": "2025-01-01T11:58:00Z", "handledAt": "2025-01-01T11:58:01Z",
             "phase": "Progressing", "result": "Applied",
             "message": "rolling back from Progressing: aborted by user (by alice@example.com via kubectl-embeddingrollout)"},
            {"command": "retry", "manager": "kubectl-annotate", "handledAt": "2025-01-01T11:59:00Z",
             "phase": "RollingBack", "result": "Ignored", "message": "retry ignored"}
        ]}));
        let h = history_table(&r, &[]);
        let after = h
            .split("Manual commands:")
            .nth(1)
            .expect("a commands section");
        let rows = data_lines(after.trim_start_matches('\n'));
        assert_eq!(rows.len(), 2, "{h}");
        let first: Vec<&str> = rows[0].split_whitespace().collect();
        assert_eq!(
            &first[..6],
            [
                "2025-01-01T11:58:01Z",
                "abort",
                "alice@example.com",
                "kubectl-embeddingrollout",
                "Progressing",
                "Applied"
            ]
        );
        let second: Vec<&str> = rows[1].split_whitespace().collect();
        assert_eq!(&second[1..3], ["retry", "-"], "no by: shown as missing");
        assert_eq!(second[5], "Ignored");
    }

    /// An EmbeddingRolloutAnalysis of step 2 (begun 11:00) holding analyses at these minutes
    /// past 11:00, with look = minute; `owner` is the owning rollout's uid.
    fn kept(chunk: u32, minutes: std::ops::Range<u32>, owner: &str) -> EmbeddingRolloutAnalysis {
        let t = |m: u32| format!("2025-01-01T{:02}:{:02}:00Z", 11 + m / 60, m % 60);
        let analyses: Vec<serde_json::Value> = minutes
            .clone()
            .map(|m| {
                let fail = m % 5 == 0;
                let mut a = json!({"t": t(m), "v": if fail { "Fail" } else { "Pass" }, "lk": m,
                                   "c95": 20.0 + f64::from(m) / 10.0, "b95": 18.5, "ce": 0.0012,
                                   "br": "Closed", "cs": 100 * m, "bs": 110 * m,
                                   "g": [{"id": "maxP95Ms", "v": "Pass", "x": 0.01, "th": 0.05, "s": 100 * m}]});
                if fail {
                    a["r"] = json!([format!("maxErrorRate: {m} of 1000 failed")]);
                }
                a
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRolloutAnalysis",
            "metadata": {"name": format!("embed-step2-20250101-110000-{chunk:04}"), "namespace": "production",
                         "ownerReferences": [{"apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout",
                                              "name": "embed", "uid": owner}]},
            "spec": {"rollout": "embed", "step": 1, "stepOf": "2/4", "weight": 10,
                     "stepStartedAt": "2025-01-01T11:00:00Z", "chunk": chunk, "count": analyses.len(),
                     "passed": 0, "failed": 0, "inconclusive": 0,
                     "firstTime": t(minutes.start), "lastTime": t(minutes.end - 1), "lastVerdict": "Pass",
                     "analyses": analyses}
        }))
        .expect("an EmbeddingRolloutAnalysis")
    }

    #[test]
    fn history_reads_every_kept_analysis_oldest_first_then_the_status_tail() {
        let mut status_tail = analysis();
        status_tail["time"] = json!("2025-01-01T11:59:30Z");
        status_tail["look"] = json!(35);
        let mut already_kept = analysis();
        already_kept["time"] = json!("2025-01-01T11:15:00Z");
        let mut r = rollout(
            json!({"phase": "Progressing", "currentStep": 1, "currentWeight": 10,
                                   "history": [already_kept, status_tail]}),
        );
        r.metadata.uid = Some("uid-embed".into());
        // Listed in any order; one left behind by an earlier rollout of the same name; looks
        // 21 to 29 never kept (an outage longer than status.history).
        let objects = vec![
            kept(1, 30..35, "uid-embed"),
            kept(0, 1..21, "uid-old"),
            kept(0, 1..21, "uid-embed"),
        ];
        let h = history_table(&r, &objects);
        let rows = data_lines(&h);
        let times: Vec<&str> = rows
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| c.starts_with("2025-"))
            .collect();
        assert_eq!(times.len(), 26, "20 + 5 kept, 1 newer in the status: {h}");
        assert!(times.len() > HISTORY_LIMIT);
        assert_eq!(times[0], "2025-01-01T11:01:00Z");
        assert_eq!(times[24], "2025-01-01T11:34:00Z");
        assert_eq!(times[25], "2025-01-01T11:59:30Z");
        assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first: {h}");
        let fifth: Vec<&str> = rows[4].split_whitespace().collect();
        assert_eq!(
            &fifth[..9],
            [
                "2025-01-01T11:05:00Z",
                "2/4",
                "10%",
                "20.5",
                "18.5",
                "0.12%",
                "closed",
                "Fail",
                "maxErrorRate:"
            ],
            "{h}"
        );
        assert!(rows[4].ends_with("maxErrorRate: 5 of 1000 failed"), "{h}");
        assert!(
            h.contains("note: 9 analyses of step 2/4 before 2025-01-01T11:30:00Z were never kept"),
            "{h}"
        );
        assert_eq!(
            history_source(&r, &objects),
            "embed: 26 analyses, 25 from 2 EmbeddingRolloutAnalysis objects, 1 from status.history (not kept yet)"
        );
        // Without objects: the status, as before.
        let alone = history_table(&r, &[]);
        assert_eq!(data_lines(&alone).len(), 2, "{alone}");
        assert_eq!(
            history_source(&r, &[]),
            "embed: no EmbeddingRolloutAnalysis objects; 2 analyses from status.history (it holds the last 10)"
        );
    }

    #[test]
    fn ages_and_numbers_read_like_kubectl() {
        assert_eq!(human_age(-5), "0s");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(312), "5m12s");
        assert_eq!(human_age(42 * 60), "42m");
        assert_eq!(human_age(3 * 3600 + 20 * 60), "3h20m");
        assert_eq!(human_age(11 * 3600), "11h");
        assert_eq!(human_age(2 * 86400 + 4 * 3600), "2d4h");
        assert_eq!(human_age(12 * 86400), "12d");
        assert_eq!(num(35.0), "35");
        assert_eq!(num(412.6), "413");
        assert_eq!(num(0.005), "0.005");
        assert_eq!(num(f64::NAN), "-");
    }

    #[test]
    fn terminal_phases() {
        let terminal: Vec<Phase> = Phase::ALL.into_iter().filter(|p| is_terminal(*p)).collect();
        assert_eq!(
            terminal,
            [
                Phase::Promoted,
                Phase::Decommissioned,
                Phase::RolledBack,
                Phase::Failed
            ]
        );
    }
}

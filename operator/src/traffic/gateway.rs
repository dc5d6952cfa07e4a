//! Gateway API: move traffic by the `backendRefs` weights of the user's HTTPRoute.
//!
//! The decision core speaks in the nginx provider's terms, a primary backend and an optional
//! canary weight; this module maps that pair onto the route and back, so one state machine serves
//! both providers:
//!
//! | primary   | canary  | rules that reference the baseline (or the candidate)             |
//! |-----------|---------|------------------------------------------------------------------|
//! | baseline  | none    | baseline weight 100, no candidate ref (the user's own route)     |
//! | baseline  | `w`     | baseline `100 - w`, candidate `w`                                |
//! | candidate | (none)  | candidate 100, baseline 0 (or removed), annotation [`PRIMARY_ANNOTATION`] |
//!
//! The annotation tells "promoted" apart from "the last step at 100 %", which have the same
//! weights. With `traffic.canaryHeader`, each managed rule gets a sibling rule (named
//! `canary-header-<rollout>-<i>`) with the same matches plus the header, to the candidate only,
//! while a canary exists: Gateway API gives the rule with more header matches precedence.
//!
//! Reading goes through the generated types ([`super::httproute`]); writing is a JSON patch of
//! only the `backendRefs` of managed rules, our header rules and our annotation, built on the
//! route as the API server returned it (unknown fields, e.g. of the experimental channel, kept),
//! guarded by a `test` of its resourceVersion so a concurrent edit is a conflict, not lost.

use serde_json::{json, Value};

use super::httproute::{HttpRoute, HttpRouteRules, HttpRouteRulesBackendRefs};
use crate::{
    crd::{CanaryHeader, EmbeddingRollout, GatewayApiSpec},
    decision::{Action, Backend, PrimaryBackend},
};

/// On the HTTPRoute, value = the candidate Service: the operator promoted it.
pub const PRIMARY_ANNOTATION: &str = "rollout.akidb.io/primary";
/// Gateway API allows 16 rules per route.
const MAX_RULES: usize = 16;

/// What this rollout calls its Services, and where its route lives.
#[derive(Debug, Clone, PartialEq)]
pub struct Names<'a> {
    pub rollout: &'a str,
    /// The rollout's (and the Services') namespace.
    pub namespace: &'a str,
    pub baseline: &'a str,
    pub baseline_port: i32,
    pub candidate: &'a str,
    pub candidate_port: i32,
    pub header: Option<&'a CanaryHeader>,
    pub remove_baseline_on_promotion: bool,
}

/// The names of `rollout` whose traffic provider is `g`.
pub fn names<'a>(
    rollout: &'a EmbeddingRollout,
    g: &'a GatewayApiSpec,
    candidate: &'a str,
) -> Names<'a> {
    let spec = &rollout.spec;
    Names {
        rollout: rollout.metadata.name.as_deref().unwrap_or_default(),
        namespace: rollout.metadata.namespace.as_deref().unwrap_or_default(),
        baseline: &spec.baseline.service,
        baseline_port: spec.baseline.port,
        candidate,
        candidate_port: spec.candidate.port,
        header: spec.canary_header(),
        remove_baseline_on_promotion: g.remove_baseline_on_promotion,
    }
}

/// The route as the decision core sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteView {
    pub primary: PrimaryBackend,
    pub canary_weight: Option<u8>,
    /// Why the route must not be changed now.
    pub blocked: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("HTTPRoute {route} has no rule with a backendRef to Service {service}")]
    NoBaselineRule { route: String, service: String },
    #[error(
        "HTTPRoute {route} rule {rule} also sends traffic to Service {other}: the operator splits \
         only between the baseline and the candidate (give that traffic its own rule)"
    )]
    ForeignBackend {
        route: String,
        rule: usize,
        other: String,
    },
    #[error(
        "HTTPRoute {route} would need {rules} rules for the canary header, more than Gateway \
         API's {MAX_RULES}"
    )]
    TooManyRules { route: String, rules: usize },
    #[error("HTTPRoute {route} is not accepted by {parent}: {reason}: {message}")]
    NotAccepted {
        route: String,
        parent: String,
        reason: String,
        message: String,
    },
    #[error("HTTPRoute {route} is not accepted by any Gateway yet (status.parents is empty)")]
    NoParent { route: String },
    #[error("canary weight {0} is outside 0..=100")]
    WeightOutOfRange(u8),
    #[error("HTTPRoute {0} as returned by the API server: {1}")]
    Decode(String, String),
}

/// The primary/canary pair the route encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    primary: Backend,
    canary: Option<u8>,
}

fn route_name(route: &HttpRoute) -> String {
    route.metadata.name.clone().unwrap_or_default()
}

/// Rule names are Gateway API SectionNames: lowercase DNS labels, no dots.
fn header_rule_name(rollout: &str, i: usize) -> String {
    let base: String = rollout
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    format!("canary-header-{base}-{i}")
}

fn is_header_rule(rule: &HttpRouteRules, rollout: &str) -> bool {
    let prefix = header_rule_name(rollout, 0);
    let prefix = prefix.trim_end_matches('0');
    rule.name.as_deref().is_some_and(|n| n.starts_with(prefix))
}

impl Names<'_> {
    /// Whether a backendRef points at Service `name` of the rollout's namespace.
    fn is_service(&self, r: &HttpRouteRulesBackendRefs, name: &str, route_ns: &str) -> bool {
        let core = r.group.as_deref().unwrap_or("").is_empty();
        let service = r.kind.as_deref().unwrap_or("Service") == "Service";
        let ns = r.namespace.as_deref().unwrap_or(route_ns);
        core && service && ns == self.namespace && r.name == name
    }

    /// Indices of the rules the rollout manages: those with a backendRef to the baseline or the
    /// candidate, our header rules excepted.
    fn managed(&self, route: &HttpRoute) -> Vec<usize> {
        let ns = route
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(self.namespace);
        route
            .spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, rule)| !is_header_rule(rule, self.rollout))
            .filter(|(_, rule)| {
                rule.backend_refs.iter().flatten().any(|r| {
                    self.is_service(r, self.baseline, ns) || self.is_service(r, self.candidate, ns)
                })
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// Gateway API's default weight is 1.
fn weight(r: &HttpRouteRulesBackendRefs) -> i64 {
    i64::from(r.weight.unwrap_or(1).max(0))
}

/// Read the route into the decision core's terms (`None`: it does not exist).
pub fn observe(route: Option<&HttpRoute>, names: &Names<'_>) -> RouteView {
    let Some(route) = route else {
        return RouteView {
            primary: PrimaryBackend::Missing,
            canary_weight: None,
            blocked: None,
        };
    };
    match read_state(route, names) {
        Ok(state) => RouteView {
            primary: match state.primary {
                Backend::Baseline => PrimaryBackend::Baseline,
                Backend::Candidate => PrimaryBackend::Candidate,
            },
            canary_weight: state.canary,
            blocked: acceptance(route).err().map(|e| e.to_string()),
        },
        Err(e) => RouteView {
            primary: PrimaryBackend::Other(format!("HTTPRoute {}", route_name(route))),
            canary_weight: None,
            blocked: Some(e.to_string()),
        },
    }
}

/// Whether the route's Gateways accepted it (its status conditions, as the controller wrote them).
fn acceptance(route: &HttpRoute) -> Result<(), RouteError> {
    let name = route_name(route);
    let parents = route
        .status
        .as_ref()
        .map(|s| s.parents.as_slice())
        .unwrap_or_default();
    if parents.is_empty() {
        return Err(RouteError::NoParent { route: name });
    }
    for p in parents {
        if let Some(c) = p
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted" && c.status != "True")
        {
            let parent = match &p.parent_ref.namespace {
                Some(ns) => format!("Gateway {ns}/{}", p.parent_ref.name),
                None => format!("Gateway {}", p.parent_ref.name),
            };
            return Err(RouteError::NotAccepted {
                route: name,
                parent,
                reason: c.reason.clone(),
                message: c.message.clone(),
            });
        }
    }
    Ok(())
}

fn read_state(route: &HttpRoute, names: &Names<'_>) -> Result<State, RouteError> {
    let name = route_name(route);
    let ns = route
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(names.namespace);
    let managed = names.managed(route);
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    let Some(&first) = managed.first() else {
        return Err(RouteError::NoBaselineRule {
            route: name,
            service: names.baseline.to_string(),
        });
    };
    for &i in &managed {
        if let Some(other) = rules[i].backend_refs.iter().flatten().find(|r| {
            !names.is_service(r, names.baseline, ns)
                && !names.is_service(r, names.candidate, ns)
                && weight(r) > 0
        }) {
            return Err(RouteError::ForeignBackend {
                route: name,
                rule: i,
                other: other.name.clone(),
            });
        }
    }
    let refs = rules[first].backend_refs.as_deref().unwrap_or_default();
    let sum = |svc: &str| -> Option<i64> {
        let w: Vec<i64> = refs
            .iter()
            .filter(|r| names.is_service(r, svc, ns))
            .map(weight)
            .collect();
        (!w.is_empty()).then(|| w.iter().sum())
    };
    let (b, c) = (sum(names.baseline), sum(names.candidate));
    let promoted = route
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PRIMARY_ANNOTATION))
        .is_some_and(|v| v == names.candidate);
    let state = match (b, c) {
        _ if promoted => State {
            primary: Backend::Candidate,
            canary: None,
        },
        // The user's route sends everything to the candidate by itself: that is a promotion.
        (None, Some(_)) => State {
            primary: Backend::Candidate,
            canary: None,
        },
        (_, None) => State {
            primary: Backend::Baseline,
            canary: None,
        },
        (Some(b), Some(c)) => {
            let share = if b + c == 0 {
                0
            } else {
                // Rounded to the nearest percent; the operator writes b + c = 100.
                ((c * 100 + (b + c) / 2) / (b + c)) as u8
            };
            State {
                primary: Backend::Baseline,
                canary: Some(share),
            }
        }
    };
    Ok(state)
}

fn next(state: State, action: &Action) -> Result<State, RouteError> {
    let mut s = state;
    match action {
        Action::SetCanaryWeight(w) if *w > 100 => return Err(RouteError::WeightOutOfRange(*w)),
        Action::SetCanaryWeight(w) => s.canary = Some(*w),
        Action::DeleteCanaryIngress => s.canary = None,
        Action::PointPrimaryIngressAt(b) => {
            s.primary = *b;
            if *b == Backend::Candidate {
                s.canary = None;
            }
        }
        _ => {}
    }
    Ok(s)
}

fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch that applies `action` (one of the traffic actions) to `raw`, the route as the
/// API server returned it; `None` when the route already says so.
pub fn patch_for(
    raw: &Value,
    names: &Names<'_>,
    action: &Action,
) -> Result<Option<json_patch::Patch>, RouteError> {
    let route: HttpRoute = serde_json::from_value(raw.clone()).map_err(|e| {
        RouteError::Decode(
            raw.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            e.to_string(),
        )
    })?;
    let name = route_name(&route);
    let ns = route
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(names.namespace);
    let current = read_state(&route, names)?;
    let want = next(current, action)?;
    let managed = names.managed(&route);
    let raw_rules = raw
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();

    let mut ops: Vec<Value> = vec![json!({
        "op": "test", "path": "/metadata/resourceVersion",
        "value": route.metadata.resource_version,
    })];
    let mut changed = false;
    let ref_json = |svc: &str, port: i32, weight: i64, template: Option<&Value>| -> Value {
        let mut r = template.cloned().unwrap_or_else(|| json!({}));
        r["name"] = json!(svc);
        r["port"] = json!(port);
        r["weight"] = json!(weight);
        if ns != names.namespace {
            r["namespace"] = json!(names.namespace);
        }
        r
    };
    for &i in &managed {
        let typed = route.spec.rules.as_deref().unwrap_or_default()[i]
            .backend_refs
            .clone()
            .unwrap_or_default();
        let raw_refs = raw_rules[i]
            .get("backendRefs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let is = |k: usize, svc: &str| names.is_service(&typed[k], svc, ns);
        let baseline_raw = (0..typed.len())
            .find(|&k| is(k, names.baseline))
            .map(|k| &raw_refs[k]);
        let candidate_raw = (0..typed.len())
            .find(|&k| is(k, names.candidate))
            .map(|k| &raw_refs[k]);
        // Others (weight 0 only: read_state refused the rest) stay as they are, first.
        let mut refs: Vec<Value> = (0..typed.len())
            .filter(|&k| !is(k, names.baseline) && !is(k, names.candidate))
            .map(|k| raw_refs[k].clone())
            .collect();
        let baseline = |w| ref_json(names.baseline, names.baseline_port, w, baseline_raw);
        // The candidate's ref takes the baseline's shape (kind, filters) with its own Service.
        let candidate = |w| {
            ref_json(
                names.candidate,
                names.candidate_port,
                w,
                candidate_raw.or(baseline_raw),
            )
        };
        match want {
            State {
                primary: Backend::Candidate,
                ..
            } => {
                if !names.remove_baseline_on_promotion {
                    refs.push(baseline(0));
                }
                refs.push(candidate(100));
            }
            State { canary: None, .. } => refs.push(baseline(100)),
            State {
                canary: Some(w), ..
            } => {
                refs.push(baseline(100 - i64::from(w)));
                refs.push(candidate(i64::from(w)));
            }
        }
        if !same_refs(&raw_refs, &refs) {
            changed = true;
            ops.push(json!({"op": "replace", "path": format!("/spec/rules/{i}/backendRefs"), "value": refs}));
        }
    }

    // Header rules: wanted while a canary takes traffic (header-only at weight 0 included).
    let header_wanted =
        names.header.is_some() && want.primary == Backend::Baseline && want.canary.is_some();
    let existing: Vec<usize> = route
        .spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, r)| is_header_rule(r, names.rollout))
        .map(|(i, _)| i)
        .collect();
    let wanted: Vec<Value> = match (header_wanted, names.header) {
        (true, Some(h)) => managed
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                header_rule(
                    &raw_rules[i],
                    &route.spec.rules.as_deref().unwrap_or_default()[i],
                    h,
                    names,
                    n,
                    ns,
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    let have: Vec<&Value> = existing.iter().map(|&i| &raw_rules[i]).collect();
    if have.len() != wanted.len() || have.iter().zip(&wanted).any(|(a, b)| !same_rule(a, b)) {
        changed = true;
        // Remove from the end so earlier indices stay valid, then append the wanted ones.
        for &i in existing.iter().rev() {
            ops.push(json!({"op": "remove", "path": format!("/spec/rules/{i}")}));
        }
        let total = raw_rules.len() - existing.len() + wanted.len();
        if total > MAX_RULES {
            return Err(RouteError::TooManyRules {
                route: name,
                rules: total,
            });
        }
        for r in wanted {
            ops.push(json!({"op": "add", "path": "/spec/rules/-", "value": r}));
        }
    }

    // The promotion annotation.
    let annotations = route.metadata.annotations.clone().unwrap_or_default();
    let has = annotations.get(PRIMARY_ANNOTATION);
    let path = format!(
        "/metadata/annotations/{}",
        pointer_escape(PRIMARY_ANNOTATION)
    );
    match (want.primary, has) {
        (Backend::Candidate, Some(v)) if v == names.candidate => {}
        (Backend::Candidate, _) => {
            changed = true;
            if route.metadata.annotations.is_none() {
                ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
            }
            ops.push(json!({"op": "add", "path": path, "value": names.candidate}));
        }
        (Backend::Baseline, Some(_)) => {
            changed = true;
            ops.push(json!({"op": "remove", "path": path}));
        }
        (Backend::Baseline, None) => {}
    }
    if !changed {
        return Ok(None);
    }
    let patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| RouteError::Decode(name, e.to_string()))?;
    Ok(Some(patch))
}

/// A sibling of managed rule `rule`: the same matches, each with the header added, the same
/// filters and timeouts, to the candidate only.
fn header_rule(
    raw: &Value,
    rule: &HttpRouteRules,
    h: &CanaryHeader,
    names: &Names<'_>,
    n: usize,
    ns: &str,
) -> Value {
    let mut r = raw.clone();
    let header = json!({"type": "Exact", "name": h.name, "value": h.value});
    let matches: Vec<Value> = match rule.matches.as_deref() {
        Some(m) if !m.is_empty() => raw["matches"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut m| {
                let mut headers = m
                    .get("headers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                headers.retain(|x| {
                    !x.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.eq_ignore_ascii_case(&h.name))
                });
                headers.push(header.clone());
                m["headers"] = Value::Array(headers);
                m
            })
            .collect(),
        // No matches means every request: the API server's default, PathPrefix "/".
        _ => vec![json!({"path": {"type": "PathPrefix", "value": "/"}, "headers": [header]})],
    };
    r["matches"] = Value::Array(matches);
    r["name"] = json!(header_rule_name(names.rollout, n));
    let template = rule
        .backend_refs
        .iter()
        .flatten()
        .position(|b| {
            names.is_service(b, names.baseline, ns) || names.is_service(b, names.candidate, ns)
        })
        .and_then(|k| raw["backendRefs"].get(k).cloned())
        .unwrap_or_else(|| json!({}));
    let mut cand = template;
    cand["name"] = json!(names.candidate);
    cand["port"] = json!(names.candidate_port);
    cand["weight"] = json!(1);
    if ns != names.namespace {
        cand["namespace"] = json!(names.namespace);
    }
    r["backendRefs"] = json!([cand]);
    r
}

/// Equal up to the defaults the API server fills in (weight 1, group "", kind Service).
fn same_refs(a: &[Value], b: &[Value]) -> bool {
    let norm = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.entry("weight").or_insert(json!(1));
            o.entry("group").or_insert(json!(""));
            o.entry("kind").or_insert(json!("Service"));
        }
        v
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| norm(x) == norm(y))
}

/// Equal as the Gateway API reads them (typed, reference defaults filled in): the API server
/// fills in defaults our rendering leaves out, which must not look like a change every time.
fn same_rule(a: &Value, b: &Value) -> bool {
    let typed = |v: &Value| {
        let mut v = v.clone();
        if let Some(refs) = v.get_mut("backendRefs").and_then(Value::as_array_mut) {
            for r in refs.iter_mut().filter_map(Value::as_object_mut) {
                r.entry("weight").or_insert(json!(1));
                r.entry("group").or_insert(json!(""));
                r.entry("kind").or_insert(json!("Service"));
            }
        }
        serde_json::from_value::<HttpRouteRules>(v).ok()
    };
    typed(a).is_some() && typed(a) == typed(b)
}

#[cfg(test)]
#[path = "gateway_tests.rs"]
mod tests;

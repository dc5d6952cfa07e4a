//! ingress-nginx canary-by-weight: build the `<primary>-canary` Ingress and retarget the primary.
//!
//! Pure functions over k8s-openapi types. ingress-nginx pairs a canary Ingress with the main one by
//! host and path, so the canary copies exactly the host/path/pathType of the primary's rules that
//! route to the baseline Service, with the candidate Service as backend. Rules routing elsewhere
//! are not copied: a canary for them would shift traffic of services this rollout does not own.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
        IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

pub const CANARY_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary";
pub const CANARY_WEIGHT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary-weight";
pub const CANARY_HEADER_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary-by-header";
pub const CANARY_HEADER_VALUE_ANNOTATION: &str =
    "nginx.ingress.kubernetes.io/canary-by-header-value";
/// Pre-`ingressClassName` way of choosing the controller; copied when the primary uses it.
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// A Service and port an Ingress backend can point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub name: String,
    pub port: i32,
}

impl ServiceTarget {
    fn backend(&self) -> IngressBackend {
        IngressBackend {
            service: Some(IngressServiceBackend {
                name: self.name.clone(),
                port: Some(ServiceBackendPort {
                    number: Some(self.port),
                    name: None,
                }),
            }),
            resource: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrafficError {
    #[error("Ingress {ingress} has no rule or default backend routing to Service {service}")]
    NoBaselineBackend { ingress: String, service: String },
    #[error("canary weight {0} is outside 0..=100")]
    WeightOutOfRange(i32),
    #[error("the spec names no traffic provider (or two)")]
    NoProvider,
    #[error("{0}")]
    Route(String),
}

/// Everything the canary Ingress needs besides the primary itself.
#[derive(Debug, Clone)]
pub struct CanaryParams<'a> {
    pub baseline_service: &'a str,
    pub candidate: &'a ServiceTarget,
    pub weight: i32,
    /// Requests with this header (exact value) always go to the canary, whatever the weight.
    pub header: Option<&'a crate::crd::CanaryHeader>,
    pub owner: OwnerReference,
    pub labels: BTreeMap<String, String>,
}

pub fn canary_name(primary: &str) -> String {
    format!("{primary}-canary")
}

fn routes_to(backend: &IngressBackend, service: &str) -> bool {
    backend.service.as_ref().is_some_and(|s| s.name == service)
}

/// Build the canary Ingress for `primary`.
pub fn build_canary(primary: &Ingress, p: &CanaryParams<'_>) -> Result<Ingress, TrafficError> {
    if !(0..=100).contains(&p.weight) {
        return Err(TrafficError::WeightOutOfRange(p.weight));
    }
    let primary_name = primary.metadata.name.clone().unwrap_or_default();
    let spec = primary.spec.clone().unwrap_or_default();

    let rules: Vec<IngressRule> = spec
        .rules
        .iter()
        .flatten()
        .filter_map(|rule| {
            let paths: Vec<HTTPIngressPath> = rule
                .http
                .iter()
                .flat_map(|h| h.paths.iter())
                .filter(|path| routes_to(&path.backend, p.baseline_service))
                .map(|path| HTTPIngressPath {
                    backend: p.candidate.backend(),
                    path: path.path.clone(),
                    path_type: path.path_type.clone(),
                })
                .collect();
            (!paths.is_empty()).then(|| IngressRule {
                host: rule.host.clone(),
                http: Some(HTTPIngressRuleValue { paths }),
            })
        })
        .collect();

    let default_backend = spec
        .default_backend
        .as_ref()
        .filter(|b| routes_to(b, p.baseline_service))
        .map(|_| p.candidate.backend());

    if rules.is_empty() && default_backend.is_none() {
        return Err(TrafficError::NoBaselineBackend {
            ingress: primary_name,
            service: p.baseline_service.to_string(),
        });
    }

    let tls = relevant_tls(spec.tls.as_deref().unwrap_or_default(), &rules);

    let mut annotations = BTreeMap::new();
    if let Some(class) = primary
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
    {
        annotations.insert(LEGACY_CLASS_ANNOTATION.to_string(), class.clone());
    }
    annotations.insert(CANARY_ANNOTATION.to_string(), "true".to_string());
    annotations.insert(CANARY_WEIGHT_ANNOTATION.to_string(), p.weight.to_string());
    if let Some(h) = p.header {
        annotations.insert(CANARY_HEADER_ANNOTATION.to_string(), h.name.clone());
        annotations.insert(CANARY_HEADER_VALUE_ANNOTATION.to_string(), h.value.clone());
    }

    Ok(Ingress {
        metadata: ObjectMeta {
            name: Some(canary_name(&primary_name)),
            namespace: primary.metadata.namespace.clone(),
            labels: Some(p.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![p.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: spec.ingress_class_name.clone(),
            default_backend,
            rules: (!rules.is_empty()).then_some(rules),
            tls: (!tls.is_empty()).then_some(tls),
        }),
        status: None,
    })
}

/// TLS entries of the primary that cover a copied host (or list no hosts, i.e. apply to all).
fn relevant_tls(tls: &[IngressTLS], rules: &[IngressRule]) -> Vec<IngressTLS> {
    let hosts: Vec<&str> = rules.iter().filter_map(|r| r.host.as_deref()).collect();
    tls.iter()
        .filter(|t| match t.hosts.as_deref() {
            None | Some([]) => true,
            Some(tls_hosts) => tls_hosts.iter().any(|h| hosts.contains(&h.as_str())),
        })
        .cloned()
        .collect()
}

/// Where one backend of the primary Ingress was pointed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChange {
    /// `host/path`, `*` for a rule without host, `(default backend)` for the default backend.
    pub route: String,
    pub from: String,
    pub to: String,
}

/// Point every backend of `spec` that targets Service `from` at `to` (promotion: baseline ->
/// candidate; rollback: candidate -> baseline). Returns the new spec and what changed; an empty
/// change list means the Ingress already routes as wanted.
pub fn retarget_backends(
    spec: &IngressSpec,
    from: &str,
    to: &ServiceTarget,
) -> (IngressSpec, Vec<BackendChange>) {
    let mut out = spec.clone();
    let mut changes = Vec::new();
    let mut switch = |backend: &mut IngressBackend, route: String| {
        if routes_to(backend, from) {
            let before = describe(backend);
            *backend = to.backend();
            changes.push(BackendChange {
                route,
                from: before,
                to: describe(backend),
            });
        }
    };
    if let Some(b) = out.default_backend.as_mut() {
        switch(b, "(default backend)".to_string());
    }
    for rule in out.rules.iter_mut().flatten() {
        let host = rule.host.clone().unwrap_or_else(|| "*".to_string());
        for path in rule.http.iter_mut().flat_map(|h| h.paths.iter_mut()) {
            let route = format!("{host}{}", path.path.as_deref().unwrap_or("/"));
            switch(&mut path.backend, route);
        }
    }
    (out, changes)
}

/// Names of all Services the Ingress routes to (rules and default backend).
pub fn backend_services(spec: &IngressSpec) -> Vec<String> {
    let mut names: Vec<String> = spec
        .default_backend
        .iter()
        .chain(
            spec.rules
                .iter()
                .flatten()
                .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
                .map(|p| &p.backend),
        )
        .filter_map(|b| b.service.as_ref().map(|s| s.name.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn describe(backend: &IngressBackend) -> String {
    match &backend.service {
        Some(s) => {
            let port = s
                .port
                .as_ref()
                .and_then(|p| p.number.map(|n| n.to_string()).or_else(|| p.name.clone()));
            match port {
                Some(port) => format!("{}:{port}", s.name),
                None => s.name.clone(),
            }
        }
        None => "(resource backend)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, svc: &str, port: ServiceBackendPort) -> HTTPIngressPath {
        HTTPIngressPath {
            path: Some(p.to_string()),
            path_type: "Prefix".to_string(),
            backend: IngressBackend {
                service: Some(IngressServiceBackend {
                    name: svc.to_string(),
                    port: Some(port),
                }),
                resource: None,
            },
        }
    }

    fn num(n: i32) -> ServiceBackendPort {
        ServiceBackendPort {
            number: Some(n),
            name: None,
        }
    }

    fn rule(host: Option<&str>, paths: Vec<HTTPIngressPath>) -> IngressRule {
        IngressRule {
            host: host.map(str::to_string),
            http: Some(HTTPIngressRuleValue { paths }),
        }
    }

    /// api.example.com: /embed -> mlx, /admin -> admin-ui; other.example.com: / -> other;
    /// web.example.com: / -> mlx (port by name). TLS for api and other; class "nginx".
    fn primary() -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some("akidb-ingress".into()),
                namespace: Some("prod".into()),
                annotations: Some(BTreeMap::from([(
                    "nginx.ingress.kubernetes.io/proxy-body-size".to_string(),
                    "2m".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: Some("nginx".into()),
                default_backend: None,
                rules: Some(vec![
                    rule(
                        Some("api.example.com"),
                        vec![
                            path("/embed", "akidb-mlx", num(8080)),
                            path("/admin", "admin-ui", num(80)),
                        ],
                    ),
                    rule(Some("other.example.com"), vec![path("/", "other", num(80))]),
                    rule(
                        Some("web.example.com"),
                        vec![path(
                            "/",
                            "akidb-mlx",
                            ServiceBackendPort {
                                name: Some("http".into()),
                                number: None,
                            },
                        )],
                    ),
                ]),
                tls: Some(vec![
                    IngressTLS {
                        hosts: Some(vec!["api.example.com".into()]),
                        secret_name: Some("api-tls".into()),
                    },
                    IngressTLS {
                        hosts: Some(vec!["other.example.com".into()]),
                        secret_name: Some("other-tls".into()),
                    },
                ]),
            }),
            status: None,
        }
    }

    fn candle() -> ServiceTarget {
        ServiceTarget {
            name: "akidb-candle".into(),
            port: 8080,
        }
    }

    fn params(c: &ServiceTarget, weight: i32) -> CanaryParams<'_> {
        CanaryParams {
            baseline_service: "akidb-mlx",
            candidate: c,
            weight,
            header: None,
            owner: OwnerReference {
                api_version: "rollout.akidb.io/v1alpha1".into(),
                kind: "EmbeddingRollout".into(),
                name: "r1".into(),
                uid: "uid-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            labels: BTreeMap::from([("rollout.akidb.io/rollout".to_string(), "r1".to_string())]),
        }
    }

    #[test]
    fn canary_has_name_annotations_class_and_owner() {
        let c = candle();
        let canary = build_canary(&primary(), &params(&c, 10)).unwrap();
        assert_eq!(
            canary.metadata.name.as_deref(),
            Some("akidb-ingress-canary")
        );
        assert_eq!(canary.metadata.namespace.as_deref(), Some("prod"));
        let ann = canary.metadata.annotations.unwrap();
        assert_eq!(ann[CANARY_ANNOTATION], "true");
        assert_eq!(ann[CANARY_WEIGHT_ANNOTATION], "10");
        // Unrelated nginx tuning of the primary is not the canary's business.
        assert!(!ann.contains_key("nginx.ingress.kubernetes.io/proxy-body-size"));
        let owners = canary.metadata.owner_references.unwrap();
        assert_eq!(owners[0].kind, "EmbeddingRollout");
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(
            canary.spec.unwrap().ingress_class_name.as_deref(),
            Some("nginx")
        );
    }

    #[test]
    fn the_canary_header_is_the_by_header_annotation_pair_and_absent_without_it() {
        let c = candle();
        let h = crate::crd::CanaryHeader {
            name: "X-Canary".into(),
            value: "always".into(),
        };
        let mut p = params(&c, 0);
        p.header = Some(&h);
        let canary = build_canary(&primary(), &p).unwrap();
        let a = canary.metadata.annotations.unwrap();
        assert_eq!(a[CANARY_HEADER_ANNOTATION], "X-Canary");
        assert_eq!(a[CANARY_HEADER_VALUE_ANNOTATION], "always");
        assert_eq!(a[CANARY_WEIGHT_ANNOTATION], "0");
        let plain = build_canary(&primary(), &params(&c, 0)).unwrap();
        let a = plain.metadata.annotations.unwrap();
        assert!(!a.contains_key(CANARY_HEADER_ANNOTATION));
        assert!(!a.contains_key(CANARY_HEADER_VALUE_ANNOTATION));
    }

    #[test]
    fn only_baseline_paths_are_copied_with_host_path_and_type() {
        let c = candle();
        let spec = build_canary(&primary(), &params(&c, 1))
            .unwrap()
            .spec
            .unwrap();
        let rules = spec.rules.unwrap();
        let hosts: Vec<_> = rules.iter().map(|r| r.host.clone().unwrap()).collect();
        assert_eq!(hosts, ["api.example.com", "web.example.com"]);
        let api_paths = &rules[0].http.as_ref().unwrap().paths;
        assert_eq!(api_paths.len(), 1, "the /admin path routes elsewhere");
        assert_eq!(api_paths[0].path.as_deref(), Some("/embed"));
        assert_eq!(api_paths[0].path_type, "Prefix");
        for r in &rules {
            for p in &r.http.as_ref().unwrap().paths {
                let svc = p.backend.service.as_ref().unwrap();
                assert_eq!(svc.name, "akidb-candle");
                assert_eq!(svc.port.as_ref().unwrap().number, Some(8080));
            }
        }
    }

    #[test]
    fn tls_is_kept_for_copied_hosts_only() {
        let c = candle();
        let tls = build_canary(&primary(), &params(&c, 50))
            .unwrap()
            .spec
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.len(), 1);
        assert_eq!(tls[0].secret_name.as_deref(), Some("api-tls"));
    }

    #[test]
    fn tls_without_hosts_applies_to_everything_and_is_kept() {
        let mut ing = primary();
        ing.spec.as_mut().unwrap().tls = Some(vec![IngressTLS {
            hosts: None,
            secret_name: Some("wildcard".into()),
        }]);
        let c = candle();
        let tls = build_canary(&ing, &params(&c, 50))
            .unwrap()
            .spec
            .unwrap()
            .tls;
        assert_eq!(tls.unwrap()[0].secret_name.as_deref(), Some("wildcard"));
    }

    #[test]
    fn default_backend_on_the_baseline_is_canaried() {
        let ing = Ingress {
            metadata: ObjectMeta {
                name: Some("edge".into()),
                annotations: Some(BTreeMap::from([(
                    LEGACY_CLASS_ANNOTATION.to_string(),
                    "nginx-internal".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                default_backend: Some(path("/", "akidb-mlx", num(8080)).backend),
                ..Default::default()
            }),
            status: None,
        };
        let c = candle();
        let canary = build_canary(&ing, &params(&c, 100)).unwrap();
        let spec = canary.spec.unwrap();
        assert!(spec.rules.is_none());
        assert_eq!(
            spec.default_backend.unwrap().service.unwrap().name,
            "akidb-candle"
        );
        let ann = canary.metadata.annotations.unwrap();
        assert_eq!(ann[LEGACY_CLASS_ANNOTATION], "nginx-internal");
        assert_eq!(ann[CANARY_WEIGHT_ANNOTATION], "100");
    }

    #[test]
    fn default_backend_elsewhere_is_not_copied() {
        let mut ing = primary();
        ing.spec.as_mut().unwrap().default_backend = Some(path("/", "fallback", num(80)).backend);
        let c = candle();
        let spec = build_canary(&ing, &params(&c, 1)).unwrap().spec.unwrap();
        assert!(spec.default_backend.is_none());
    }

    #[test]
    fn a_primary_without_baseline_routes_is_an_error() {
        let mut ing = primary();
        ing.spec.as_mut().unwrap().rules =
            Some(vec![rule(Some("x"), vec![path("/", "other", num(80))])]);
        let c = candle();
        assert_eq!(
            build_canary(&ing, &params(&c, 1)),
            Err(TrafficError::NoBaselineBackend {
                ingress: "akidb-ingress".into(),
                service: "akidb-mlx".into()
            })
        );
    }

    #[test]
    fn weights_outside_percent_are_refused() {
        let c = candle();
        assert_eq!(
            build_canary(&primary(), &params(&c, 101)),
            Err(TrafficError::WeightOutOfRange(101))
        );
        assert!(build_canary(&primary(), &params(&c, 0)).is_ok());
    }

    #[test]
    fn promotion_retargets_every_baseline_backend_and_reports_it() {
        let spec = primary().spec.unwrap();
        let (new, changes) = retarget_backends(&spec, "akidb-mlx", &candle());
        assert_eq!(
            changes,
            vec![
                BackendChange {
                    route: "api.example.com/embed".into(),
                    from: "akidb-mlx:8080".into(),
                    to: "akidb-candle:8080".into()
                },
                BackendChange {
                    route: "web.example.com/".into(),
                    from: "akidb-mlx:http".into(),
                    to: "akidb-candle:8080".into()
                },
            ]
        );
        assert_eq!(
            backend_services(&new),
            ["admin-ui", "akidb-candle", "other"]
        );
        // Everything but the backends is untouched.
        assert_eq!(new.tls, spec.tls);
        assert_eq!(new.ingress_class_name, spec.ingress_class_name);
    }

    #[test]
    fn rollback_points_the_candidate_routes_back_and_is_idempotent() {
        let spec = primary().spec.unwrap();
        let (promoted, _) = retarget_backends(&spec, "akidb-mlx", &candle());
        let mlx = ServiceTarget {
            name: "akidb-mlx".into(),
            port: 8080,
        };
        let (back, changes) = retarget_backends(&promoted, "akidb-candle", &mlx);
        assert_eq!(changes.len(), 2);
        assert_eq!(backend_services(&back), ["admin-ui", "akidb-mlx", "other"]);
        let (_, again) = retarget_backends(&back, "akidb-candle", &mlx);
        assert!(again.is_empty());
    }

    #[test]
    fn default_backend_is_retargeted_too() {
        let spec = IngressSpec {
            default_backend: Some(path("/", "akidb-mlx", num(8080)).backend),
            ..Default::default()
        };
        let (new, changes) = retarget_backends(&spec, "akidb-mlx", &candle());
        assert_eq!(changes[0].route, "(default backend)");
        assert_eq!(backend_services(&new), ["akidb-candle"]);
    }
}

//! TEST HARNESS: the pure half of the ingress emulator.
//!
//! [`routes`] turns Ingress, Service and EndpointSlice objects into a route table with ingress-nginx's
//! canary-by-weight semantics; [`render`] turns the route table into an nginx configuration. Both are
//! pure so they can be unit-tested without nginx or an API server. Semantics kept from ingress-nginx:
//! - every host+path of a non-canary Ingress routes to its backend Service's ready endpoints;
//! - an Ingress annotated `nginx.ingress.kubernetes.io/canary: "true"` with the same host+path sends
//!   `canary-weight` / `canary-weight-total` (default 0 / 100) of the requests to its backend;
//! - a canary without a primary for its host+path is ignored;
//! - a canary backend without ready endpoints gets no traffic (ingress-nginx drops the alternative
//!   balancer of an empty backend and falls back to the primary);
//! - a primary backend without ready endpoints answers 503;
//! - when two non-canary Ingresses claim the same host+path, the oldest wins.
//!
//! FQDN endpoints named `localhost` / `*.localhost` are 127.0.0.1 (RFC 6761), see [`crate::runner`].
//!
//! Not emulated: canary-by-header/cookie, session affinity, TLS, rewrites, defaultBackend.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressServiceBackend};

pub const CANARY_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary";
pub const CANARY_WEIGHT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary-weight";
pub const CANARY_WEIGHT_TOTAL_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary-weight-total";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Location answering the applied configuration's generation, used to know when a reload is live.
pub const GENERATION_PATH: &str = "/__ingress_emulator/generation";
/// Host header that reaches only the emulator's own status locations.
pub const STATUS_HOST: &str = "ingress-emulator.invalid";

/// How an Ingress path matches (`spec.rules[].http.paths[].pathType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathType {
    Exact,
    Prefix,
    ImplementationSpecific,
}

impl PathType {
    fn parse(s: &str) -> Self {
        match s {
            "Exact" => Self::Exact,
            "Prefix" => Self::Prefix,
            _ => Self::ImplementationSpecific,
        }
    }
}

/// A Service port and the ready endpoints behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: String,
    /// The port as the Ingress names it: a number or a port name.
    pub port: String,
    /// `host:port` of every ready endpoint, sorted.
    pub endpoints: Vec<String>,
}

impl Backend {
    /// nginx upstream name: unique per namespace/service/port.
    pub fn upstream_name(&self, namespace: &str) -> String {
        format!(
            "up_{}",
            sanitize(&format!("{namespace}_{}_{}", self.service, self.port))
        )
    }
}

/// The canary half of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub ingress: String,
    pub backend: Backend,
    pub weight: u32,
    pub total: u32,
}

/// One host+path and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None`: any host (the default server).
    pub host: Option<String>,
    pub path: String,
    pub path_type: PathType,
    pub ingress: String,
    pub primary: Backend,
    pub canary: Option<Canary>,
}

impl Route {
    /// Share of requests the canary receives, in hundredths of a percent (0..=10000). Zero when the
    /// canary has no ready endpoints, as in ingress-nginx.
    pub fn canary_basis_points(&self) -> u32 {
        match &self.canary {
            Some(c) if !c.backend.endpoints.is_empty() && c.total > 0 => {
                (u64::from(c.weight.min(c.total)) * 10_000 / u64::from(c.total)) as u32
            }
            _ => 0,
        }
    }
}

/// Options of the route computation.
#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
    /// Only Ingresses with this `spec.ingressClassName` (or without one) are served; `None`: all.
    pub ingress_class: Option<String>,
}

fn annotation<'a>(ing: &'a Ingress, key: &str) -> Option<&'a str> {
    ing.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|s| s.trim())
}

fn is_canary(ing: &Ingress) -> bool {
    annotation(ing, CANARY_ANNOTATION) == Some("true")
}

fn parse_weight(ing: &Ingress, key: &str, default: u32) -> u32 {
    annotation(ing, key)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(default)
}

fn name_of(ing: &Ingress) -> String {
    ing.metadata.name.clone().unwrap_or_default()
}

fn port_of(b: &IngressServiceBackend) -> String {
    match &b.port {
        Some(p) => match (&p.number, &p.name) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.clone(),
            (None, None) => String::new(),
        },
        None => String::new(),
    }
}

/// Ready endpoints (`host:port`) of `service`'s port `port` (number or name), from its EndpointSlices.
/// A Service that does not exist has none.
fn endpoints_of(
    service: &str,
    port: &str,
    services: &[Service],
    slices: &[EndpointSlice],
) -> Vec<String> {
    let Some(svc) = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(service))
    else {
        return Vec::new();
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let Some(svc_port) = ports
        .iter()
        .find(|p| p.port.to_string() == port || p.name.as_deref() == Some(port))
    else {
        return Vec::new();
    };
    let port_name = svc_port.name.clone().unwrap_or_default();
    let mut out = BTreeSet::new();
    for slice in slices {
        let owned = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(String::as_str)
            == Some(service);
        if !owned {
            continue;
        }
        let Some(slice_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            // EndpointSlice API: an unset `ready` means ready.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for addr in &ep.addresses {
                let host = match slice.address_type.as_str() {
                    "IPv6" => format!("[{addr}]"),
                    // RFC 6761: localhost names are loopback. The deployment runner needs them
                    // because the API server rejects loopback IPs in EndpointSlices.
                    "FQDN" if addr == "localhost" || addr.ends_with(".localhost") => {
                        "127.0.0.1".to_string()
                    }
                    _ => addr.clone(),
                };
                out.insert(format!("{host}:{slice_port}"));
            }
        }
    }
    out.into_iter().collect()
}

type RouteKey = (Option<String>, String, PathType);

struct Claim {
    ingress: String,
    service: String,
    port: String,
}

fn claims(ing: &Ingress) -> Vec<(RouteKey, IngressServiceBackend)> {
    let mut out = Vec::new();
    let Some(spec) = &ing.spec else { return out };
    for rule in spec.rules.iter().flatten() {
        let host = rule.host.clone().filter(|h| !h.is_empty());
        for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
            let Some(svc) = &p.backend.service else {
                continue;
            };
            let path = p
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            out.push((
                (host.clone(), path, PathType::parse(&p.path_type)),
                svc.clone(),
            ));
        }
    }
    out
}

/// The route table of a namespace: pure function of its objects.
pub fn routes(
    ingresses: &[Ingress],
    services: &[Service],
    slices: &[EndpointSlice],
    opts: &RouteOptions,
) -> Vec<Route> {
    let served = |ing: &&Ingress| match (
        &opts.ingress_class,
        ing.spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_ref()),
    ) {
        (Some(want), Some(have)) => want == have,
        _ => true,
    };
    let created = |ing: &Ingress| ing.metadata.creation_timestamp.as_ref().map(|t| t.0);

    let mut primaries: BTreeMap<RouteKey, Claim> = BTreeMap::new();
    let mut canaries: BTreeMap<RouteKey, (Claim, u32, u32)> = BTreeMap::new();
    // Oldest first (then by name) so that "oldest wins" is a plain first-come rule.
    let mut ordered: Vec<&Ingress> = ingresses.iter().filter(served).collect();
    ordered.sort_by_key(|i| (created(i), name_of(i)));
    for ing in ordered {
        for (key, svc) in claims(ing) {
            let claim = Claim {
                ingress: name_of(ing),
                service: svc.name.clone(),
                port: port_of(&svc),
            };
            if is_canary(ing) {
                let total = parse_weight(ing, CANARY_WEIGHT_TOTAL_ANNOTATION, 100);
                let weight = parse_weight(ing, CANARY_WEIGHT_ANNOTATION, 0);
                canaries.entry(key).or_insert((claim, weight, total));
            } else {
                primaries.entry(key).or_insert(claim);
            }
        }
    }

    primaries
        .into_iter()
        .map(|(key, p)| {
            let (host, path, path_type) = key.clone();
            let canary = canaries.remove(&key).map(|(c, weight, total)| Canary {
                ingress: c.ingress,
                backend: Backend {
                    endpoints: endpoints_of(&c.service, &c.port, services, slices),
                    service: c.service,
                    port: c.port,
                },
                weight,
                total,
            });
            Route {
                host,
                path,
                path_type,
                ingress: p.ingress,
                primary: Backend {
                    endpoints: endpoints_of(&p.service, &p.port, services, slices),
                    service: p.service,
                    port: p.port,
                },
                canary,
            }
        })
        .collect()
}

/// Where and how nginx runs.
#[derive(Debug, Clone)]
pub struct NginxSettings {
    pub namespace: String,
    pub listen_port: u16,
    /// Prefix directory: pid file, logs, temp dirs and the 503 socket live here.
    pub workdir: PathBuf,
    /// Answered on [`GENERATION_PATH`]; changes on every applied configuration.
    pub generation: u64,
    /// `user` directive: needed when the master runs as root so workers can reach the workdir socket.
    pub user: Option<String>,
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Name of the upstream that answers 503 (a service with no ready endpoints).
const NO_ENDPOINTS: &str = "up_no_endpoints";

fn upstream_for(backend: &Backend, namespace: &str) -> String {
    if backend.endpoints.is_empty() {
        NO_ENDPOINTS.to_string()
    } else {
        backend.upstream_name(namespace)
    }
}

/// nginx `location` prefixes for an Ingress path (ingress-nginx semantics for Prefix: element-wise).
fn locations(path: &str, path_type: PathType) -> Vec<String> {
    match path_type {
        PathType::Exact => vec![format!("= {path}")],
        PathType::ImplementationSpecific => vec![path.to_string()],
        PathType::Prefix => {
            let trimmed = path.trim_end_matches('/');
            if trimmed.is_empty() {
                vec!["/".to_string()]
            } else {
                vec![format!("= {trimmed}"), format!("{trimmed}/")]
            }
        }
    }
}

/// Render the whole nginx configuration. Pure: same inputs, same text.
pub fn render(routes: &[Route], s: &NginxSettings) -> String {
    let wd = s.workdir.display();
    let ns = &s.namespace;
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# TEST HARNESS: rendered by the e2e ingress emulator (not ingress-nginx). Do not edit."
    );
    if let Some(user) = &s.user {
        let _ = writeln!(c, "user {user};");
    }
    let _ = writeln!(
        c,
        "worker_processes 1;\npid {wd}/nginx.pid;\nerror_log {wd}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
    );
    let _ = writeln!(c, "http {{");
    let _ = writeln!(
        c,
        "  log_format upstreaminfo '$time_iso8601 $remote_addr \"$request\" $status $request_time host=$host backend=$ingress_backend upstream=$upstream_addr upstream_status=$upstream_status id=$request_id';"
    );
    let _ = writeln!(c, "  access_log {wd}/access.log upstreaminfo;");
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(c, "  {t}_temp_path {wd}/tmp/{t};");
    }
    // Bodies of up to the embedder's own limit pass, so the embedder answers its own 413s.
    let _ = writeln!(c, "  client_max_body_size 2m;");
    let _ = writeln!(c, "  keepalive_timeout 60s;");
    let _ = writeln!(c, "  server_names_hash_bucket_size 128;");
    // Retry another endpoint only when the connection fails before the request was sent (nginx
    // never re-sends a POST after that without `non_idempotent`); 5xx answers reach the client.
    let _ = writeln!(
        c,
        "  proxy_next_upstream error timeout;\n  proxy_next_upstream_tries 3;"
    );
    let _ = writeln!(
        c,
        "  proxy_connect_timeout 2s;\n  proxy_read_timeout 60s;\n  proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n  proxy_set_header Host $host;\n  proxy_set_header X-Request-ID $request_id;"
    );
    let _ = writeln!(c);

    // Upstreams: one per backend with endpoints, plus the 503 answerer.
    let mut upstreams: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in routes {
        let mut backends = vec![&r.primary];
        if let Some(cn) = &r.canary {
            backends.push(&cn.backend);
        }
        for b in backends {
            if !b.endpoints.is_empty() {
                upstreams.insert(b.upstream_name(ns), b.endpoints.clone());
            }
        }
    }
    for (name, eps) in &upstreams {
        let _ = writeln!(c, "  upstream {name} {{");
        for ep in eps {
            let _ = writeln!(c, "    server {ep} max_fails=1 fail_timeout=5s;");
        }
        let _ = writeln!(c, "    keepalive 32;\n  }}");
    }
    let _ = writeln!(
        c,
        "  upstream {NO_ENDPOINTS} {{ server unix:{wd}/no-endpoints.sock; }}"
    );
    let _ = writeln!(
        c,
        "  server {{\n    listen unix:{wd}/no-endpoints.sock;\n    access_log off;\n    location / {{ return 503 \"no ready endpoints for this service (ingress emulator)\\n\"; }}\n  }}\n"
    );

    // Split variables: one per route with an effective canary share strictly between 0 and 100 %.
    let mut route_vars: Vec<String> = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let primary = upstream_for(&r.primary, ns);
        let bp = r.canary_basis_points();
        let var = match (&r.canary, bp) {
            (Some(cn), 1..=9_999) => {
                let canary = upstream_for(&cn.backend, ns);
                let var = format!("$route_{i}");
                let _ = writeln!(
                    c,
                    "  # {} {}: {}.{:02}% to canary {} (ingress {})",
                    r.host.as_deref().unwrap_or("*"),
                    r.path,
                    bp / 100,
                    bp % 100,
                    cn.backend.service,
                    cn.ingress
                );
                let _ = writeln!(
                    c,
                    "  split_clients \"${{request_id}}\" {var} {{\n    {}.{:02}% {canary};\n    * {primary};\n  }}",
                    bp / 100,
                    bp % 100
                );
                var
            }
            (Some(cn), 10_000) => upstream_for(&cn.backend, ns),
            _ => primary,
        };
        route_vars.push(var);
    }
    let _ = writeln!(c);

    // Servers: the default server (rules without host + status), then one per host.
    let mut hosts: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    hosts.entry(None).or_default();
    for (i, r) in routes.iter().enumerate() {
        hosts.entry(r.host.clone()).or_default().push(i);
    }
    for (host, idxs) in &hosts {
        let _ = writeln!(c, "  server {{");
        match host {
            None => {
                let _ = writeln!(
                    c,
                    "    listen 127.0.0.1:{} default_server;\n    server_name _;",
                    s.listen_port
                );
                let _ = writeln!(
                    c,
                    "    location = {GENERATION_PATH} {{ default_type text/plain; return 200 \"{}\"; }}",
                    s.generation
                );
            }
            Some(h) => {
                let _ = writeln!(
                    c,
                    "    listen 127.0.0.1:{};\n    server_name {h};",
                    s.listen_port
                );
            }
        }
        // Declares the variable for the log format even in servers without routes.
        let _ = writeln!(c, "    set $ingress_backend \"-\";");
        let mut seen = BTreeSet::new();
        let mut has_root = false;
        for &i in idxs {
            let r = &routes[i];
            for loc in locations(&r.path, r.path_type) {
                // Exact beats Prefix on the same path, as in ingress-nginx; nginx rejects duplicates.
                if !seen.insert(loc.clone()) {
                    continue;
                }
                has_root |= loc == "/";
                let target = &route_vars[i];
                let _ = writeln!(c, "    location {loc} {{");
                let _ = writeln!(c, "      set $ingress_backend {target};");
                let _ = writeln!(c, "      proxy_pass http://{target};");
                let _ = writeln!(c, "      add_header x-upstream $upstream_addr always;");
                let _ = writeln!(
                    c,
                    "      add_header x-ingress-backend $ingress_backend always;"
                );
                let _ = writeln!(c, "    }}");
            }
        }
        if !has_root {
            let _ = writeln!(c, "    location / {{ return 404 \"no ingress rule for this host and path (ingress emulator)\\n\"; }}");
        }
        let _ = writeln!(c, "  }}");
    }
    let _ = writeln!(c, "}}");
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(
        name: &str,
        host: &str,
        path: &str,
        svc: &str,
        annotations: serde_json::Value,
        created: &str,
    ) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations, "creationTimestamp": created},
            "spec": {"rules": [{"host": host, "http": {"paths": [
                {"path": path, "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": 8080}}}}
            ]}}]}
        }))
        .unwrap()
    }

    fn canary(name: &str, host: &str, path: &str, svc: &str, weight: &str) -> Ingress {
        ingress(
            name,
            host,
            path,
            svc,
            json!({CANARY_ANNOTATION: "true", CANARY_WEIGHT_ANNOTATION: weight}),
            "2025-01-02T00:00:00Z",
        )
    }

    fn service(name: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}
        }))
        .unwrap()
    }

    fn slice(svc: &str, port: i32, ready: bool) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-{port}"), "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    #[test]
    fn localhost_fqdn_endpoints_are_loopback() {
        let (svcs, _) = world();
        let mut s = slice("mlx", 9005, true);
        s.address_type = "FQDN".into();
        s.endpoints[0].addresses = vec!["mlx-abc.localhost".into()];
        let rs = routes(&[primary()], &svcs, &[s], &RouteOptions::default());
        assert_eq!(rs[0].primary.endpoints, vec!["127.0.0.1:9005"]);
    }

    fn world() -> (Vec<Service>, Vec<EndpointSlice>) {
        (
            vec![service("mlx"), service("candle"), service("other")],
            vec![
                slice("mlx", 9001, true),
                slice("mlx", 9002, true),
                slice("candle", 9101, true),
                slice("other", 9201, true),
            ],
        )
    }

    fn settings() -> NginxSettings {
        NginxSettings {
            namespace: "ns".into(),
            listen_port: 18080,
            workdir: "/tmp/wd".into(),
            generation: 7,
            user: None,
        }
    }

    fn primary() -> Ingress {
        ingress(
            "main",
            "emb.local",
            "/",
            "mlx",
            json!({}),
            "2025-01-01T00:00:00Z",
        )
    }

    fn route_for<'a>(rs: &'a [Route], host: &str) -> &'a Route {
        rs.iter()
            .find(|r| r.host.as_deref() == Some(host))
            .expect("route for host")
    }

    #[test]
    fn primary_routes_to_ready_endpoints_only() {
        let (svcs, mut slices) = world();
        slices.push(slice("mlx", 9003, false));
        let rs = routes(&[primary()], &svcs, &slices, &RouteOptions::default());
        assert_eq!(rs.len(), 1);
        assert_eq!(
            rs[0].primary.endpoints,
            vec!["127.0.0.1:9001", "127.0.0.1:9002"]
        );
        assert_eq!(rs[0].canary_basis_points(), 0);
    }

    #[test]
    fn canary_weights_become_split_percentages() {
        let (svcs, slices) = world();
        for (w, expect_bp, expect_text) in [
            ("0", 0, None),
            ("1", 100, Some("1.00% up_ns_candle_8080;")),
            ("10", 1000, Some("10.00% up_ns_candle_8080;")),
            ("50", 5000, Some("50.00% up_ns_candle_8080;")),
            ("100", 10_000, None),
        ] {
            let rs = routes(
                &[
                    primary(),
                    canary("main-canary", "emb.local", "/", "candle", w),
                ],
                &svcs,
                &slices,
                &RouteOptions::default(),
            );
            assert_eq!(rs.len(), 1, "weight {w}");
            assert_eq!(rs[0].canary_basis_points(), expect_bp, "weight {w}");
            let conf = render(&rs, &settings());
            match expect_text {
                Some(t) => {
                    assert!(conf.contains(t), "weight {w}: {conf}");
                    assert!(conf.contains("* up_ns_mlx_8080;"), "weight {w}");
                    assert!(conf.contains("proxy_pass http://$route_0;"), "weight {w}");
                }
                None => assert!(!conf.contains("split_clients"), "weight {w}: {conf}"),
            }
            if w == "0" {
                assert!(conf.contains("proxy_pass http://up_ns_mlx_8080;"), "{conf}");
            }
            if w == "100" {
                assert!(
                    conf.contains("proxy_pass http://up_ns_candle_8080;"),
                    "{conf}"
                );
                assert!(!conf.contains("proxy_pass http://up_ns_mlx_8080;"));
            }
        }
    }

    #[test]
    fn weight_total_scales_the_share() {
        let (svcs, slices) = world();
        let mut c = canary("c", "emb.local", "/", "candle", "5");
        c.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(CANARY_WEIGHT_TOTAL_ANNOTATION.into(), "1000".into());
        let rs = routes(&[primary(), c], &svcs, &slices, &RouteOptions::default());
        assert_eq!(rs[0].canary_basis_points(), 50); // 0.5 %
        assert!(render(&rs, &settings()).contains("0.50% up_ns_candle_8080;"));
    }

    #[test]
    fn unrelated_hosts_are_untouched_by_a_canary() {
        let (svcs, slices) = world();
        let other = ingress(
            "other",
            "other.local",
            "/",
            "other",
            json!({}),
            "2025-01-01T00:00:00Z",
        );
        let rs = routes(
            &[
                primary(),
                other,
                canary("c", "emb.local", "/", "candle", "50"),
            ],
            &svcs,
            &slices,
            &RouteOptions::default(),
        );
        assert_eq!(rs.len(), 2);
        assert!(route_for(&rs, "other.local").canary.is_none());
        assert_eq!(route_for(&rs, "emb.local").canary_basis_points(), 5000);
        let conf = render(&rs, &settings());
        assert!(conf.contains("server_name other.local;"));
        let other_server = conf.split("server_name other.local;").nth(1).unwrap();
        let other_server = other_server.split("server {").next().unwrap();
        assert!(
            other_server.contains("proxy_pass http://up_ns_other_8080;"),
            "{other_server}"
        );
    }

    #[test]
    fn canary_without_primary_is_ignored() {
        let (svcs, slices) = world();
        let rs = routes(
            &[canary("c", "emb.local", "/", "candle", "50")],
            &svcs,
            &slices,
            &RouteOptions::default(),
        );
        assert!(rs.is_empty());
        let conf = render(&rs, &settings());
        assert!(!conf.contains("candle"));
        // A canary on another path of the same host is not merged either.
        let rs = routes(
            &[primary(), canary("c", "emb.local", "/v2", "candle", "50")],
            &svcs,
            &slices,
            &RouteOptions::default(),
        );
        assert_eq!(rs.len(), 1);
        assert!(rs[0].canary.is_none());
    }

    #[test]
    fn canary_without_endpoints_gets_no_traffic() {
        let (svcs, _) = world();
        let slices = vec![slice("mlx", 9001, true), slice("candle", 9101, false)];
        let rs = routes(
            &[primary(), canary("c", "emb.local", "/", "candle", "50")],
            &svcs,
            &slices,
            &RouteOptions::default(),
        );
        assert_eq!(rs[0].canary_basis_points(), 0);
        let conf = render(&rs, &settings());
        assert!(!conf.contains("split_clients"));
        assert!(conf.contains("proxy_pass http://up_ns_mlx_8080;"));
    }

    #[test]
    fn primary_without_endpoints_answers_503() {
        let (svcs, _) = world();
        let rs = routes(&[primary()], &svcs, &[], &RouteOptions::default());
        let conf = render(&rs, &settings());
        assert!(conf.contains("proxy_pass http://up_no_endpoints;"));
        assert!(conf.contains("return 503"));
        // A missing Service behaves the same.
        let rs = routes(&[primary()], &[], &[], &RouteOptions::default());
        assert!(rs[0].primary.endpoints.is_empty());
    }

    #[test]
    fn oldest_primary_wins_a_conflict() {
        let (svcs, slices) = world();
        let newer = ingress(
            "newer",
            "emb.local",
            "/",
            "other",
            json!({}),
            "2025-06-01T00:00:00Z",
        );
        let rs = routes(
            &[newer, primary()],
            &svcs,
            &slices,
            &RouteOptions::default(),
        );
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].ingress, "main");
        assert_eq!(rs[0].primary.service, "mlx");
    }

    #[test]
    fn prefix_paths_match_whole_segments() {
        assert_eq!(locations("/", PathType::Prefix), vec!["/"]);
        assert_eq!(
            locations("/api/", PathType::Prefix),
            vec!["= /api", "/api/"]
        );
        assert_eq!(locations("/api", PathType::Exact), vec!["= /api"]);
    }

    #[test]
    fn render_is_deterministic_and_reports_its_generation() {
        let (svcs, slices) = world();
        let rs = routes(
            &[primary(), canary("c", "emb.local", "/", "candle", "10")],
            &svcs,
            &slices,
            &RouteOptions::default(),
        );
        assert_eq!(render(&rs, &settings()), render(&rs, &settings()));
        assert!(render(&rs, &settings()).contains(&format!(
            "location = {GENERATION_PATH} {{ default_type text/plain; return 200 \"7\"; }}"
        )));
        assert!(render(&rs, &settings()).contains("listen 127.0.0.1:18080;"));
    }
}

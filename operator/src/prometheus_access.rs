//! How the operator reaches a rollout's Prometheus: credentials, tenant headers and the CA that
//! `spec.analysis.prometheus` names, read from Secrets and ConfigMaps of the rollout's
//! namespace, and the HTTP client built from them.
//!
//! [`resolve`] is the only part that talks to the API server; [`assemble`] (what the values
//! mean) and [`Access::client`] (what the client does with them) are plain functions, tested
//! here. Values never reach a log line, an event or the status: [`Access`]'s `Debug` redacts
//! them and every error names the object and key, never the value.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use kube::Client;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::crd::PrometheusSpec;
use crate::object_keys::{self, KeyError, KeyRef};

/// The resolved credentials and trust of one Prometheus, ready to build a client from.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Access {
    /// The whole `Authorization` header value.
    authorization: Option<String>,
    headers: Vec<(String, String)>,
    ca_pem: Option<Vec<u8>>,
    server_name: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Why the access could not be resolved or used. Names objects, keys and fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// A Secret or ConfigMap, or its key, that the spec names is missing or unreadable.
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("prometheus.{field}: the value of {kind} {namespace}/{name} key {key:?} is not usable in an HTTP header (UTF-8 without line breaks)")]
    BadValue {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
        field: &'static str,
    },
    #[error("prometheus.tls: the CA bundle holds no usable PEM certificate: {0}")]
    BadCa(String),
    #[error("prometheus.tls.serverName {0:?}: {1}")]
    BadServerName(String, String),
    #[error("building the Prometheus client: {0}")]
    Client(String),
}

pub use crate::object_keys::Fetched;

/// The Secrets and ConfigMaps `spec` refers to, by name.
#[derive(Debug, Default)]
pub struct Objects {
    pub secrets: BTreeMap<String, Fetched>,
    pub config_maps: BTreeMap<String, Fetched>,
}

/// Every Secret and ConfigMap name `spec` reads.
fn referenced(spec: &PrometheusSpec) -> (Vec<String>, Vec<String>) {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(t) = &spec.bearer_token {
        secrets.push(t.name.clone());
    }
    if let Some(b) = &spec.basic_auth {
        secrets.push(b.username.name.clone());
        secrets.push(b.password.name.clone());
    }
    secrets.extend(
        spec.headers
            .iter()
            .filter_map(|h| h.secret_key_ref.as_ref().map(|r| r.name.clone())),
    );
    let mut config_maps = Vec::new();
    if let Some(tls) = &spec.tls {
        if let Some(s) = &tls.ca_secret {
            secrets.push(s.name.clone());
        }
        if let Some(c) = &tls.ca_config_map {
            config_maps.push(c.name.clone());
        }
    }
    secrets.sort();
    secrets.dedup();
    config_maps.sort();
    config_maps.dedup();
    (secrets, config_maps)
}

/// Read what `spec` refers to from `namespace` (one GET per object, at each analysis, so a
/// rotated Secret is used at the next one) and assemble the access.
pub async fn resolve(
    client: &Client,
    namespace: &str,
    spec: &PrometheusSpec,
) -> Result<Access, AccessError> {
    let (secret_names, config_map_names) = referenced(spec);
    let mut objects = Objects::default();
    for name in secret_names {
        let got = object_keys::fetch_secret(client, namespace, &name).await;
        objects.secrets.insert(name, got);
    }
    for name in config_map_names {
        let got = object_keys::fetch_config_map(client, namespace, &name).await;
        objects.config_maps.insert(name, got);
    }
    assemble(spec, namespace, &objects)
}

/// What `spec` means given the objects it refers to. Pure.
pub fn assemble(
    spec: &PrometheusSpec,
    namespace: &str,
    objects: &Objects,
) -> Result<Access, AccessError> {
    let lookup = |kind: &'static str,
                  map: &BTreeMap<String, Fetched>,
                  name: &str,
                  key: &str,
                  field: &'static str|
     -> Result<Vec<u8>, AccessError> {
        let r = KeyRef {
            kind,
            namespace,
            name,
            key,
            field: &format!("prometheus.{field}"),
        };
        Ok(r.read(map.get(name))?)
    };
    let header_text = |kind: &'static str,
                       bytes: Vec<u8>,
                       name: &str,
                       key: &str,
                       field: &'static str|
     -> Result<String, AccessError> {
        // A trailing newline is how `echo` and most editors write a Secret file; anything else
        // that cannot go in a header is refused rather than silently altered.
        let text = String::from_utf8(bytes)
            .ok()
            .map(|t| t.trim_end_matches(['\n', '\r']).to_string())
            .filter(|t| HeaderValue::from_str(t).is_ok());
        text.ok_or_else(|| AccessError::BadValue {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
            field,
        })
    };
    let secret = |r: &crate::crd::SecretKeyRef, field: &'static str| {
        lookup("Secret", &objects.secrets, &r.name, &r.key, field)
            .and_then(|b| header_text("Secret", b, &r.name, &r.key, field))
    };

    let mut access = Access::default();
    if let Some(t) = &spec.bearer_token {
        access.authorization = Some(format!("Bearer {}", secret(t, "bearerToken")?));
    }
    if let Some(b) = &spec.basic_auth {
        let user = secret(&b.username, "basicAuth.username")?;
        let pass = secret(&b.password, "basicAuth.password")?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        access.authorization = Some(format!("Basic {token}"));
    }
    for h in &spec.headers {
        let value = match (&h.value, &h.secret_key_ref) {
            (Some(v), _) => v.clone(),
            (None, Some(r)) => secret(r, "headers")?,
            // The schema requires exactly one; an object written before it is read as empty.
            (None, None) => String::new(),
        };
        access.headers.push((h.name.clone(), value));
    }
    if let Some(tls) = &spec.tls {
        if let Some(r) = &tls.ca_secret {
            access.ca_pem = Some(lookup(
                "Secret",
                &objects.secrets,
                &r.name,
                &r.key,
                "tls.caSecret",
            )?);
        }
        if let Some(r) = &tls.ca_config_map {
            access.ca_pem = Some(lookup(
                "ConfigMap",
                &objects.config_maps,
                &r.name,
                &r.key,
                "tls.caConfigMap",
            )?);
        }
        access.server_name.clone_from(&tls.server_name);
    }
    Ok(access)
}

impl Access {
    /// A short stable fingerprint (for the client cache key): a rotated credential gets a new
    /// client, the same one reuses its connections.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// The base URL to query and the HTTP client for `address`. With `serverName`, the URL
    /// carries that name (so TLS sends it as SNI and verifies the certificate against it) and
    /// the client's resolver sends it to the address's real host.
    pub fn client(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<(String, reqwest::Client), AccessError> {
        let mut headers = HeaderMap::new();
        if let Some(a) = &self.authorization {
            let mut v = HeaderValue::from_str(a)
                .map_err(|e| AccessError::Client(format!("Authorization header: {e}")))?;
            // Kept out of hyper's and reqwest's Debug output.
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        for (name, value) in &self.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| AccessError::Client(format!("header {name:?}: {e}")))?;
            let mut v = HeaderValue::from_str(value)
                .map_err(|e| AccessError::Client(format!("header {name:?}: {e}")))?;
            v.set_sensitive(true);
            headers.append(n, v);
        }
        let mut builder = crate::http_client::builder()
            .default_headers(headers)
            .connect_timeout(timeout);
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| AccessError::BadCa(e.to_string()))?;
            if certs.is_empty() {
                return Err(AccessError::BadCa("no BEGIN CERTIFICATE block".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        let mut url = address.to_string();
        if let Some(name) = &self.server_name {
            let mut parsed = reqwest::Url::parse(address)
                .map_err(|e| AccessError::Client(format!("address {address:?}: {e}")))?;
            let real_host = parsed
                .host_str()
                .ok_or_else(|| AccessError::Client(format!("address {address:?} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            parsed
                .set_host(Some(name))
                .map_err(|e| AccessError::BadServerName(name.clone(), e.to_string()))?;
            url = parsed.to_string();
            builder = builder.dns_resolver(Arc::new(ServerNameResolver {
                server_name: name.to_ascii_lowercase(),
                real_host,
            }));
        }
        let client = builder
            .build()
            .map_err(|e| AccessError::Client(e.to_string()))?;
        Ok((url, client))
    }
}

/// Resolves `server_name` to the address's real host (an IP or another DNS name), and every
/// other name as usual.
struct ServerNameResolver {
    server_name: String,
    real_host: String,
}

impl reqwest::dns::Resolve for ServerNameResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = if name.as_str().eq_ignore_ascii_case(&self.server_name) {
            self.real_host.clone()
        } else {
            name.as_str().to_string()
        };
        Box::pin(async move {
            // Port 0: the connector puts the URL's port in.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BasicAuth, ConfigMapKeyRef, HttpHeader, PrometheusTls, SecretKeyRef};

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    fn objects(secrets: &[(&str, &[(&str, &str)])]) -> Objects {
        Objects {
            secrets: secrets
                .iter()
                .map(|(name, data)| {
                    let data = data
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                        .collect();
                    (name.to_string(), Ok(Some(data)))
                })
                .collect(),
            config_maps: BTreeMap::new(),
        }
    }

    fn spec() -> PrometheusSpec {
        PrometheusSpec {
            address: "https://mimir.example:8443/prometheus".into(),
            ..PrometheusSpec::default()
        }
    }

    #[test]
    fn basic_auth_and_tenant_header_from_secrets() {
        let mut s = spec();
        s.basic_auth = Some(BasicAuth {
            username: key("prom", "user"),
            password: key("prom", "pass"),
        });
        s.headers = vec![
            HttpHeader {
                name: "X-Scope-OrgID".into(),
                value: Some("tenant-a".into()),
                secret_key_ref: None,
            },
            HttpHeader {
                name: "X-Api-Key".into(),
                value: None,
                secret_key_ref: Some(key("prom", "api")),
            },
        ];
        let o = objects(&[(
            "prom",
            &[("user", "ops"), ("pass", "s3cret\n"), ("api", "k")],
        )]);
        let a = assemble(&s, "prod", &o).unwrap();
        // base64("ops:s3cret"): the newline `echo` leaves in a Secret file is not part of it.
        assert_eq!(a.authorization.as_deref(), Some("Basic b3BzOnMzY3JldA=="));
        assert_eq!(
            a.headers,
            [
                ("X-Scope-OrgID".to_string(), "tenant-a".to_string()),
                ("X-Api-Key".to_string(), "k".to_string())
            ]
        );
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("b3BzOnMzY3JldA") && !shown.contains("tenant-a"),
            "{shown}"
        );
    }

    #[test]
    fn bearer_token() {
        let mut s = spec();
        s.bearer_token = Some(key("tok", "token"));
        let a = assemble(&s, "prod", &objects(&[("tok", &[("token", "abc.def")])])).unwrap();
        assert_eq!(a.authorization.as_deref(), Some("Bearer abc.def"));
    }

    #[test]
    fn missing_objects_keys_and_read_errors_name_what_is_missing_never_a_value() {
        let mut s = spec();
        s.bearer_token = Some(key("tok", "token"));
        assert_eq!(
            assemble(&s, "prod", &Objects::default())
                .unwrap_err()
                .to_string(),
            "Secret prod/tok (for prometheus.bearerToken) not found"
        );
        assert_eq!(
            assemble(&s, "prod", &objects(&[("tok", &[("other", "x")])]))
                .unwrap_err()
                .to_string(),
            "Secret prod/tok (for prometheus.bearerToken) has no key \"token\""
        );
        let mut o = Objects::default();
        o.secrets.insert(
            "tok".into(),
            Err("forbidden: the operator may not get secrets".into()),
        );
        assert!(assemble(&s, "prod", &o)
            .unwrap_err()
            .to_string()
            .starts_with("cannot read Secret prod/tok (for prometheus.bearerToken): forbidden"));
        let e = assemble(&s, "prod", &objects(&[("tok", &[("token", "a\nb")])])).unwrap_err();
        assert!(matches!(e, AccessError::BadValue { .. }), "{e}");
        assert!(!e.to_string().contains("a\nb"));
    }

    #[test]
    fn ca_from_a_config_map_and_server_name() {
        let mut s = spec();
        s.tls = Some(PrometheusTls {
            ca_config_map: Some(ConfigMapKeyRef {
                name: "kube-root-ca.crt".into(),
                key: "ca.crt".into(),
            }),
            ca_secret: None,
            server_name: Some("prometheus.internal".into()),
        });
        let mut o = Objects::default();
        o.config_maps.insert(
            "kube-root-ca.crt".into(),
            Ok(Some(BTreeMap::from([(
                "ca.crt".to_string(),
                b"PEM".to_vec(),
            )]))),
        );
        let a = assemble(&s, "prod", &o).unwrap();
        assert_eq!(a.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(a.server_name.as_deref(), Some("prometheus.internal"));
        // Not a certificate: a clear error when the client is built.
        let e = a.client(&s.address, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, AccessError::BadCa(_)), "{e}");
    }

    #[test]
    fn server_name_goes_in_the_url_and_the_port_and_path_stay() {
        let a = Access {
            server_name: Some("prometheus.internal".into()),
            ..Access::default()
        };
        let (url, _) = a
            .client("https://10.0.0.7:9443/prom", Duration::from_secs(1))
            .unwrap();
        assert_eq!(url, "https://prometheus.internal:9443/prom");
    }

    #[test]
    fn the_fingerprint_changes_with_a_rotated_credential() {
        let mut s = spec();
        s.bearer_token = Some(key("tok", "token"));
        let a = assemble(&s, "p", &objects(&[("tok", &[("token", "one")])])).unwrap();
        let b = assemble(&s, "p", &objects(&[("tok", &[("token", "two")])])).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }

    #[test]
    fn no_access_fields_read_nothing() {
        assert_eq!(referenced(&spec()), (vec![], vec![]));
        assert_eq!(
            assemble(&spec(), "p", &Objects::default()).unwrap(),
            Access::default()
        );
    }
}

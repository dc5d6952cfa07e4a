//! One key of a Secret or ConfigMap that a rollout names (Prometheus credentials and CA, webhook
//! URLs, parity texts): the object as the API server returned it, then the key. The errors name
//! the object, the key and the spec field it is for, and never the value.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

/// One object as the API server returned it: its data by key, not found, or a read error.
pub type Fetched = Result<Option<BTreeMap<String, Vec<u8>>>, String>;

/// Why a key could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{kind} {namespace}/{name} (for {field}) not found")]
    MissingObject {
        kind: &'static str,
        namespace: String,
        name: String,
        field: String,
    },
    #[error("{kind} {namespace}/{name} (for {field}) has no key {key:?}")]
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
        field: String,
    },
    #[error("cannot read {kind} {namespace}/{name} (for {field}): {message}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        field: String,
        message: String,
    },
}

/// Which key of which object, and the spec field that names it (for the error).
#[derive(Clone, Copy, Debug)]
pub struct KeyRef<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub key: &'a str,
    pub field: &'a str,
}

impl KeyRef<'_> {
    /// The key's bytes from what the API server returned for the object. Pure.
    pub fn read(&self, fetched: Option<&Fetched>) -> Result<Vec<u8>, KeyError> {
        let data = match fetched {
            Some(Ok(Some(data))) => data,
            Some(Err(message)) => {
                return Err(KeyError::Read {
                    kind: self.kind,
                    namespace: self.namespace.into(),
                    name: self.name.into(),
                    field: self.field.into(),
                    message: message.clone(),
                })
            }
            Some(Ok(None)) | None => {
                return Err(KeyError::MissingObject {
                    kind: self.kind,
                    namespace: self.namespace.into(),
                    name: self.name.into(),
                    field: self.field.into(),
                })
            }
        };
        data.get(self.key)
            .cloned()
            .ok_or_else(|| KeyError::MissingKey {
                kind: self.kind,
                namespace: self.namespace.into(),
                name: self.name.into(),
                key: self.key.into(),
                field: self.field.into(),
            })
    }
}

/// One GET of a Secret: its data by key.
pub async fn fetch_secret(client: &Client, namespace: &str, name: &str) -> Fetched {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map(|o| {
            o.map(|s| {
                s.data
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            })
        })
        .map_err(|e| crate::cluster::describe_kube_error(&e))
}

/// One GET of a ConfigMap: its (text) data by key.
pub async fn fetch_config_map(client: &Client, namespace: &str, name: &str) -> Fetched {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map(|o| {
            o.map(|c| {
                c.data
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect()
            })
        })
        .map_err(|e| crate::cluster::describe_kube_error(&e))
}

/// Reads one key, with one GET of its object (so a rotated Secret is used at the next read).
pub async fn read(client: &Client, r: KeyRef<'_>) -> Result<Vec<u8>, KeyError> {
    let fetched = match r.kind {
        "ConfigMap" => fetch_config_map(client, r.namespace, r.name).await,
        _ => fetch_secret(client, r.namespace, r.name).await,
    };
    r.read(Some(&fetched))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(name: &'a str, key: &'a str) -> KeyRef<'a> {
        KeyRef {
            kind: "Secret",
            namespace: "prod",
            name,
            key,
            field: "prometheus.bearerToken",
        }
    }

    #[test]
    fn each_failure_names_object_key_and_field_never_a_value() {
        let data: Fetched = Ok(Some(BTreeMap::from([("token".into(), b"s3cret".to_vec())])));
        assert_eq!(at("tok", "token").read(Some(&data)).unwrap(), b"s3cret");
        let e = at("tok", "user").read(Some(&data)).unwrap_err().to_string();
        assert_eq!(
            e,
            "Secret prod/tok (for prometheus.bearerToken) has no key \"user\""
        );
        assert!(!e.contains("s3cret"));
        assert_eq!(
            at("tok", "token")
                .read(Some(&Ok(None)))
                .unwrap_err()
                .to_string(),
            "Secret prod/tok (for prometheus.bearerToken) not found"
        );
        assert_eq!(
            at("tok", "token").read(None).unwrap_err().to_string(),
            "Secret prod/tok (for prometheus.bearerToken) not found"
        );
        assert_eq!(
            at("tok", "token")
                .read(Some(&Err("forbidden: no get".into())))
                .unwrap_err()
                .to_string(),
            "cannot read Secret prod/tok (for prometheus.bearerToken): forbidden: no get"
        );
    }
}

//! TEST HARNESS: how a pod template becomes a local process command line (pure): ConfigMap volume
//! paths and image paths mapped to local files, the runner's own `--host`/`--port`.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::PodTemplateSpec;

/// A ConfigMap volume mounted into the first container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapMount {
    pub mount_path: String,
    pub config_map: String,
    pub sub_path: Option<String>,
    /// `items`: key -> relative path; empty: every key under its own name.
    pub items: Vec<(String, String)>,
    pub optional: bool,
}

/// ConfigMap volume mounts of the first container. Pure.
pub fn config_map_mounts(template: &PodTemplateSpec) -> Vec<ConfigMapMount> {
    let Some(spec) = &template.spec else {
        return Vec::new();
    };
    let Some(container) = spec.containers.first() else {
        return Vec::new();
    };
    let volumes = spec.volumes.clone().unwrap_or_default();
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
            continue;
        };
        let Some(cm) = &v.config_map else { continue };
        out.push(ConfigMapMount {
            mount_path: m.mount_path.trim_end_matches('/').to_string(),
            config_map: cm.name.clone(),
            sub_path: m.sub_path.clone().filter(|s| !s.is_empty()),
            items: cm
                .items
                .iter()
                .flatten()
                .map(|k| (k.key.clone(), k.path.clone()))
                .collect(),
            optional: cm.optional.unwrap_or(false),
        });
    }
    out
}

/// Rewrite a container path (a whole value, or the part after `=` in `--flag=value`) that lies under
/// one of `map`'s container prefixes to the local prefix. Pure.
pub fn rewrite_path(value: &str, map: &[(String, PathBuf)]) -> String {
    let (head, path) = match value.split_once('=') {
        Some((h, p)) if h.starts_with('-') => (Some(h), p),
        _ => (None, value),
    };
    for (container, local) in map {
        let rest = if path == container {
            Some("")
        } else {
            path.strip_prefix(container.as_str())
                .filter(|r| r.starts_with('/'))
        };
        if let Some(rest) = rest {
            let new = format!("{}{}", local.display(), rest);
            return match head {
                Some(h) => format!("{h}={new}"),
                None => new,
            };
        }
    }
    value.to_string()
}

/// Rewrite container paths inside a text file (YAML values like `path: /models/x`): an occurrence
/// counts when it starts a value (after whitespace, a quote, `=` or `:`) and ends at a path
/// boundary. Pure.
pub fn rewrite_paths_in_text(text: &str, map: &[(String, PathBuf)]) -> String {
    let mut out = text.to_string();
    for (container, local) in map {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        let mut prev: Option<char> = None;
        while let Some(i) = rest.find(container.as_str()) {
            let before = rest[..i].chars().last().or(prev);
            let after = rest[i + container.len()..].chars().next();
            let starts_value =
                before.is_none_or(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ':'));
            let ends_path =
                after.is_none_or(|c| c == '/' || c.is_whitespace() || matches!(c, '"' | '\''));
            result.push_str(&rest[..i]);
            if starts_value && ends_path {
                result.push_str(&local.display().to_string());
            } else {
                result.push_str(container);
            }
            prev = container.chars().last();
            rest = &rest[i + container.len()..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// Container args without `--host`/`--port` (the runner sets them). Pure.
pub fn strip_listen_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if a == "--host" || a == "--port" {
            skip_next = true;
            continue;
        }
        if a.starts_with("--host=") || a.starts_with("--port=") {
            continue;
        }
        out.push(a.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;

    fn deployment(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn config_map_paths_are_rewritten_to_local_files() {
        let d = deployment(
            serde_json::json!({"spec": {"selector": {}, "template": {"spec": {
                "containers": [{"name": "c", "args": ["--models", "/etc/candle/models.yaml"],
                    "volumeMounts": [{"name": "models", "mountPath": "/etc/candle"}]}],
                "volumes": [{"name": "models", "configMap": {"name": "cand-models"}}]
            }}}}),
        );
        let mounts = config_map_mounts(&d.spec.unwrap().template);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].config_map, "cand-models");
        assert_eq!(mounts[0].mount_path, "/etc/candle");
        let map = vec![("/etc/candle".to_string(), PathBuf::from("/w/volumes/x"))];
        assert_eq!(
            rewrite_path("/etc/candle/models.yaml", &map),
            "/w/volumes/x/models.yaml"
        );
        assert_eq!(
            rewrite_path("--models=/etc/candle/models.yaml", &map),
            "--models=/w/volumes/x/models.yaml"
        );
        assert_eq!(rewrite_path("/etc/candlelight", &map), "/etc/candlelight");
        assert_eq!(
            rewrite_path("--chaos-latency-ms=40", &map),
            "--chaos-latency-ms=40"
        );
    }

    #[test]
    fn image_paths_in_models_files_point_at_local_directories() {
        let map = vec![("/models".to_string(), PathBuf::from("/ws/models"))];
        let yaml = "models:\n  - name: a\n    path: /models/all-MiniLM-L6-v2\n  - path: \"/models/b\"\n  - path: /other/models/c\n";
        assert_eq!(
            rewrite_paths_in_text(yaml, &map),
            "models:\n  - name: a\n    path: /ws/models/all-MiniLM-L6-v2\n  - path: \"/ws/models/b\"\n  - path: /other/models/c\n"
        );
        assert_eq!(
            rewrite_paths_in_text("/modelsx: /models", &map),
            "/modelsx: /ws/models"
        );
    }

    #[test]
    fn listen_flags_of_the_container_are_replaced() {
        let args: Vec<String> = ["--port", "8080", "--host=0.0.0.0", "--service-name", "mlx"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(strip_listen_args(&args), vec!["--service-name", "mlx"]);
    }
}

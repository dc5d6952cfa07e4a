//! The operator-wide webhooks (`--notifications-config FILE`): told of every rollout's
//! notifications besides the rollout's own `spec.notifications.webhooks`. Pure: the file's text
//! in, the webhooks or the first thing wrong with them (its field path) out.
//!
//! The file is YAML or JSON, a rollout's `spec.notifications` with the same fields:
//!
//! ```yaml
//! webhooks:
//!   - name: platform-slack
//!     urlSecretRef: {name: rollout-global-webhooks, key: slack}  # a Secret of the operator's namespace
//!     format: Slack                                              # or Generic (the default)
//!     events: [RollbackStarted, RolledBack, Failed]              # empty: the milestones
//!     timeout: 5s
//!     attempts: 4
//! ```
//!
//! Stricter than the CRD, because nothing validated the file before the operator reads it (a
//! rollout's webhooks pass the API server's schema first): unknown fields are errors (a typo'd
//! `evnets` would otherwise silently send everything), and so are what the schema bounds (name
//! length, attempts 1-10) and a timeout that is not a positive duration.

use std::collections::HashMap;

use serde::Deserialize;

use crate::crd::{
    default_webhook_attempts, default_webhook_timeout, NotificationKind, SecretKeyRef,
    WebhookFormat, WebhookSpec,
};
use crate::duration::GoDuration;

/// The operator-wide webhooks and where their URL Secrets are read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GlobalWebhooks {
    /// The operator's own namespace (the Secrets of `webhooks` live there, not in the rollouts').
    pub secret_namespace: String,
    pub webhooks: Vec<WebhookSpec>,
}

/// What is wrong with the file: the field's path first (`webhooks[1].urlSecretRef: ...`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

// The file's own shapes: `WebhookSpec` and `SecretKeyRef` ignore unknown fields (the API server
// prunes them, and an older operator must still decode a newer CRD's objects), the file must not.
// `From` below names every field of `WebhookSpec`, so a field added there fails to compile here.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    webhooks: Vec<FileWebhook>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileWebhook {
    name: String,
    url_secret_ref: FileSecretKeyRef,
    #[serde(default)]
    format: WebhookFormat,
    #[serde(default)]
    events: Vec<NotificationKind>,
    #[serde(default = "default_webhook_timeout")]
    timeout: GoDuration,
    #[serde(default = "default_webhook_attempts")]
    attempts: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSecretKeyRef {
    name: String,
    key: String,
}

impl From<FileWebhook> for WebhookSpec {
    fn from(w: FileWebhook) -> Self {
        WebhookSpec {
            name: w.name,
            url_secret_ref: SecretKeyRef {
                name: w.url_secret_ref.name,
                key: w.url_secret_ref.key,
            },
            format: w.format,
            events: w.events,
            timeout: w.timeout,
            attempts: w.attempts,
        }
    }
}

/// The webhooks of a `--notifications-config` file, each checked; `webhooks: []` is none.
pub fn parse(text: &str) -> Result<Vec<WebhookSpec>, ConfigError> {
    let blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    if text.lines().all(blank) {
        return Err(ConfigError(
            "the file is empty: expected `webhooks: [...]`".into(),
        ));
    }
    // serde_yaml's errors start with the field's path and end with the line and column.
    let file: File = serde_yaml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (i, w) in file.webhooks.iter().enumerate() {
        let at = |field: &str, why: String| ConfigError(format!("webhooks[{i}].{field}: {why}"));
        if w.name.is_empty() || w.name.len() > 63 {
            return Err(at(
                "name",
                format!("{:?} must be 1 to 63 characters", w.name),
            ));
        }
        if let Some(j) = first_index.insert(&w.name, i) {
            return Err(at(
                "name",
                format!("{:?} is also the name of webhooks[{j}]", w.name),
            ));
        }
        if !is_dns_subdomain(&w.url_secret_ref.name) {
            return Err(at(
                "urlSecretRef.name",
                format!(
                    "{:?} is not a Secret name (lowercase letters, digits, '-' and '.', at most 253)",
                    w.url_secret_ref.name
                ),
            ));
        }
        if !is_secret_key(&w.url_secret_ref.key) {
            return Err(at(
                "urlSecretRef.key",
                format!(
                    "{:?} is not a Secret key (letters, digits, '-', '_' and '.', at most 253)",
                    w.url_secret_ref.key
                ),
            ));
        }
        match w.timeout.parse() {
            Ok(d) if !d.is_zero() => {}
            Ok(_) => return Err(at("timeout", "must be more than 0".into())),
            Err(e) => return Err(at("timeout", e.to_string())),
        }
        if !(1..=10).contains(&w.attempts) {
            return Err(at(
                "attempts",
                format!("{} is not between 1 and 10", w.attempts),
            ));
        }
    }
    Ok(file.webhooks.into_iter().map(WebhookSpec::from).collect())
}

/// A Kubernetes object name of the DNS-1123 subdomain kind (what a Secret's name must be).
fn is_dns_subdomain(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(ok_char)
        && alnum(s.chars().next())
        && alnum(s.chars().last())
}

/// A key of a Secret's `data`.
fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn notification_config_good_file_yaml_and_json() {
        let hooks = parse(
            r#"
webhooks:
  - name: platform-slack
    urlSecretRef: {name: rollout-global-webhooks, key: slack}
    format: Slack
    events: [RollbackStarted, RolledBack, Failed]
    timeout: 3s
    attempts: 2
  - name: audit
    urlSecretRef:
      name: rollout-global-webhooks
      key: audit.url
"#,
        )
        .unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].name, "platform-slack");
        assert_eq!(hooks[0].url_secret_ref.name, "rollout-global-webhooks");
        assert_eq!(hooks[0].url_secret_ref.key, "slack");
        assert_eq!(hooks[0].format, WebhookFormat::Slack);
        assert_eq!(
            hooks[0].events,
            [
                NotificationKind::RollbackStarted,
                NotificationKind::RolledBack,
                NotificationKind::Failed
            ]
        );
        assert_eq!(hooks[0].timeout.as_str(), "3s");
        assert_eq!(hooks[0].attempts, 2);
        // The defaults of a rollout's webhook.
        assert_eq!(hooks[1].format, WebhookFormat::Generic);
        assert!(hooks[1].events.is_empty());
        assert_eq!(hooks[1].timeout.as_str(), "5s");
        assert_eq!(hooks[1].attempts, 4);

        let json = parse(
            r#"{"webhooks": [{"name": "audit", "urlSecretRef": {"name": "hooks", "key": "url"}}]}"#,
        )
        .unwrap();
        assert_eq!(json.len(), 1);
        assert_eq!(json[0].url_secret_ref.key, "url");
        assert_eq!(parse("webhooks: []\n").unwrap(), vec![]);
    }

    #[test]
    fn notification_config_unknown_fields_are_errors_with_their_path() {
        let e = err(
            "webhooks:\n  - name: a\n    urlSecretRef: {name: s, key: k}\n    evnets: [Failed]\n",
        );
        assert!(e.starts_with("webhooks[0]: unknown field `evnets`"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        let e = err("webhooks:\n  - name: a\n    urlSecretRef: {name: s, key: k, namespace: x}\n");
        assert!(
            e.starts_with("webhooks[0].urlSecretRef: unknown field `namespace`"),
            "{e}"
        );
        let e = err("webhook:\n  - name: a\n");
        assert!(e.contains("unknown field `webhook`"), "{e}");
    }

    #[test]
    fn notification_config_missing_fields_are_named() {
        let e = err("webhooks:\n  - name: a\n    urlSecretRef: {name: s}\n");
        assert!(
            e.starts_with("webhooks[0].urlSecretRef: missing field `key`"),
            "{e}"
        );
        let e = err("webhooks:\n  - name: a\n  - name: b\n    urlSecretRef: {name: s, key: k}\n");
        assert!(
            e.starts_with("webhooks[0]: missing field `urlSecretRef`"),
            "{e}"
        );
        let e = err("webhooks:\n  - urlSecretRef: {name: s, key: k}\n");
        assert!(e.starts_with("webhooks[0]: missing field `name`"), "{e}");
        assert!(err("").contains("empty"));
        assert!(err("# nothing yet\n").contains("empty"));
    }

    #[test]
    fn notification_config_bad_values_are_named() {
        let hook = |extra: &str| {
            err(&format!(
                "webhooks:\n  - name: ok\n    urlSecretRef: {{name: s, key: k}}\n  - name: b\n    urlSecretRef: {{name: s, key: k}}\n    {extra}\n"
            ))
        };
        let e = hook("format: Teams");
        assert!(
            e.starts_with("webhooks[1].format: unknown variant `Teams`"),
            "{e}"
        );
        assert!(e.contains("`Generic` or `Slack`"), "{e}");
        let e = hook("events: [Promoted, RolledBak]");
        assert!(
            e.starts_with("webhooks[1].events[1]: unknown variant `RolledBak`"),
            "{e}"
        );
        assert_eq!(
            hook("timeout: 5 seconds"),
            "webhooks[1].timeout: invalid duration \"5 seconds\": expected e.g. 30s, 5m, 1h30m, 7d"
        );
        assert_eq!(
            hook("timeout: 0s"),
            "webhooks[1].timeout: must be more than 0"
        );
        assert_eq!(
            hook("attempts: 0"),
            "webhooks[1].attempts: 0 is not between 1 and 10"
        );
        assert_eq!(
            hook("attempts: 11"),
            "webhooks[1].attempts: 11 is not between 1 and 10"
        );
        let e = hook("attempts: -1");
        assert!(
            e.starts_with("webhooks[1].attempts: invalid type: integer `-1`, expected u32"),
            "{e}"
        );

        assert_eq!(
            err("webhooks:\n  - name: a\n    urlSecretRef: {name: s, key: k}\n  - name: a\n    urlSecretRef: {name: t, key: k}\n"),
            "webhooks[1].name: \"a\" is also the name of webhooks[0]"
        );
        assert_eq!(
            err("webhooks:\n  - name: ''\n    urlSecretRef: {name: s, key: k}\n"),
            "webhooks[0].name: \"\" must be 1 to 63 characters"
        );
        assert!(
            err("webhooks:\n  - name: a\n    urlSecretRef: {name: Rollout_Hooks, key: k}\n")
                .starts_with(
                    "webhooks[0].urlSecretRef.name: \"Rollout_Hooks\" is not a Secret name"
                ),
        );
        assert!(
            err("webhooks:\n  - name: a\n    urlSecretRef: {name: hooks, key: 'a/b'}\n")
                .starts_with("webhooks[0].urlSecretRef.key: \"a/b\" is not a Secret key"),
        );
    }

    /// The chart's ci values (`notifications.webhooks`, rendered verbatim into the ConfigMap the
    /// operator reads, as scripts/check-charts.sh asserts) are a file this parser accepts.
    #[test]
    fn notification_config_of_the_chart_ci_values_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/embedding-rollout-operator/ci/all-on-values.yaml"
        );
        let values: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let file = serde_yaml::to_string(&values["notifications"]).unwrap();
        let hooks = parse(&file).unwrap();
        assert!(!hooks.is_empty(), "{file}");
    }
}

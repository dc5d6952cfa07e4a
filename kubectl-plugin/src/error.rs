//! What can go wrong, said for people, and the exit code of each.

use embedding_rollout_operator::decision::Command;

/// Exit codes, also listed in `--help` and the README, so scripts can tell the failures apart.
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything not listed below (an object that does not decode, a failed write of stdout).
    pub const OTHER: i32 = 1;
    // 2: bad command line, clap's own code.
    pub const NOT_FOUND: i32 = 3;
    pub const CRD_MISSING: i32 = 4;
    /// 403 Forbidden or 401 Unauthorized.
    pub const FORBIDDEN: i32 = 5;
    pub const UNREACHABLE: i32 = 6;
    /// The command makes no sense in the rollout's phase (and `--force` was not given).
    pub const REFUSED: i32 = 7;
    /// `watch --timeout` elapsed before a terminal phase.
    pub const TIMEOUT: i32 = 8;
    /// No usable kubeconfig / context.
    pub const CONFIG: i32 = 9;
    /// Ctrl-C during `watch` (the shell convention, 128 + SIGINT).
    pub const INTERRUPTED: i32 = 130;
}

/// The table printed by `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    other error
  2    bad command line
  3    rollout not found
  4    the EmbeddingRollout CRD is not installed
  5    not allowed (403 Forbidden: the RBAC verb is named; or 401 Unauthorized)
  6    API server unreachable
  7    command refused for the rollout's current phase (override with --force)
  8    watch --timeout elapsed before the rollout ended
  9    no usable kubeconfig or context
  130  watch interrupted (Ctrl-C)";

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("embeddingrollout {name:?} not found in namespace {namespace:?}")]
    NotFound { name: String, namespace: String },
    #[error(
        "the EmbeddingRollout CRD is not installed on {server} (no embeddingrollouts in \
         rollout.akidb.io/v1alpha1); kubectl apply --server-side -f crds/"
    )]
    CrdMissing { server: String },
    #[error("you may not {verb} embeddingrollouts.rollout.akidb.io {scope} (the API server said: {message})")]
    Forbidden {
        verb: String,
        /// `in production` or `in any namespace`.
        scope: String,
        message: String,
    },
    #[error("the API server at {server} refused the credentials (401 Unauthorized): {message}")]
    Unauthorized { server: String, message: String },
    #[error("cannot reach the API server at {server}: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("refusing to {command} {name}: {reason} (--force sends it anyway)")]
    Refused {
        command: Command,
        name: String,
        reason: String,
    },
    #[error("{name} is still {phase} after {after} (watch --timeout)")]
    Timeout {
        name: String,
        phase: String,
        after: String,
    },
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

impl PluginError {
    pub fn exit_code(&self) -> i32 {
        match self {
            PluginError::NotFound { .. } => exit::NOT_FOUND,
            PluginError::CrdMissing { .. } => exit::CRD_MISSING,
            PluginError::Forbidden { .. } | PluginError::Unauthorized { .. } => exit::FORBIDDEN,
            PluginError::Unreachable { .. } => exit::UNREACHABLE,
            PluginError::Refused { .. } => exit::REFUSED,
            PluginError::Timeout { .. } => exit::TIMEOUT,
            PluginError::Config(_) => exit::CONFIG,
            PluginError::Interrupted => exit::INTERRUPTED,
            PluginError::Other(_) => exit::OTHER,
        }
    }
}

/// An error and its sources on one line (kube's errors keep the useful part in the sources).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_own_documented_code() {
        let errors = [
            PluginError::NotFound {
                name: "a".into(),
                namespace: "b".into(),
            },
            PluginError::CrdMissing { server: "s".into() },
            PluginError::Forbidden {
                verb: "patch".into(),
                scope: "in production".into(),
                message: "m".into(),
            },
            PluginError::Unreachable {
                server: "s".into(),
                detail: "d".into(),
            },
            PluginError::Refused {
                command: Command::Retry,
                name: "a".into(),
                reason: "r".into(),
            },
            PluginError::Timeout {
                name: "a".into(),
                phase: "Progressing".into(),
                after: "1s".into(),
            },
            PluginError::Config("c".into()),
            PluginError::Interrupted,
            PluginError::Other("o".into()),
        ];
        let mut codes: Vec<i32> = errors.iter().map(PluginError::exit_code).collect();
        for code in &codes {
            assert!(
                EXIT_CODES_HELP
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "exit code {code} is not in the --help table"
            );
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len(), "exit codes must be distinct");
    }

    #[test]
    fn forbidden_names_the_verb_and_the_resource() {
        let e = PluginError::Forbidden {
            verb: "patch".into(),
            scope: "in production".into(),
            message: "nope".into(),
        };
        assert!(e
            .to_string()
            .starts_with("you may not patch embeddingrollouts.rollout.akidb.io in production"));
    }
}

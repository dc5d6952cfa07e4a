//! Which manual command makes sense in which phase, and what the rollout does after it.
//!
//! Mirrors the operator's handling (operator/README.md "Manual control"): a command the operator
//! would ignore with a `CommandIgnored` event is refused here, before it is written, so the user
//! learns it at once instead of from an event later.

use embedding_rollout_operator::crd::{EmbeddingRollout, Phase};
use embedding_rollout_operator::decision::Command;

/// What the plugin knows of a rollout when judging a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// `None`: the operator has not written a status yet (it starts as Pending).
    pub phase: Phase,
    pub manual_pause: bool,
    pub spec_paused: bool,
    /// 0-based, as in the status.
    pub current_step: usize,
    pub steps: usize,
}

impl State {
    pub fn of(r: &EmbeddingRollout) -> Self {
        let status = r.status.clone().unwrap_or_default();
        State {
            phase: status.phase,
            manual_pause: status.manual_pause,
            spec_paused: r.spec.paused,
            current_step: status.current_step as usize,
            steps: r.spec.steps.len(),
        }
    }
}

/// `Err(reason)` when the command would be ignored (or do nothing) in this state.
pub fn check(cmd: Command, s: &State) -> Result<(), String> {
    use Phase::*;
    let phase = s.phase;
    match cmd {
        Command::Pause => match phase {
            Pending | Deploying | Progressing | Paused if s.manual_pause => {
                Err("it is already paused by a pause command".into())
            }
            Pending | Deploying | Progressing | Paused => Ok(()),
            _ => Err(format!(
                "it is {phase}: there is no traffic step to hold (pause works in Pending, Deploying, Progressing)"
            )),
        },
        Command::Resume => {
            if s.manual_pause {
                Ok(())
            } else if s.spec_paused {
                Err("it is paused by spec.paused, which resume does not change: set spec.paused to false".into())
            } else {
                Err(format!("it is not paused (phase {phase})"))
            }
        }
        Command::Promote | Command::PromoteFull => match phase {
            Progressing | Paused => Ok(()),
            _ => Err(format!(
                "it is {phase}: promotion needs a candidate serving canary traffic (Progressing or Paused)"
            )),
        },
        Command::Abort => match phase {
            RollingBack | RolledBack | Failed => {
                Err(format!("it is {phase}: nothing to abort, traffic is on the baseline"))
            }
            _ => Ok(()),
        },
        Command::Retry => match phase {
            RolledBack | Failed => Ok(()),
            _ => Err(format!(
                "it is {phase}: only a RolledBack or Failed rollout can be retried"
            )),
        },
    }
}

/// What the operator will do once it reads the command (its next reconcile, within seconds).
pub fn next(cmd: Command, r: &EmbeddingRollout) -> String {
    let s = State::of(r);
    let step = |i: usize| {
        let weight = r.spec.steps.get(i).map(|st| st.weight).unwrap_or(0);
        format!("step {}/{} at {weight}%", i + 1, s.steps)
    };
    let deadline = r.spec.rollback_deadline.to_string();
    match cmd {
        Command::Pause => format!(
            "the rollout holds {} (analysis and rollback triggers keep running); `resume` continues",
            if matches!(s.phase, Phase::Pending | Phase::Deploying) {
                "before the first step and sends the candidate no traffic".to_string()
            } else {
                step(s.current_step)
            }
        ),
        Command::Resume => {
            if s.spec_paused {
                "the pause command is cleared, but spec.paused is true and still holds the rollout".into()
            } else {
                format!("the rollout continues from {}", step(s.current_step))
            }
        }
        Command::Promote if s.current_step + 1 < s.steps => format!(
            "the rollout moves to {} now, without waiting for the soak or the analysis",
            step(s.current_step + 1)
        ),
        Command::Promote | Command::PromoteFull => {
            "the rollout promotes now: the candidate scales to its full replicas, the primary Ingress switches to it and the canary is removed".into()
        }
        Command::Abort => match s.phase {
            Phase::Promoted | Phase::Decommissioned => format!(
                "the baseline is scaled back up and the primary Ingress returns to it; the operator rolls back within rollbackDeadline ({deadline})"
            ),
            _ => format!(
                "traffic returns to the baseline; the operator rolls back within rollbackDeadline ({deadline})"
            ),
        },
        Command::Retry => format!(
            "a new rollout starts: the candidate is redeployed, then {}",
            step(0)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(phase: Phase) -> State {
        State {
            phase,
            manual_pause: false,
            spec_paused: false,
            current_step: 0,
            steps: 2,
        }
    }

    const ALL_COMMANDS: [Command; 6] = Command::ALL;

    /// The whole table: for each phase, the commands accepted when not paused.
    #[test]
    fn commands_against_every_phase() {
        use Command::*;
        let expected: [(Phase, &[Command]); 10] = [
            (Phase::Pending, &[Pause, Abort]),
            (Phase::Deploying, &[Pause, Abort]),
            (Phase::Progressing, &[Pause, Promote, PromoteFull, Abort]),
            (Phase::Paused, &[Pause, Promote, PromoteFull, Abort]),
            (Phase::Promoting, &[Abort]),
            (Phase::Promoted, &[Abort]),
            (Phase::Decommissioned, &[Abort]),
            (Phase::RollingBack, &[]),
            (Phase::RolledBack, &[Retry]),
            (Phase::Failed, &[Retry]),
        ];
        for (phase, accepted) in expected {
            for cmd in ALL_COMMANDS {
                let got = check(cmd, &state(phase));
                assert_eq!(
                    got.is_ok(),
                    accepted.contains(&cmd),
                    "{cmd} in {phase}: {got:?}"
                );
                if let Err(reason) = got {
                    assert!(!reason.is_empty());
                }
            }
        }
    }

    #[test]
    fn pause_and_resume_follow_the_pause_flags() {
        let paused = State {
            manual_pause: true,
            ..state(Phase::Paused)
        };
        assert!(check(Command::Resume, &paused).is_ok());
        let err = check(Command::Pause, &paused).unwrap_err();
        assert!(err.contains("already paused"), "{err}");
        let by_spec = State {
            spec_paused: true,
            ..state(Phase::Paused)
        };
        let err = check(Command::Resume, &by_spec).unwrap_err();
        assert!(err.contains("spec.paused"), "{err}");
        let err = check(Command::Resume, &state(Phase::Progressing)).unwrap_err();
        assert!(err.contains("not paused"), "{err}");
        let err = check(Command::Retry, &state(Phase::Progressing)).unwrap_err();
        assert!(err.contains("RolledBack or Failed"), "{err}");
    }

    fn rollout(status: serde_json::Value) -> EmbeddingRollout {
        serde_json::from_value(json!({
            "apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout",
            "metadata": {"name": "embed"},
            "spec": {"baseline": {"deployment": "mlx", "service": "mlx"},
                     "candidate": {"image": "c:1"}, "ingress": {"name": "embed"},
                     "steps": [{"weight": 25, "duration": "1m"}, {"weight": 100, "duration": "1m"}],
                     "rollbackDeadline": "5m"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn next_says_what_happens() {
        let first = rollout(json!({"phase": "Progressing", "currentStep": 0}));
        assert_eq!(
            next(Command::Abort, &first),
            "traffic returns to the baseline; the operator rolls back within rollbackDeadline (5m)"
        );
        assert!(next(Command::Promote, &first).contains("step 2/2 at 100%"));
        let last = rollout(json!({"phase": "Progressing", "currentStep": 1}));
        assert!(next(Command::Promote, &last).contains("promotes now"));
        assert!(next(Command::PromoteFull, &first).contains("promotes now"));
        let failed = rollout(json!({"phase": "RolledBack", "currentStep": 1}));
        assert!(next(Command::Retry, &failed).contains("step 1/2 at 25%"));
        let pending = rollout(json!({"phase": "Pending"}));
        assert!(next(Command::Pause, &pending).contains("no traffic"));
        let promoted = rollout(json!({"phase": "Promoted", "currentStep": 1}));
        assert!(next(Command::Abort, &promoted).contains("baseline is scaled back up"));
    }
}

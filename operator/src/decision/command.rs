//! Manual commands from the `rollout.akidb.io/command` annotation.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Pause,
    Resume,
    /// Next step now, without waiting for the soak or the analysis.
    Promote,
    /// Straight to promotion.
    PromoteFull,
    /// Roll back now.
    Abort,
    /// Start a new rollout from step 0 after RolledBack or Failed.
    Retry,
}

impl Command {
    /// Every command, in the order the docs list them.
    pub const ALL: [Command; 6] = [
        Command::Pause,
        Command::Resume,
        Command::Promote,
        Command::PromoteFull,
        Command::Abort,
        Command::Retry,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command {0:?} in rollout.akidb.io/command (expected pause, resume, promote, promote-full, abort or retry)")]
pub struct UnknownCommand(pub String);

impl FromStr for Command {
    type Err = UnknownCommand;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "promote-full" => Command::PromoteFull,
            "abort" => Command::Abort,
            "retry" => Command::Retry,
            _ => return Err(UnknownCommand(s.to_string())),
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Promote => "promote",
            Command::PromoteFull => "promote-full",
            Command::Abort => "abort",
            Command::Retry => "retry",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command_and_round_trips() {
        for c in Command::ALL {
            assert_eq!(c.to_string().parse::<Command>(), Ok(c));
        }
        assert_eq!(" Abort ".parse::<Command>(), Ok(Command::Abort));
        assert!("rollback".parse::<Command>().is_err());
    }
}

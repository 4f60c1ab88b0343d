use std::fmt;

use serde::{Deserialize, Serialize};

/// The lifecycle state of a workspace's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// Disks and configuration exist; no VM process.
    Prepared,
    /// The VMM is starting and the guest is booting.
    Starting,
    /// The guest is up and its exec service answers.
    Running,
    /// vCPUs are paused.
    Paused,
    /// A shutdown is in progress.
    Stopping,
    /// The guest shut down cleanly; its disk is kept.
    Halted,
    /// The VM was stopped (possibly forcibly); its disk is kept.
    Stopped,
    /// Something went wrong; the detail of the event says what.
    Failed,
    /// The state could not be determined (e.g. a record from a newer version).
    #[serde(other)]
    Unknown,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 9] = [
        State::Prepared,
        State::Starting,
        State::Running,
        State::Paused,
        State::Stopping,
        State::Halted,
        State::Stopped,
        State::Failed,
        State::Unknown,
    ];

    /// The wire name of this state.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Prepared => "prepared",
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Halted => "halted",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Unknown => "unknown",
        }
    }

    /// Whether `start` may be issued from this state.
    pub fn can_start(self) -> bool {
        matches!(
            self,
            State::Prepared | State::Halted | State::Stopped | State::Failed
        )
    }

    /// Whether a VM process is expected to exist in this state.
    pub fn has_vm(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Paused | State::Stopping
        )
    }

    /// Whether moving from `self` to `to` is a legal transition.
    ///
    /// Any state may move to `failed` (a VMM can crash at any time) and to
    /// itself (idempotent records).
    pub fn can_transition_to(self, to: State) -> bool {
        use State::*;
        if to == Failed || to == self {
            return true;
        }
        match (self, to) {
            (Prepared | Halted | Stopped | Failed, Starting) => true,
            (Starting, Running | Stopping | Stopped) => true,
            (Running, Paused | Stopping | Halted | Stopped) => true,
            (Paused, Running | Stopping | Stopped) => true,
            (Stopping, Halted | Stopped) => true,
            // A record whose state we cannot read can only be cleaned up.
            (Unknown, Stopped) => true,
            _ => false,
        }
    }

    /// Checks a transition, returning an error that names both states.
    pub fn transition(self, to: State) -> Result<State, TransitionError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The current state.
    pub from: State,
    /// The requested state.
    pub to: State,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_from_resting_states() {
        for s in State::ALL {
            let expected = matches!(
                s,
                State::Prepared | State::Halted | State::Stopped | State::Failed
            );
            assert_eq!(s.can_start(), expected, "{s}");
            if s != State::Starting {
                assert_eq!(s.can_transition_to(State::Starting), expected, "{s}");
            }
        }
    }

    #[test]
    fn illegal_transition_names_both_states() {
        let err = State::Running.transition(State::Prepared).unwrap_err();
        assert_eq!(err.to_string(), "cannot go from running to prepared");
    }

    #[test]
    fn unknown_states_parse_as_unknown() {
        let s: State = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(s, State::Unknown);
    }
}

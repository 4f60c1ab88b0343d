//! Pause and resume: the VMM stops the guest's vCPUs (no host CPU used)
//! and keeps memory, devices and connections; the record says `paused` so
//! `exec` refuses with the remedy instead of hanging on a frozen guest.

use std::time::Duration;

use vmkit_protocol::{ErrorCode, Event, ProtocolError, State};

use crate::workspace::Workspace;

impl Workspace<'_> {
    /// Moves a running workspace to `paused` (or a paused one back to
    /// `running`). Asking for the state it is already in is not an error.
    pub(crate) fn set_paused(&mut self, paused: bool) -> Result<Event, ProtocolError> {
        let (from, to, verb) = if paused {
            (State::Running, State::Paused, "pause")
        } else {
            (State::Paused, State::Running, "resume")
        };
        if self.record.state == to {
            return Ok(Event::now(
                self.locked.identity.clone(),
                to,
                format!("already {to}"),
            ));
        }
        if self.record.state != from {
            return Err(ProtocolError::new(
                ErrorCode::InvalidState,
                format!(
                    "cannot {verb} {:?}: it is {} ({verb} works on a {from} workspace)",
                    self.record.name, self.record.state
                ),
            ));
        }
        self.locked
            .lifecycle
            .machine()
            .set_paused(self.paths(), paused)?;
        let detail = if paused {
            "vCPUs stopped; memory and connections kept"
        } else {
            "vCPUs running again"
        };
        self.transition(to, detail)
    }

    /// Before a clean shutdown of a paused VM: lets its vCPUs run so the
    /// guest can power off. If that fails the shutdown can only be a kill,
    /// so the grace becomes zero.
    pub(crate) fn unpause_for_shutdown(&self, grace: Duration) -> Duration {
        if self.record.state != State::Paused || grace.is_zero() {
            return grace;
        }
        match self
            .locked
            .lifecycle
            .machine()
            .set_paused(self.paths(), false)
        {
            Ok(()) => grace,
            Err(e) => {
                tracing::warn!(
                    "resuming {:?} for shutdown: {}",
                    self.record.name,
                    e.message
                );
                Duration::ZERO
            }
        }
    }
}

//! Pause and resume: the VMM stops the guest's vCPUs (no host CPU used)
//! and keeps memory, devices and connections; the record says `paused` so
//! `exec` refuses with the remedy instead of hanging on a frozen guest.

use std::time::Duration;

use vmkit_protocol::{ErrorCode, Event, Identity, ProtocolError, State};
use vmkit_state::{StateStore, WorkspaceLock, WorkspaceRecord};

use crate::lifecycle::Lifecycle;
use crate::paths::WorkspacePaths;

impl Lifecycle {
    /// Moves a running workspace to `paused` (or a paused one back to
    /// `running`). Asking for the state it is already in is not an error.
    pub(crate) fn set_paused_locked(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
        identity: &Identity,
        paused: bool,
    ) -> Result<Event, ProtocolError> {
        let mut record = self.load(store, lock)?;
        self.reconcile(store, lock, &mut record)?;
        let (from, to, verb) = if paused {
            (State::Running, State::Paused, "pause")
        } else {
            (State::Paused, State::Running, "resume")
        };
        if record.state == to {
            return Ok(Event::now(identity.clone(), to, format!("already {to}")));
        }
        if record.state != from {
            return Err(ProtocolError::new(
                ErrorCode::InvalidState,
                format!(
                    "cannot {verb} {:?}: it is {} ({verb} works on a {from} workspace)",
                    record.name, record.state
                ),
            ));
        }
        let paths = Self::paths(store, &record.name)?;
        self.machine().set_paused(&paths, paused)?;
        let detail = if paused {
            "vCPUs stopped; memory and connections kept"
        } else {
            "vCPUs running again"
        };
        self.transition(store, lock, &mut record, identity, to, detail)
    }

    /// Before a clean shutdown of a paused VM: lets its vCPUs run so the
    /// guest can power off. If that fails the shutdown can only be a kill,
    /// so the grace becomes zero.
    pub(crate) fn unpause_for_shutdown(
        &self,
        record: &WorkspaceRecord,
        paths: &WorkspacePaths,
        grace: Duration,
    ) -> Duration {
        if record.state != State::Paused || grace.is_zero() {
            return grace;
        }
        match self.machine().set_paused(paths, false) {
            Ok(()) => grace,
            Err(e) => {
                tracing::warn!("resuming {:?} for shutdown: {}", record.name, e.message);
                Duration::ZERO
            }
        }
    }
}

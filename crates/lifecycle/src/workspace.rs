//! One workspace held under its lock: the type every lifecycle command
//! works on.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use vmkit_protocol::{ErrorCode, Event, Identity, ProtocolError, State};
use vmkit_state::{LockWait, ProcessRecord, StateStore, WorkspaceLock, WorkspaceRecord};

use crate::lifecycle::{Lifecycle, LOCK_WAIT};
use crate::paths::WorkspacePaths;
use crate::process::terminate;

/// A workspace's lock, held: nothing else changes its record meanwhile.
/// Becomes a [`Workspace`] once its record is loaded ([`Locked::open`]) or
/// created (`Locked::prepare`).
pub(crate) struct Locked<'l> {
    pub(crate) lifecycle: &'l Lifecycle,
    pub(crate) store: StateStore,
    pub(crate) lock: WorkspaceLock,
    pub(crate) identity: Identity,
    pub(crate) paths: WorkspacePaths,
}

/// A locked workspace with its record: what `start`, `run`, `halt` and the
/// rest change, one transition at a time.
pub(crate) struct Workspace<'l> {
    pub(crate) locked: Locked<'l>,
    pub(crate) record: WorkspaceRecord,
}

impl Lifecycle {
    /// Locks `identity`'s workspace in `state_dir`, waiting up to the lock
    /// timeout for another command to finish with it.
    pub(crate) fn lock(
        &self,
        state_dir: &Path,
        identity: &Identity,
    ) -> Result<Locked<'_>, ProtocolError> {
        self.lock_with(state_dir, identity, LockWait::Timeout(LOCK_WAIT))
    }

    pub(crate) fn lock_with(
        &self,
        state_dir: &Path,
        identity: &Identity,
        wait: LockWait,
    ) -> Result<Locked<'_>, ProtocolError> {
        let store = StateStore::open(state_dir).map_err(state_err)?;
        let lock = store.lock(&identity.runtime_id, wait).map_err(state_err)?;
        let paths = WorkspacePaths::new(
            &store
                .workspace_dir(&identity.runtime_id)
                .map_err(state_err)?,
        )?;
        Ok(Locked {
            lifecycle: self,
            store,
            lock,
            identity: identity.clone(),
            paths,
        })
    }

    /// Locks and opens an existing workspace, brought in line with reality.
    pub(crate) fn open(
        &self,
        state_dir: &Path,
        identity: &Identity,
    ) -> Result<Workspace<'_>, ProtocolError> {
        let mut ws = self.lock(state_dir, identity)?.open()?;
        ws.reconcile()?;
        Ok(ws)
    }
}

impl<'l> Locked<'l> {
    /// Loads the record; `not-found` when there is none.
    pub(crate) fn open(self) -> Result<Workspace<'l>, ProtocolError> {
        let record = self.store.load(&self.lock).map_err(state_err)?;
        let record = record.ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::NotFound,
                format!("workspace {:?} does not exist", self.lock.name()),
            )
        })?;
        Ok(Workspace {
            locked: self,
            record,
        })
    }

    /// Records `state` as an event (log and observer) without changing the
    /// record.
    pub(crate) fn emit(&self, state: State, detail: &str) -> Event {
        let event = Event::now(self.identity.clone(), state, detail);
        if let Err(e) = self
            .store
            .events(&self.identity.runtime_id)
            .and_then(|log| log.append(&event))
        {
            tracing::warn!("recording event: {e}");
        }
        if let Some(observer) = &self.lifecycle.observer {
            observer(&event);
        }
        event
    }
}

impl Workspace<'_> {
    pub(crate) fn paths(&self) -> &WorkspacePaths {
        &self.locked.paths
    }

    /// Saves the record as it is now.
    pub(crate) fn save(&self) -> Result<(), ProtocolError> {
        self.locked
            .store
            .save(&self.locked.lock, &self.record)
            .map_err(state_err)
    }

    /// Moves the record to `to`, saving it and recording the event. Leaving
    /// the VM states forgets the VM's processes.
    pub(crate) fn transition(&mut self, to: State, detail: &str) -> Result<Event, ProtocolError> {
        self.record.state.transition(to).map_err(|e| {
            ProtocolError::new(
                ErrorCode::InvalidState,
                format!("workspace {:?}: {e}", self.record.name),
            )
        })?;
        self.record.state = to;
        self.record.updated_at = Utc::now();
        if !to.has_vm() {
            self.record.vmm = None;
            self.record.helpers.clear();
            self.record.owner = None;
            self.record.exec_port = None;
        }
        self.save()?;
        Ok(self.locked.emit(to, detail))
    }

    /// Brings the record in line with reality: a VM state whose VMM is gone,
    /// or whose driving `run` command died, becomes `failed`, and whatever
    /// processes remain are killed. Returns whether anything changed.
    pub(crate) fn reconcile(&mut self) -> Result<bool, ProtocolError> {
        if !self.record.state.has_vm() {
            return Ok(false);
        }
        let vmm_alive = self.record.vmm.is_some_and(|p| p.is_alive());
        let owner_dead = self.record.owner.is_some_and(|p| !p.is_alive());
        if vmm_alive && !owner_dead {
            return Ok(false);
        }
        let detail = if owner_dead {
            "the microagent command driving this VM died; its processes were cleaned up"
        } else {
            "the VMM exited unexpectedly"
        };
        terminate(&self.processes(), Duration::ZERO);
        remove_vm_files(self.paths());
        self.transition(State::Failed, detail)?;
        Ok(true)
    }

    /// The VMM and its helpers, as recorded.
    pub(crate) fn processes(&self) -> Vec<ProcessRecord> {
        let mut procs: Vec<ProcessRecord> = self.record.vmm.into_iter().collect();
        procs.extend(self.record.helpers.iter().copied());
        procs
    }

    /// The port the guest's exec service listens on, as it announced.
    pub(crate) fn exec_port(&self) -> u32 {
        // Records written before the guest's announcement was kept have
        // none; their guests listen on the default.
        self.record
            .exec_port
            .unwrap_or(vmkit_channel::DEFAULT_EXEC_PORT)
    }

    /// Refuses unless the workspace is in `state`, saying what to do.
    pub(crate) fn require(&self, state: State, remedy: &str) -> Result<(), ProtocolError> {
        if self.record.state == state {
            return Ok(());
        }
        Err(ProtocolError::new(
            ErrorCode::InvalidState,
            format!(
                "workspace {:?} is {}; {remedy}",
                self.record.name, self.record.state
            ),
        ))
    }
}

pub(crate) fn state_err(e: vmkit_state::StateError) -> ProtocolError {
    use vmkit_state::StateError as S;
    let code = match &e {
        S::Busy { .. } => ErrorCode::Busy,
        S::NotFound { .. } => ErrorCode::NotFound,
        S::AlreadyExists { .. } => ErrorCode::AlreadyExists,
        S::InvalidName(_) => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    };
    ProtocolError::new(code, e.to_string())
}

pub(crate) fn guest_err(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::GuestFailure, message)
}

/// Removes what only a running VM needs, once its processes are gone: the
/// channel's sockets and the guest RAM file (see [`remove_stale_vm_files`]),
/// and a TAP device a killed network helper left behind.
pub(crate) fn remove_vm_files(paths: &WorkspacePaths) {
    remove_stale_vm_files(paths);
    crate::network::remove_leftover_tap(paths);
}

/// Before a launch: the channel's sockets and the guest RAM file a VMM may
/// keep (QEMU; snapshots hold their own copies). Not the TAP: the network
/// helper, started already, has just made it for the VMM.
pub(crate) fn remove_stale_vm_files(paths: &WorkspacePaths) {
    let _ = std::fs::remove_file(&paths.vsock);
    crate::guest_memory::remove_memory_file(paths);
    crate::vmm_files::remove_guest_listeners(&paths.vsock);
}

/// Appends the console's last lines: a boot failure is unreadable without them.
pub(crate) fn with_console_tail(error: ProtocolError, paths: &WorkspacePaths) -> ProtocolError {
    with_log_tail(error, "console", &paths.console_log)
}

/// Appends the VMM log's last lines: when the VMM itself gave up (a disk it
/// could not open, memory it could not map), its reason is there.
pub(crate) fn with_vmm_log_tail(error: ProtocolError, paths: &WorkspacePaths) -> ProtocolError {
    with_log_tail(error, "vmm.log", &paths.vmm_log)
}

fn with_log_tail(mut error: ProtocolError, label: &str, log: &std::path::Path) -> ProtocolError {
    let text = crate::vmm_files::read_console(log);
    if !text.is_empty() {
        // Guest-provoked text, on its way to a terminal: no escapes.
        let text = vmkit_protocol::terminal_safe_bytes(&text[text.len().saturating_sub(4096)..]);
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        if !tail.is_empty() {
            error.message.push_str(&format!("\nlast {label} lines:\n"));
            for line in tail.iter().rev() {
                error.message.push_str("  ");
                error.message.push_str(line);
                error.message.push('\n');
            }
        }
    }
    error
}

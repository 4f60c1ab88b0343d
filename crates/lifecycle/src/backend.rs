//! The protocol's [`Backend`] over the lifecycle: one method per command.

use std::path::Path;

use vmkit_channel::Mode;
use vmkit_protocol::{
    Backend, BackendKind, ErrorCode, Event, HostInfo, Identity, Outcome, ProtocolError, Request,
    State,
};

use crate::lifecycle::{Lifecycle, HALT_GRACE, STOP_GRACE};
use crate::workspace::{state_err, Workspace};

fn state_dir(request: &Request) -> Result<&Path, ProtocolError> {
    request
        .state_dir()
        .map(Path::new)
        .ok_or_else(|| ProtocolError::invalid("stateDir is required"))
}

fn event_outcome(event: Event) -> Outcome {
    Outcome {
        event: Some(event),
        ..Outcome::default()
    }
}

impl Lifecycle {
    fn open_for(&self, request: &Request) -> Result<Workspace<'_>, ProtocolError> {
        self.open(state_dir(request)?, &request.identity)
    }
}

impl Backend for Lifecycle {
    fn kind(&self) -> BackendKind {
        self.machine.kind()
    }

    fn host(&self) -> Result<HostInfo, ProtocolError> {
        Ok(self.machine.host())
    }

    fn check(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let config = request
            .config
            .as_ref()
            .ok_or_else(|| ProtocolError::invalid("check needs config"))?;
        self.machine.check(config)?;
        Ok(Outcome {
            host: Some(self.machine.host()),
            ..Outcome::default()
        })
    }

    fn prepare(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        // A fork takes its machine and disk from the snapshot.
        let request = &self.fork_request(request)?;
        let locked = self.lock(state_dir(request)?, &request.identity)?;
        let (_, event) = locked.prepare(request, true)?;
        Ok(event_outcome(event))
    }

    fn start(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let mut ws = self.open_for(request)?;
        if !ws.record.state.can_start() {
            return Err(ProtocolError::new(
                ErrorCode::InvalidState,
                format!(
                    "cannot start {:?}: it is {} (start works from prepared, halted, stopped or failed)",
                    ws.record.name, ws.record.state
                ),
            ));
        }
        // The config given now (memory, disks) replaces the recorded one,
        // except for the disk, which is the workspace's own.
        if let Some(config) = &request.config {
            let disk = ws.record.config.rootfs_path.clone();
            ws.record.config = config.clone();
            ws.record.config.rootfs_path = disk;
        }
        let restore = match &request.from_snapshot {
            Some(from) => ws.restore_source(from)?,
            None => None,
        };
        let booted = ws.boot(Mode::Workspace, true, restore)?;
        // The VM outlives this command; dropping the handles does not kill
        // it (it is in its own session) and its exit is reaped by whoever
        // inherits it.
        drop(booted);
        let event = Event::now(
            request.identity.clone(),
            State::Running,
            "exec service ready",
        );
        Ok(event_outcome(event))
    }

    fn run(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        // The one-response form cannot stream, so output is discarded; the
        // CLI and library callers use `run_streaming`.
        let output =
            self.run_streaming(request, false, &mut std::io::sink(), &mut std::io::sink())?;
        Ok(Outcome {
            event: Some(Event::now(
                request.identity.clone(),
                State::Stopped,
                "run finished",
            )),
            result: Some(output.result),
            host: None,
            snapshots: None,
        })
    }

    fn inspect(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let ws = self.open_for(request)?;
        let event = Event::now(request.identity.clone(), ws.record.state, "inspected");
        Ok(event_outcome(event))
    }

    fn halt(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let mut ws = self.open_for(request)?;
        ws.halt(HALT_GRACE, State::Halted).map(event_outcome)
    }

    fn stop(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let mut ws = self.open_for(request)?;
        ws.halt(STOP_GRACE, State::Stopped).map(event_outcome)
    }

    fn kill(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let mut ws = self.open_for(request)?;
        ws.halt(std::time::Duration::ZERO, State::Stopped)
            .map(event_outcome)
    }

    fn delete(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let ws = self.open_for(request)?;
        if ws.record.state.has_vm() {
            return Err(ProtocolError::new(
                ErrorCode::InvalidState,
                format!(
                    "workspace {:?} is {}; stop it first (or delete --force)",
                    ws.record.name, ws.record.state
                ),
            ));
        }
        ws.locked.store.remove(&ws.locked.lock).map_err(state_err)?;
        Ok(Outcome::default())
    }

    fn pause(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let mut ws = self.open_for(request)?;
        ws.set_paused(true).map(event_outcome)
    }

    fn resume(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let mut ws = self.open_for(request)?;
        ws.set_paused(false).map(event_outcome)
    }

    fn snapshot(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let spec = request
            .snapshot
            .as_ref()
            .ok_or_else(|| ProtocolError::invalid("command snapshot needs snapshot"))?;
        let mut ws = self.open_for(request)?;
        Ok(Outcome {
            snapshots: Some(ws.snapshot(spec)?),
            ..Outcome::default()
        })
    }
}

/// The identity under which background work (gc) records its events.
pub(crate) fn identity_of(
    name: &str,
    keep: bool,
    backend: BackendKind,
    request_id: &str,
) -> Identity {
    Identity {
        request_id: request_id.into(),
        runtime_id: name.to_owned(),
        role: if keep { "workspace" } else { "run" }.into(),
        backend,
    }
}

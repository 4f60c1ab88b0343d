//! `exec`: a command in a running workspace, through the exec port its
//! guest announced.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use vmkit_channel::host::ExecClient;
use vmkit_protocol::{Identity, ProtocolError, RunResult, State, MAX_TIMEOUT_SECONDS};

use crate::lifecycle::{backstop, ExecOptions, Lifecycle};
use crate::workspace::guest_err;

impl Lifecycle {
    /// A client of a running workspace's exec service (for execs and
    /// copies); refuses a workspace that is not running.
    pub fn exec_client(&self, state_dir: &Path, name: &str) -> Result<ExecClient, ProtocolError> {
        // Execs run concurrently, so they take the lock only to check state.
        let identity = Identity {
            request_id: "exec".into(),
            runtime_id: name.to_owned(),
            role: "workspace".into(),
            backend: self.machine.kind(),
        };
        let ws = self.open(state_dir, &identity)?;
        let remedy = if ws.record.state == State::Paused {
            "resume"
        } else {
            "start"
        };
        ws.require(
            State::Running,
            &format!("`microagent {remedy} {name}` first"),
        )?;
        Ok(ExecClient::new(&ws.paths().vsock, ws.exec_port()))
    }

    /// Runs a command in a running workspace, streaming its output.
    pub fn exec_streaming(
        &self,
        state_dir: &Path,
        name: &str,
        options: ExecOptions,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunResult, ProtocolError> {
        let deadline = exec_deadline(options.request.timeout_ms)?;
        self.exec_client(state_dir, name)?
            .exec(
                &options.request,
                options.stdin,
                stdout,
                stderr,
                backstop(deadline),
                &options.handle,
            )
            .map_err(|e| guest_err(format!("exec in {name:?}: {e}")))
    }
}

/// An exec's own deadline, refused when absurd (the guest enforces it; the
/// host waits a little longer).
fn exec_deadline(timeout_ms: Option<u64>) -> Result<Option<Duration>, ProtocolError> {
    match timeout_ms {
        None => Ok(None),
        Some(0) => Err(ProtocolError::invalid(
            "an exec timeout must be at least 1 ms",
        )),
        Some(ms) if ms / 1000 > MAX_TIMEOUT_SECONDS => Err(ProtocolError::invalid(format!(
            "an exec timeout must be at most {MAX_TIMEOUT_SECONDS} seconds, got {}s",
            ms / 1000
        ))),
        Some(ms) => Ok(Some(Duration::from_millis(ms))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_deadlines_are_bounded() {
        assert_eq!(exec_deadline(None).unwrap(), None);
        assert!(exec_deadline(Some(0)).is_err());
        assert!(exec_deadline(Some(u64::MAX))
            .unwrap_err()
            .message
            .contains("at most"));
        assert_eq!(
            exec_deadline(Some(1500)).unwrap(),
            Some(Duration::from_millis(1500))
        );
    }
}

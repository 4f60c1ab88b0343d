//! `run`: prepare, boot, stream the workload's output, stop, and delete
//! unless kept.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use vmkit_channel::host::RunOutcome;
use vmkit_channel::{ChannelError, Mode, RunSpec};
use vmkit_protocol::{ProtocolError, Request, RunResult, State};

use crate::lifecycle::{backstop, Lifecycle, RunOutput};
use crate::process::wait_child;
use crate::workspace::{guest_err, remove_vm_files, with_console_tail, Workspace};

/// How long a kept run's guest gets to power off by itself (flushing its
/// disk) after reporting.
const POWER_OFF_WAIT: Duration = Duration::from_secs(10);

impl Lifecycle {
    /// Runs a workload once: prepare, boot, stream output to the sinks as
    /// it is produced, stop, and delete unless `keep`, which leaves the
    /// workspace `stopped` for a later `start`.
    pub fn run_streaming(
        &self,
        request: &Request,
        keep: bool,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunOutput, ProtocolError> {
        request.validate()?;
        let state_dir = request
            .state_dir()
            .ok_or_else(|| ProtocolError::invalid("stateDir is required"))?;
        let locked = self.lock(Path::new(state_dir), &request.identity)?;
        let (mut ws, _) = locked.prepare(request, keep)?;
        let outcome = ws.run(stdout, stderr);
        if !keep {
            let _ = ws.locked.store.remove(&ws.locked.lock);
        }
        outcome
    }
}

impl Workspace<'_> {
    fn run(
        &mut self,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunOutput, ProtocolError> {
        let keep = self.record.keep;
        let workload = self
            .record
            .config
            .workload
            .clone()
            .ok_or_else(|| ProtocolError::invalid("run needs config.workload"))?;
        let timeout = workload.timeout_seconds.map(Duration::from_secs);
        let timeout_ms = match timeout {
            Some(t) => Some(
                u64::try_from(t.as_millis())
                    .map_err(|_| ProtocolError::invalid("workload.timeoutSeconds is too large"))?,
            ),
            None => None,
        };
        // The host accepts setup reports only for the commands it sent.
        let setup = workload.setup.clone();
        let mode = Mode::Run(RunSpec {
            setup: workload.setup,
            exec: workload.exec,
            timeout_ms,
        });
        let mut booted = self.boot(mode, false, None)?;
        // Without a run timeout the guest runs as long as it likes; the
        // backstop then only guards against a wedged channel.
        let received = booted
            .control
            .receive_run(&setup, stdout, stderr, backstop(timeout));
        tracing::debug!("run reported");
        // A kept disk must be flushed and cleanly unmounted, so the guest
        // powers off by itself after acknowledging. A discarded one needs
        // no flush: ending the VM at once saves the guest's shutdown, which
        // is most of a short run's tail.
        let powered_off = keep && wait_child(&mut booted.launched.vmm, POWER_OFF_WAIT);
        // Killed first, reaped after: their exit runs while the files go.
        booted.launched.kill();
        remove_vm_files(self.paths());
        booted.launched.shut_down();
        let report = match received {
            Ok(report) => report,
            Err(ChannelError::Timeout(_)) => {
                let result = RunResult {
                    error: Some(format!(
                        "timed out after {}s; the VM was killed",
                        timeout.unwrap_or_default().as_secs()
                    )),
                    timed_out: true,
                    ..RunResult::default()
                };
                self.transition(State::Stopped, "killed at the run timeout")?;
                return Ok(RunOutput {
                    result,
                    setup_failed: None,
                });
            }
            Err(e) => {
                let e = with_console_tail(guest_err(format!("guest channel: {e}")), self.paths());
                self.transition(State::Failed, &e.message)?;
                return Err(e);
            }
        };
        let detail = match (keep, powered_off) {
            (false, _) => "run finished; VM discarded",
            (true, true) => "guest powered off",
            (true, false) => "guest did not power off; VMM killed",
        };
        // The guest enforces the deadline and says in the result whether
        // it killed the command for it.
        let output = match report.outcome {
            RunOutcome::Completed(result) => RunOutput {
                result,
                setup_failed: None,
            },
            RunOutcome::SetupFailed(step) => RunOutput {
                result: step.result.clone(),
                setup_failed: Some(step),
            },
        };
        self.record.last_result = Some(output.result.clone());
        self.transition(State::Stopped, detail)?;
        Ok(output)
    }
}

//! `halt`, `stop` and `kill`: ending a workspace's VM, as cleanly as the
//! grace period allows.

use std::time::Duration;

use vmkit_channel::host::ExecClient;
use vmkit_protocol::{Event, ProtocolError, State};

use crate::lifecycle::STOP_GRACE;
use crate::process::{terminate, wait_gone};
use crate::workspace::{remove_vm_files, Workspace};

/// How long to wait for the guest's exec service to take a shutdown request.
const SHUTDOWN_CONNECT: Duration = Duration::from_secs(2);
/// How long for it to acknowledge one.
const SHUTDOWN_ACK: Duration = Duration::from_secs(5);

impl Workspace<'_> {
    /// Ends the VM: asks the guest to power off (unless `grace` is zero),
    /// waits up to `grace`, then kills whatever is left. A clean power-off
    /// ends in `final_state`, anything else in `stopped`.
    pub(crate) fn halt(
        &mut self,
        grace: Duration,
        final_state: State,
    ) -> Result<Event, ProtocolError> {
        if !self.record.state.has_vm() {
            // Already down: report where it is.
            return Ok(Event::now(
                self.locked.identity.clone(),
                self.record.state,
                "no VM running",
            ));
        }
        // A paused guest cannot shut itself down: let it run for that.
        let grace = self.unpause_for_shutdown(grace);
        self.transition(State::Stopping, "shutting down")?;
        let vmm: Vec<_> = self.record.vmm.into_iter().collect();
        let mut clean = false;
        if !grace.is_zero() {
            let asked = ExecClient::new(&self.paths().vsock, self.exec_port())
                .with_connect_timeout(SHUTDOWN_CONNECT)
                .shutdown(SHUTDOWN_ACK);
            clean = asked.is_ok() && wait_gone(&vmm.iter().collect::<Vec<_>>(), grace);
        }
        let kill_grace = if clean {
            Duration::ZERO
        } else {
            STOP_GRACE.min(grace)
        };
        terminate(&self.processes(), kill_grace);
        remove_vm_files(self.paths());
        let (state, detail) = match (clean, final_state) {
            (true, State::Halted) => (State::Halted, "guest powered off"),
            (true, _) => (State::Stopped, "guest powered off"),
            (false, _) if grace.is_zero() => (State::Stopped, "VMM killed"),
            (false, _) => (
                State::Stopped,
                "guest did not power off in time; VMM killed",
            ),
        };
        self.transition(state, detail)
    }
}

//! [`Lifecycle`]: the shared lifecycle over one backend's [`Machine`].
//!
//! Every command works on one [`crate::workspace::Workspace`] (the store,
//! the held lock, the record and who asked); the commands themselves live
//! beside it: `prepare`, `boot`, `run`, `exec`, `halt`, `gc`, and the
//! protocol's [`vmkit_protocol::Backend`] in `backend`.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use vmkit_channel::{ExecRequest, SetupStep};
use vmkit_protocol::{Event, RunResult};

use crate::machine::Machine;

/// Receives every event as it is recorded (the CLI prints them with `--json`).
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// How long a second command waits for a workspace's lock before `busy`.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(120);
/// How long a guest may take from VMM start to its init connecting back.
/// TCG boots take about a second; the margin is for loaded CI machines.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a halting guest gets to power off before it is killed.
pub(crate) const HALT_GRACE: Duration = Duration::from_secs(20);
/// Grace for `stop` before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);
/// The guest's timeout kill needs SIGTERM grace plus reporting time; the
/// host's backstop waits this much longer before killing the VM itself.
pub(crate) const TIMEOUT_SLACK: Duration = Duration::from_secs(15);
/// Without a deadline of its own, a command may run this long before the
/// host gives up on a wedged channel.
pub(crate) const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a one-shot run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// The exec command's result, or the failing setup step's.
    pub result: RunResult,
    /// The setup step that failed, if one did (exec did not run).
    pub setup_failed: Option<SetupStep>,
}

/// Options for an exec in a running workspace.
pub struct ExecOptions {
    /// The command.
    pub request: ExecRequest,
    /// Bytes for the command's stdin, streamed as they are read.
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Steers the exec while it runs (signals, pty resizes); a fresh
    /// [`vmkit_channel::host::ExecHandle::new`] when the caller does not need to.
    pub handle: vmkit_channel::host::ExecHandle,
}

/// The shared lifecycle over one backend's [`Machine`].
pub struct Lifecycle {
    pub(crate) machine: Box<dyn Machine>,
    pub(crate) observer: Option<Observer>,
}

impl Lifecycle {
    /// Wraps a machine.
    pub fn new(machine: impl Machine + 'static) -> Self {
        Lifecycle {
            machine: Box::new(machine),
            observer: None,
        }
    }

    /// Adds an observer that sees every event as it is recorded.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The machine.
    pub fn machine(&self) -> &dyn Machine {
        self.machine.as_ref()
    }
}

/// The host's wait for a guest that enforces `deadline` itself: the deadline
/// plus [`TIMEOUT_SLACK`], saturating (a validated deadline cannot overflow,
/// but the arithmetic must not panic whatever it is given).
pub(crate) fn backstop(deadline: Option<Duration>) -> Duration {
    deadline.map_or(NO_DEADLINE, |d| d.saturating_add(TIMEOUT_SLACK))
}

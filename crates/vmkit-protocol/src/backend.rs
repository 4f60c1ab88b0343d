use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Event, HostInfo, ProtocolError, Request, RunResult, SnapshotInfo};

/// The backends microagent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// QEMU `-M microvm`, KVM when usable, else TCG. Linux.
    Qemu,
    /// The `firecracker` binary. Linux with KVM.
    Firecracker,
    /// Apple Virtualization.framework through a Swift supervisor. macOS.
    AppleVf,
}

impl BackendKind {
    /// The backend native to the OS this was built for: apple-vf on macOS,
    /// QEMU elsewhere.
    pub fn native() -> Self {
        if cfg!(target_os = "macos") {
            BackendKind::AppleVf
        } else {
            BackendKind::Qemu
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
            BackendKind::AppleVf => "apple-vf",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qemu" => Ok(BackendKind::Qemu),
            "firecracker" => Ok(BackendKind::Firecracker),
            "apple-vf" => Ok(BackendKind::AppleVf),
            other => Err(ProtocolError::invalid(format!(
                "unknown backend {other:?}; expected qemu, firecracker or apple-vf"
            ))),
        }
    }
}

/// What a command produced besides success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The state the workspace is now in.
    pub event: Option<Event>,
    /// Host facts.
    pub host: Option<HostInfo>,
    /// A workload's result.
    pub result: Option<RunResult>,
    /// Snapshots made or listed.
    pub snapshots: Option<Vec<SnapshotInfo>>,
}

/// One way of running microVMs. Requests reach a backend already validated.
///
/// Each method is one protocol command; [`crate::Response`]s are assembled
/// by the dispatcher from the returned [`Outcome`] or error.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Facts about the host as this backend sees them.
    fn host(&self) -> Result<HostInfo, ProtocolError>;
    /// Whether the config could run here.
    fn check(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Creates the workspace.
    fn prepare(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Boots it.
    fn start(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Runs the workload once, start to delete.
    fn run(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Reports the state.
    fn inspect(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Clean shutdown.
    fn halt(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Stop, forcibly after a grace period.
    fn stop(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Immediate kill.
    fn kill(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Removes the workspace.
    fn delete(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Stops the vCPUs of a running VM (state `paused`).
    fn pause(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Lets a paused VM run again (state `running`).
    fn resume(&self, request: &Request) -> Result<Outcome, ProtocolError>;
    /// Creates, lists or deletes snapshots (`request.snapshot`).
    fn snapshot(&self, request: &Request) -> Result<Outcome, ProtocolError>;
}

/// Implements every request method of [`Backend`] (all but `kind` and
/// `host`) as one call of `self.$forward(request)`: for a backend that
/// sends each request on as it is, to a supervisor process, say. The
/// method list is the trait's, so a command added to the trait and not
/// here fails to compile where the macro is used.
///
/// ```
/// use vmkit_protocol::{Backend, BackendKind, HostInfo, Outcome, ProtocolError, Request};
///
/// struct Client;
/// impl Client {
///     fn send(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
///         Ok(Outcome::default())
///     }
/// }
/// impl Backend for Client {
///     fn kind(&self) -> BackendKind {
///         BackendKind::AppleVf
///     }
///     fn host(&self) -> Result<HostInfo, ProtocolError> {
///         Err(ProtocolError::new(vmkit_protocol::ErrorCode::Unsupported, "no host facts"))
///     }
///     vmkit_protocol::forward_requests!(send);
/// }
/// ```
#[macro_export]
macro_rules! forward_requests {
    ($forward:ident) => {
        $crate::forward_requests!(@each $forward:
            check prepare start run inspect halt stop kill delete pause resume snapshot);
    };
    (@each $forward:ident: $($method:ident)*) => {
        $(
            fn $method(
                &self,
                request: &$crate::Request,
            ) -> ::std::result::Result<$crate::Outcome, $crate::ProtocolError> {
                self.$forward(request)
            }
        )*
    };
}

//! The contract every microagent backend speaks.
//!
//! A caller describes what it wants as a [`Request`] (a command, the identity
//! of the workspace it concerns, and the machine configuration); a backend
//! answers with a [`Response`]. The same types travel as JSON between the CLI
//! and an external supervisor (the Apple Virtualization.framework one is a
//! separate Swift process), so the field names here *are* the wire contract:
//! camelCase, with `requestID`/`runtimeID` spelled as DESIGN.md spells them.
//!
//! ```
//! use vmkit_protocol::{Request, Command};
//!
//! let json = r#"{"command":"host","identity":{"requestID":"r1","runtimeID":"ws","role":"workspace","backend":"qemu"}}"#;
//! let request = Request::from_json(json.as_bytes()).unwrap();
//! assert_eq!(request.command, Command::Host);
//! ```

mod backend;
mod config;
mod error;
mod event;
mod hostname;
mod network;
mod request;
mod response;
mod snapshot;
mod state;
mod terminal;

pub use backend::{Backend, BackendKind, Outcome};
pub use config::{Disk, DiskMode, GuestArch, MachineConfig, Volume, Workload, MAX_TIMEOUT_SECONDS};
pub use error::{ErrorCode, ProtocolError};
pub use event::Event;
pub use hostname::{hostname_for, validate_hostname, MAX_HOSTNAME_BYTES};
pub use network::{
    validate_published, Network, NetworkMode, PublishedPort, MAX_PUBLISHED, MAX_RULES, MAX_RULE_LEN,
};
pub use request::{
    validate_runtime_id, Command, Identity, Request, MAX_IMAGE_REF_BYTES, MAX_REQUEST_BYTES,
};
pub use response::{
    truncate_text, Accelerator, CheckItem, CheckStatus, HostInfo, Response, RunResult,
};
pub use snapshot::{validate_tag, SnapshotAction, SnapshotInfo, SnapshotRef, SnapshotRequest};
pub use state::{State, TransitionError};
pub use terminal::{terminal_safe, terminal_safe_bytes};

//! The microagent library.
//!
//! Everything the `microagent` CLI does, a Rust program can do from here:
//! pick the host's backend ([`select_backend`]), send it protocol requests
//! ([`dispatch`]), serve the external-supervisor form of the protocol
//! ([`supervisor::serve`]), and check the host ([`doctor::doctor`]).
//!
//! ```no_run
//! let report = vmkit::doctor::doctor(std::path::Path::new("/tmp/state"));
//! println!("run would use {} with {:?}", report.backend, report.accelerator);
//! ```

mod dispatch;
pub mod doctor;
mod error;
mod guest_init;
mod runtime;
mod snapshots;
pub mod supervisor;

pub use error::VmkitError;
pub use guest_init::{find_guest_init, find_guest_init_for};
pub use runtime::{new_run_name, MachineParams, RunParams, Runtime};
pub use vmkit_channel::ExecRequest;
pub use vmkit_kernel::BuildEvent;
pub use vmkit_lifecycle::vmm_files::read_console;
pub use vmkit_lifecycle::{ExecOptions, Observer, RunOutput};

pub use dispatch::{backend_for, dispatch, select_backend, BackendChoice};
pub use vmkit_channel as channel;
pub use vmkit_protocol as protocol;

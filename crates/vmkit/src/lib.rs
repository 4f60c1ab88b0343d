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
pub mod supervisor;

pub use dispatch::{dispatch, select_backend, BackendChoice};
pub use vmkit_protocol as protocol;

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
//!
//! Workspaces through [`Runtime`]: files in and out as tar streams or host
//! paths, an exec on a pty steered by an [`ExecHandle`] (resize, signals):
//!
//! ```no_run
//! use vmkit::{ExecHandle, ExecOptions, ExecRequest, Runtime, TtySize};
//!
//! let rt = Runtime::new("/tmp/state", vmkit::protocol::BackendKind::Qemu, None)?;
//! rt.copy_to_guest("ws", "./project".as_ref(), "/work", None)?;
//! let handle = ExecHandle::new();
//! let request = ExecRequest {
//!     tty: true,
//!     tty_size: Some(TtySize { rows: 40, cols: 120 }),
//!     ..ExecRequest::shell("make test")
//! };
//! let h = handle.clone();
//! std::thread::spawn(move || h.resize(TtySize { rows: 50, cols: 160 }));
//! let options = ExecOptions { request, stdin: None, handle };
//! let result = rt.exec("ws", options, &mut std::io::stdout(), &mut std::io::stderr())?;
//! rt.copy_from_guest("ws", "/work/report", "./out".as_ref())?;
//! # let _ = result;
//! # Ok::<(), vmkit::VmkitError>(())
//! ```

mod copy;
mod dispatch;
pub mod doctor;
mod driver;
mod egress;
mod error;
mod follow;
mod guest_init;
mod inventory;
mod runtime;
mod snapshots;
pub mod supervisor;

pub use copy::CopyError;
pub use egress::EgressTail;
pub use error::VmkitError;
pub use guest_init::{find_guest_init, find_guest_init_for};
pub use runtime::{new_run_name, GcReport, MachineParams, RunParams, Runtime};
pub use vmkit_channel::host::ExecHandle;
pub use vmkit_channel::{CopyOwner, CopyStats, ExecRequest, TtySize};
pub use vmkit_kernel::BuildEvent;
pub use vmkit_lifecycle::vmm_files::read_console;
pub use vmkit_lifecycle::{ExecOptions, Observer, OrphanedMemory, RunOutput};

pub use dispatch::{backend_for, dispatch, select_backend, BackendChoice};
pub use driver::{driver_for, Driver};
/// The kernel installer, for `kernel build|install|check|list`.
pub use vmkit_channel as channel;
pub use vmkit_kernel as kernel;
pub use vmkit_protocol as protocol;
/// The rootfs builder, for `rootfs build` and image references.
pub use vmkit_rootfs as rootfs;
pub use vmkit_rootfs::StoredImage;
pub use vmkit_state::WorkspaceRecord;

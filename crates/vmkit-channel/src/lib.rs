//! The host<->guest channel of microagent, shared by the guest init and the
//! host backends.
//!
//! - [`frame`]: the wire format. Every frame is a big-endian `u32` length, that
//!   many bytes of JSON (a [`Message`]), and, only for byte-carrying messages
//!   (`stdin`, `stdout`, `stderr`), exactly `len` raw bytes named by the JSON
//!   header. Output bytes therefore travel unencoded, and every length read
//!   off the wire is checked against a bound before anything is allocated.
//! - [`message`]: what the two sides say: exec requests, output chunks, setup
//!   step results, the final [`RunResult`](vmkit_protocol::RunResult), the
//!   workspace `ready` notice, `shutdown`.
//! - [`bootspec`]: the run spec the host writes to a small read-only config
//!   disk for the guest init, and the kernel command-line argument that names it.
//! - [`host`] (Unix hosts): Firecracker's hybrid vsock convention over Unix
//!   sockets (`CONNECT <port>\n` / `OK <n>\n`, and `<uds>_<port>` listeners for
//!   guest-initiated connections), plus the run-mode receiver and exec client
//!   used by the QEMU and Firecracker backends. Every wait has a timeout.
//!
//! ```no_run
//! use std::time::Duration;
//! use vmkit_channel::host::{ExecClient, ExecHandle};
//! use vmkit_channel::ExecRequest;
//!
//! let client = ExecClient::new("/run/ws/vm.vsock", vmkit_channel::DEFAULT_EXEC_PORT);
//! let req = ExecRequest::shell("echo hello");
//! let mut out = Vec::new();
//! let mut err = Vec::new();
//! let timeout = Duration::from_secs(60);
//! let result = client.exec(&req, None, &mut out, &mut err, timeout, &ExecHandle::new())?;
//! assert_eq!(result.exit_code, Some(0));
//! # Ok::<(), vmkit_channel::ChannelError>(())
//! ```

pub mod bootspec;
#[cfg(unix)]
pub mod forward;
pub mod frame;
pub mod guestnet;
#[cfg(unix)]
pub mod host;
#[cfg(unix)]
pub mod inherit;
pub mod message;
#[cfg(unix)]
pub mod mux;
#[cfg(unix)]
pub mod relay;

pub use bootspec::{
    config_device_from_cmdline, encode_config, kernel_args, read_config, write_config_disk,
    BootSpec, ConfigError, DiskMount, FileSpec, Mode, RunSpec, VolumeMount, CMDLINE_CONFIG_KEY,
    CMDLINE_EXIT_BY_REBOOT, CONFIG_MAGIC,
};
pub use frame::{read_message, write_message, FrameError, MAX_CHUNK_LEN, MAX_HEADER_LEN};
pub use guestnet::{GuestNetwork, HostEntry, PublishSpec, DEFAULT_FORWARD_PORT, HOST_ALIAS};
#[cfg(unix)]
pub use host::ChannelError;
pub use message::{
    check_frozen, CopyInRequest, CopyOutRequest, CopyOwner, CopyStats, ExecRequest, FreezeRequest,
    Message, Ready, SetupStep, TtySize, CHUNK_SIZE, DEFAULT_FREEZE_MS, MAX_FREEZE_MS,
};

/// Guest port the guest init connects to on the host (CID 2) at boot, unless
/// the boot spec says otherwise.
pub const DEFAULT_CONTROL_PORT: u32 = 10_000;
/// Guest port the exec service listens on in a workspace, unless the boot
/// spec says otherwise.
pub const DEFAULT_EXEC_PORT: u32 = 10_001;
/// Version of the message set; sent in [`Ready`] so a host can refuse an old init.
pub const PROTOCOL_VERSION: u32 = 1;

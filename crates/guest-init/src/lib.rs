//! microagent's guest init, as a library so its parts can be tested on the
//! host. The binary `microagent-init` runs as PID 1 in the microVM:
//!
//! 1. [`system`] mounts the pseudo filesystems, sets the hostname, brings up
//!    loopback, reads the boot spec from the config disk named on the kernel
//!    command line, mounts the extra disks and places files.
//!    [`network`] configures the NIC (address, route, MTU, resolv.conf,
//!    hosts) when the boot spec has one, and [`forward`] serves published
//!    ports over vsock.
//! 2. It connects to the host (CID 2) on the control port. In run mode
//!    ([`service::run_workload`]) it runs the setup commands then the exec
//!    command, streaming output and results; in workspace mode it reports
//!    `ready` and serves the exec service ([`service::Service`]) on a vsock
//!    port until asked to shut down. [`freeze`] freezes its filesystems
//!    while the host copies the disk.
//! 3. It syncs and powers off.
//!
//! Commands run through `/bin/sh -c` (run mode) or an argv (exec), each in
//! its own process group, with the image's `Env`, `WorkingDir` and `User`
//! ([`image`]) unless overridden. One reaper thread ([`reaper`]) waits for all
//! children, so orphans are reaped without stealing our own commands' statuses.
//!
//! Everything the host sends is treated as hostile: frame sizes are bounded by
//! [`vmkit_channel::frame`], a bad frame ends only its connection, and no input
//! can panic PID 1.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vmkit_guest_init::{image::Defaults, service::Service};
//!
//! let (a, _b) = std::os::unix::net::UnixStream::pair()?;
//! let service = Arc::new(Service::new(Defaults::default(), None));
//! service.spawn_handler(a);
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod command;
pub mod copy;
#[cfg(target_os = "linux")]
pub mod forward;
pub mod freeze;
pub mod image;
#[cfg(target_os = "linux")]
pub mod network;
pub mod pty;
pub mod reaper;
pub mod service;
#[cfg(target_os = "linux")]
pub mod system;
#[cfg(target_os = "linux")]
pub mod transport;
#[cfg(target_os = "linux")]
pub mod volumes;
#[cfg(target_os = "linux")]
pub mod vsock;

static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns on [`stage`] logging (`microagent.debug` on the kernel command line).
pub fn set_debug(on: bool) {
    DEBUG.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// With debug on, logs a boot or run stage with the kernel's uptime, to
/// see where time goes.
pub fn stage(what: &str) {
    #[cfg(target_os = "linux")]
    stage_at(system::uptime_us(), what);
    #[cfg(not(target_os = "linux"))]
    stage_at(None, what);
}

/// [`stage`] for a moment taken earlier (`us` of uptime), e.g. before the
/// debug flag could be read.
pub fn stage_at(us: Option<u64>, what: &str) {
    if DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
        let us = us.unwrap_or(0);
        log(&format!("{:>4}.{:03} ms  {what}", us / 1000, us % 1000));
    }
}

/// Logs a line to the console (PID 1's stderr is `/dev/console`).
pub fn log(msg: &str) {
    eprintln!("microagent-init: {msg}");
}

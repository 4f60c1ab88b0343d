//! The kernel installer: builds a minimal all-built-in guest kernel,
//! installs user-supplied ones, and verifies what is installed.
//!
//! One x86_64 kernel serves every Linux backend: QEMU `-M microvm` under
//! TCG (what CI has) or KVM, and Firecracker. It is built from Debian's
//! `linux-source-6.1` tarball with the fragment in
//! `config/microagent-x86_64.config` applied on top of `make allnoconfig`:
//! everything built in, no modules. The aarch64 kernel (QEMU `-M virt`,
//! Virtualization.framework on Apple silicon) is built the same way from
//! `config/microagent-aarch64.config`, cross-compiled where the host is not
//! arm64; [`recipe`] says how each architecture is built and recognised.
//!
//! Installed kernels live under `<state_dir>/kernels/<arch>/`:
//! `vmlinux` (the uncompressed ELF image, booted directly through its PVH
//! entry point) and `manifest.json` (version, sha256, config fragment hash,
//! source, install time). The last build's log is
//! `<state_dir>/kernels/build.log`.
//!
//! ```no_run
//! use vmkit_kernel::{ensure_installed, KernelStore};
//!
//! let store = KernelStore::new("/root/.microagent");
//! // Builds (minutes) only when nothing is installed yet.
//! let kernel = ensure_installed(&store, &mut |event| eprintln!("{event}"))?;
//! let cmdline = format!(
//!     "{} root=/dev/vda rw init=/sbin/microagent-init",
//!     vmkit_kernel::boot::kernel_cmdline_base(true)
//! );
//! println!("{} {cmdline}", kernel.vmlinux_path().display());
//! # Ok::<(), vmkit_kernel::KernelError>(())
//! ```
//!
//! How to boot it on each backend (machine options and command line, and
//! why) is documented in [`boot`].

pub mod boot;
mod build;
pub mod elf;
mod error;
pub mod fragment;
mod fsutil;
pub mod manifest;
pub mod recipe;
mod store;

pub use build::{
    ensure_installed, estimated_build_time, BuildEvent, BuildOptions, BuildPhase, BuildSource,
    DEBIAN_PACKAGE, DEBIAN_TARBALL,
};
pub use error::KernelError;
pub use manifest::{KernelSource, Manifest};
pub use store::{host_arch, CheckReport, InstalledKernel, KernelStore};

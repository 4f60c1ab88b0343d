//! The whole command-line surface, in one place.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;

/// Run AI-agent workloads in Linux microVMs.
///
/// microagent turns an OCI image into an ext4 root disk, boots a microVM from
/// a kernel and that disk, runs `--setup` then `--exec` inside it, streams the
/// output and exits with the guest command's exit code.
#[derive(Debug, Parser)]
#[command(name = "microagent", version, propagate_version = true)]
pub struct Cli {
    /// Print events and results as JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Where workspaces, images, kernels and caches live.
    #[arg(
        long,
        global = true,
        env = "MICROAGENT_STATE_DIR",
        value_name = "DIR"
    )]
    pub state_dir: Option<PathBuf>,

    /// More diagnostics on stderr (-v info, -vv debug). MICROAGENT_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command sees.
#[derive(Debug, Clone)]
pub struct Global {
    /// JSON lines on stdout instead of human output.
    pub json: bool,
    /// The state folder, resolved.
    pub state_dir: PathBuf,
}

impl Cli {
    /// Resolves the global options (default state dir: `~/.microagent`).
    pub fn global(&self) -> Global {
        let state_dir = self.state_dir.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".microagent")
        });
        Global {
            json: self.json,
            state_dir,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build and manage guest kernels.
    #[command(subcommand)]
    Kernel(commands::kernel::KernelCommand),
    /// Pull, list and remove OCI images.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Build ext4 root disks from images.
    #[command(subcommand)]
    Rootfs(commands::rootfs::RootfsCommand),
    /// Check this host: KVM, QEMU, e2fsprogs, vsock, kernel; and which backend `run` would use.
    Doctor,
    /// Print version information.
    Version,
}

//! `microagent run`.

use clap::Args;

use crate::cli::Global;
use crate::commands::workspace::MachineArgs;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image: a registry reference (`alpine`, `host:port/repo:tag`,
    /// `repo@sha256:...`) or a local one (`oci-layout:DIR[:TAG]`,
    /// `docker-archive:FILE.tar`, `rootfs-tar:FILE.tar[.gz|.zst]`).
    #[arg(long, value_name = "REF")]
    pub image: String,

    /// A shell command run before --exec; repeat for several, run in order.
    /// The first one that fails ends the run (exit code 126).
    #[arg(long, value_name = "CMD")]
    pub setup: Vec<String>,

    /// The shell command whose exit code becomes microagent's.
    #[arg(long, value_name = "CMD")]
    pub exec: String,

    /// Whole-run deadline in seconds; on expiry the command is killed and
    /// microagent exits 124.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// Keep the workspace afterwards (halted) instead of deleting it.
    #[arg(long)]
    pub keep: bool,

    /// Name of the workspace (default: run-<random>).
    #[arg(long)]
    pub name: Option<String>,

    #[command(flatten)]
    pub machine: MachineArgs,
}

pub fn run(args: RunArgs, _global: &Global) -> anyhow::Result<u8> {
    let _ = args;
    anyhow::bail!("run is not implemented yet")
}

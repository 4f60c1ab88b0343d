//! `microagent channel-relay`: the per-VM helper the QEMU backend starts
//! for its serial transport (see `vmkit_qemu::transport`). Internal: not
//! for people to run.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The socket QEMU's virtio-serial chardev connects to.
    #[arg(long, value_name = "PATH")]
    pub serial: PathBuf,
    /// The hybrid-vsock socket host clients use (the workspace's v.sock).
    #[arg(long, value_name = "PATH")]
    pub uds: PathBuf,
}

pub fn relay(args: RelayArgs) -> anyhow::Result<u8> {
    vmkit::channel::relay::Relay::bind(&args.serial, &args.uds)?.serve()?;
    Ok(0)
}

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
    /// Both sockets are already bound and listening, inherited as this
    /// descriptor (serial) and the next (uds): the spawner binds them so
    /// QEMU can connect before this relay has started.
    #[arg(long, value_name = "FD", value_parser = clap::value_parser!(i32).range(3..1024))]
    pub inherited_fds: Option<i32>,
}

pub fn relay(args: RelayArgs) -> anyhow::Result<u8> {
    use vmkit::channel::relay::Relay;
    let relay = match args.inherited_fds {
        Some(fd) => Relay::inherited(fd, &args.serial, fd + 1, &args.uds)?,
        None => Relay::bind(&args.serial, &args.uds)?,
    };
    relay.serve()?;
    Ok(0)
}

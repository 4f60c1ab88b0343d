//! One module per command family. Each exposes its clap types and a `run`
//! that returns the process exit code.

pub mod image;
pub mod kernel;
pub mod rootfs;

use crate::cli::{Command, Global};

/// Runs a parsed command.
pub fn dispatch(command: Command, global: &Global) -> anyhow::Result<u8> {
    match command {
        Command::Kernel(cmd) => kernel::run(cmd, global),
        Command::Image(cmd) => image::run(cmd, global),
        Command::Rootfs(cmd) => rootfs::run(cmd, global),
        Command::Doctor => anyhow::bail!("doctor is not implemented yet"),
        Command::Version => {
            println!("microagent {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
    }
}

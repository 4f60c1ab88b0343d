//! `microagent rootfs ...`.

use clap::Subcommand;

use crate::cli::Global;

#[derive(Debug, Subcommand)]
pub enum RootfsCommand {
    /// Placeholder until the rootfs issue lands.
    List,
}

pub fn run(cmd: RootfsCommand, _global: &Global) -> anyhow::Result<u8> {
    match cmd {
        RootfsCommand::List => anyhow::bail!("rootfs commands are not implemented yet"),
    }
}

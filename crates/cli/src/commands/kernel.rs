//! `microagent kernel ...`.

use clap::Subcommand;

use crate::cli::Global;

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Placeholder until the kernel issue lands.
    List,
}

pub fn run(cmd: KernelCommand, _global: &Global) -> anyhow::Result<u8> {
    match cmd {
        KernelCommand::List => anyhow::bail!("kernel commands are not implemented yet"),
    }
}

//! `microagent image ...`.

use clap::Subcommand;

use crate::cli::Global;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Placeholder until the image issue lands.
    List,
}

pub fn run(cmd: ImageCommand, _global: &Global) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::List => anyhow::bail!("image commands are not implemented yet"),
    }
}

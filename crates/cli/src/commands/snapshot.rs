//! Pause and resume (and memory snapshots): the commands that freeze a
//! running workspace.

use crate::cli::Global;
use crate::commands::workspace::{simple, NameArgs};

pub fn pause(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    simple(&args.name, global, |rt| rt.pause(&args.name))
}

pub fn resume(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    simple(&args.name, global, |rt| rt.resume(&args.name))
}

//! Pause and resume, snapshots and forks: the commands that freeze a
//! running workspace or continue it elsewhere.

use clap::{Args, Subcommand};

use crate::cli::Global;
use crate::commands::workspace::{report, runtime, simple, workspace_runtime, NameArgs};
use crate::exit;

const SNAPSHOT_EXAMPLES: &str = "\
Examples:
  microagent snapshot create ws --tag warm      # memory + device state + disk
  microagent snapshot create ws --tag deps --disk-only  # a clean disk checkpoint
  microagent create ws2 --from-snapshot ws:warm # a running fork with its own copies
  microagent start ws --from-snapshot warm      # a stopped ws continues from it
  microagent snapshot list ws
  microagent snapshot delete ws warm";

#[derive(Debug, Subcommand)]
#[command(after_help = SNAPSHOT_EXAMPLES)]
pub enum SnapshotCommand {
    /// Snapshot a running or paused workspace: memory, device state and disk.
    ///
    /// The VM is paused while its state, memory and disk are saved (a
    /// running one is resumed afterwards). The snapshot lives under the
    /// workspace (snapshots/TAG), staged and then renamed: a failed snapshot
    /// leaves nothing. On QEMU it needs the serial transport (the default).
    ///
    /// With --disk-only only the disk is copied, and starting from it is a
    /// fresh boot. Of a running workspace, the guest's filesystems (the
    /// root and every read-write disk) are frozen while the disk is copied:
    /// the guest flushes what it holds in memory first, writers in the
    /// guest wait, readers do not, and the copy is a clean filesystem with
    /// everything written before the snapshot. A paused workspace runs for
    /// the moment of the freeze and is paused again. The guest thaws when
    /// the copy is done or fails, and by itself if microagent dies or 60 s
    /// pass; a freeze that did not hold until the copy was done fails the
    /// snapshot, and so does a guest that cannot freeze (an older guest
    /// init): no inconsistent copy is taken. The snapshot says "frozen":
    /// true. A stopped workspace's disk is copied as it is (no freeze).
    Create(CreateArgs),
    /// List snapshots (of one workspace, or of all).
    #[command(alias = "ls")]
    List(ListArgs),
    /// Delete one snapshot.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The workspace.
    pub name: String,
    /// The snapshot's tag (default: the time, e.g. 20261201-154411).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Only the disk, no memory: the guest's filesystems frozen while it
    /// is copied (see above).
    #[arg(long)]
    pub disk_only: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this workspace's snapshots.
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The workspace.
    pub name: String,
    /// The snapshot's tag.
    pub tag: String,
}

pub fn run(cmd: SnapshotCommand, global: &Global) -> anyhow::Result<u8> {
    match cmd {
        SnapshotCommand::Create(args) => {
            let rt = workspace_runtime(global, &args.name)?;
            let tag = args
                .tag
                .unwrap_or_else(|| chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string());
            let info = rt
                .snapshot_create(&args.name, &tag, args.disk_only)
                .map_err(exit::classify)?;
            if global.json {
                println!(
                    "{}",
                    serde_json::json!({"type": "snapshot", "snapshot": info})
                );
            } else {
                eprintln!(
                    "{}: snapshot {} created ({} MiB on disk)",
                    info.runtime_id,
                    info.tag,
                    info.size_bytes >> 20
                );
            }
            Ok(0)
        }
        SnapshotCommand::List(args) => {
            let rt = match &args.name {
                Some(n) => workspace_runtime(global, n)?,
                None => runtime(global, None)?,
            };
            let list = rt
                .snapshot_list(args.name.as_deref())
                .map_err(exit::classify)?;
            if global.json {
                for info in &list {
                    println!(
                        "{}",
                        serde_json::json!({"type": "snapshot", "snapshot": info})
                    );
                }
            } else {
                println!(
                    "{:<20} {:<24} {:<20} {:>8} KIND",
                    "WORKSPACE", "TAG", "CREATED", "MIB"
                );
                for s in &list {
                    println!(
                        "{:<20} {:<24} {:<20} {:>8} {}",
                        s.runtime_id,
                        s.tag,
                        s.created_at.format("%Y-%m-%d %H:%M:%S"),
                        s.size_bytes >> 20,
                        match (s.disk_only, s.frozen) {
                            (true, true) => "disk (frozen)",
                            (true, false) => "disk",
                            (false, _) => "memory",
                        }
                    );
                }
            }
            Ok(0)
        }
        SnapshotCommand::Delete(args) => {
            let rt = workspace_runtime(global, &args.name)?;
            rt.snapshot_delete(&args.name, &args.tag)
                .map_err(exit::classify)?;
            if global.json {
                println!(
                    "{}",
                    serde_json::json!({"type": "snapshotDeleted", "name": args.name, "tag": args.tag})
                );
            } else {
                eprintln!("{}: snapshot {} deleted", args.name, args.tag);
            }
            Ok(0)
        }
    }
}

/// `create NEW --from-snapshot SOURCE:TAG`.
pub fn fork(name: &str, from: &str, global: &Global) -> anyhow::Result<u8> {
    let (source, tag) = from
        .split_once(':')
        .filter(|(s, t)| !s.is_empty() && !t.is_empty())
        .ok_or_else(|| {
            exit::classify(vmkit::VmkitError::Protocol(
                vmkit::protocol::ProtocolError::invalid(format!(
                    "--from-snapshot wants NAME:TAG, got {from:?}"
                )),
            ))
        })?;
    let rt = workspace_runtime(global, source)?;
    let event = rt.fork(name, source, tag).map_err(exit::classify)?;
    report(&event, global);
    Ok(0)
}

pub fn pause(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    simple(&args.name, global, |rt| rt.pause(&args.name))
}

pub fn resume(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    simple(&args.name, global, |rt| rt.resume(&args.name))
}

//! Workspace lifecycle: `create`, `start`, `exec`, `halt`, `stop`, `kill`,
//! `delete`, `list`, `status`, `events`, `logs`, `gc`.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use vmkit_protocol::{BackendKind, Disk, DiskMode};
use vmkit_state::StateStore;

use crate::cli::Global;

/// Machine options shared by `run` and `create`.
#[derive(Debug, Args)]
pub struct MachineArgs {
    /// Environment variable for the guest commands (KEY=VAL); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512, value_name = "MiB")]
    pub memory: u32,

    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,

    /// Extra disk: NAME=PATH:MOUNTPOINT:ro|rw; attached in order from /dev/vdb.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    pub disk: Vec<Disk>,

    /// Working directory for the guest commands (default: the image's).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// User for the guest commands: name, uid or uid:gid (default: the image's).
    #[arg(short = 'u', long)]
    pub user: Option<String>,

    /// Backend (default: qemu on Linux, apple-vf on macOS).
    #[arg(long, value_parser = parse_backend)]
    pub backend: Option<BackendKind>,

    /// Use this kernel instead of the installed one.
    #[arg(long, value_name = "VMLINUX")]
    pub kernel: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The workspace name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The workspace name (letters, digits, '-', '_', '.').
    pub name: String,

    /// The image (see `microagent run --help` for the forms).
    #[arg(long, value_name = "REF")]
    pub image: String,

    #[command(flatten)]
    pub machine: MachineArgs,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The workspace name.
    pub name: String,

    /// Environment variable (KEY=VAL); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Working directory in the guest.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// Deadline in seconds; on expiry the command's process group gets
    /// SIGTERM, then SIGKILL, and microagent exits 124.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "ARGV")]
    pub argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The workspace name.
    pub name: String,
    /// Kill the VM first if it is running.
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The workspace name.
    pub name: String,
    /// Keep printing new events as they arrive.
    #[arg(short, long)]
    pub follow: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VAL, got {s:?}")),
    }
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse()
        .map_err(|e: vmkit_protocol::ProtocolError| e.message)
}

/// Parses `NAME=PATH:MOUNTPOINT:ro|rw`. The host path is made absolute here
/// so the request is meaningful to a supervisor with another working folder.
fn parse_disk(s: &str) -> Result<Disk, String> {
    let usage = || format!("expected NAME=PATH:MOUNTPOINT:ro|rw, got {s:?}");
    let (name, rest) = s.split_once('=').ok_or_else(usage)?;
    let (rest, mode) = rest.rsplit_once(':').ok_or_else(usage)?;
    let (path, mountpoint) = rest.rsplit_once(':').ok_or_else(usage)?;
    let mode = match mode {
        "ro" => DiskMode::Ro,
        "rw" => DiskMode::Rw,
        other => return Err(format!("disk mode must be ro or rw, got {other:?}")),
    };
    if name.is_empty() || path.is_empty() || mountpoint.is_empty() {
        return Err(usage());
    }
    let path = std::path::absolute(path).map_err(|e| format!("disk path {path:?}: {e}"))?;
    Ok(Disk {
        name: name.to_owned(),
        path: path.to_string_lossy().into_owned(),
        mountpoint: mountpoint.to_owned(),
        mode,
    })
}

fn store(global: &Global) -> anyhow::Result<StateStore> {
    StateStore::open(&global.state_dir)
        .with_context(|| format!("opening state folder {}", global.state_dir.display()))
}

fn not_yet(what: &str) -> anyhow::Result<u8> {
    anyhow::bail!("{what} is not implemented yet")
}

pub fn create(_args: CreateArgs, _global: &Global) -> anyhow::Result<u8> {
    not_yet("create")
}
pub fn start(_args: NameArgs, _global: &Global) -> anyhow::Result<u8> {
    not_yet("start")
}
pub fn exec(_args: ExecArgs, _global: &Global) -> anyhow::Result<u8> {
    not_yet("exec")
}
pub fn halt(_args: NameArgs, _global: &Global) -> anyhow::Result<u8> {
    not_yet("halt")
}
pub fn stop(_args: NameArgs, _global: &Global) -> anyhow::Result<u8> {
    not_yet("stop")
}
pub fn kill(_args: NameArgs, _global: &Global) -> anyhow::Result<u8> {
    not_yet("kill")
}
pub fn delete(_args: DeleteArgs, _global: &Global) -> anyhow::Result<u8> {
    not_yet("delete")
}
pub fn gc(_global: &Global) -> anyhow::Result<u8> {
    not_yet("gc")
}

pub fn list(global: &Global) -> anyhow::Result<u8> {
    let records = store(global)?.list()?;
    if global.json {
        for r in &records {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!("{:<24} {:<10} {:<12} IMAGE", "NAME", "STATE", "BACKEND");
        for r in &records {
            println!(
                "{:<24} {:<10} {:<12} {}",
                r.name, r.state, r.backend, r.image
            );
        }
    }
    Ok(0)
}

pub fn status(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    let record = store(global)?
        .peek(&args.name)?
        .with_context(|| format!("workspace {:?} does not exist", args.name))?;
    if global.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        println!("name:     {}", record.name);
        println!("state:    {}", record.state);
        println!("backend:  {}", record.backend);
        println!("image:    {}", record.image);
        println!("memory:   {} MiB", record.config.memory_mib);
        println!("cpus:     {}", record.config.cpu_count);
        println!("created:  {}", record.created_at);
        if let Some(vmm) = record.vmm {
            println!("vmm pid:  {}", vmm.pid);
        }
    }
    Ok(0)
}

pub fn events(args: EventsArgs, global: &Global) -> anyhow::Result<u8> {
    let store = store(global)?;
    if store.peek(&args.name)?.is_none() {
        anyhow::bail!("workspace {:?} does not exist", args.name);
    }
    let log = store.events(&args.name)?;
    let print = |line: &str| -> anyhow::Result<()> {
        if global.json {
            println!("{line}");
        } else if let Ok(e) = serde_json::from_str::<vmkit_protocol::Event>(line) {
            println!(
                "{}  {:<9} {}",
                e.observed_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                e.state,
                e.detail
            );
        }
        Ok(())
    };
    let file = std::fs::File::open(log.path())
        .with_context(|| format!("opening {}", log.path().display()))?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            print(line.trim_end())?;
            continue;
        }
        if !args.follow {
            break;
        }
        // Half a line: wait for the writer to finish it.
        if n > 0 {
            reader.seek(SeekFrom::Current(-(n as i64)))?;
        }
        if store.peek(&args.name)?.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(0)
}

pub fn logs(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    let dir = store(global)?.workspace_dir(&args.name)?;
    let path = dir.join("console.log");
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    use std::io::Write;
    std::io::stdout().write_all(&text)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse_or_say_what_is_wrong() {
        let d = parse_disk("data=/srv/d.ext4:/data:rw").unwrap();
        assert_eq!(d.name, "data");
        assert_eq!(d.path, "/srv/d.ext4");
        assert_eq!(d.mountpoint, "/data");
        assert_eq!(d.mode, DiskMode::Rw);
        assert!(parse_disk("data=rel.ext4:/d:ro")
            .unwrap()
            .path
            .starts_with('/'));
        assert!(parse_disk("data=/x:/d:rx")
            .unwrap_err()
            .contains("ro or rw"));
        assert!(parse_disk("nodisk").unwrap_err().contains("NAME=PATH"));
        assert!(parse_disk("=/x:/d:ro").is_err());
    }

    #[test]
    fn env_pairs_need_a_key() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}

//! Workspace lifecycle: `create`, `start`, `exec`, `halt`, `stop`, `kill`,
//! `delete`, `list`, `status`, `events`, `logs`, `gc`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use vmkit::protocol::{BackendKind, Disk, DiskMode};

use crate::cli::Global;
use crate::exit;

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

    /// Host folder shared with the guest: HOSTDIR:GUESTDIR[:ro]; repeatable.
    /// `:ro` is enforced by the host's file server. QEMU (virtio-fs) and
    /// Apple VF only; Firecracker has no virtio-fs (use --disk there).
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]", value_parser = parse_volume)]
    pub volume: Vec<vmkit::protocol::Volume>,

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

    /// Extra kernel command-line arguments, appended after microagent's own.
    #[arg(long, value_name = "ARGS")]
    pub kernel_args: Option<String>,

    /// Guest architecture: x86_64 or aarch64 (default: the host's). An arm64
    /// guest on an x86_64 host runs under qemu-system-aarch64 -M virt (TCG),
    /// with the aarch64 kernel (`kernel build --arch aarch64`), the image's
    /// linux/arm64 platform and the aarch64 guest init.
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<vmkit::protocol::GuestArch>,

    #[command(flatten)]
    pub net: crate::commands::network::NetworkArgs,
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
    #[arg(long, value_name = "REF", required_unless_present = "from_snapshot")]
    pub image: Option<String>,

    /// Fork: the new workspace continues, running, from another's memory
    /// snapshot (own copy of disk and memory; machine flags are the source's).
    #[arg(long, value_name = "NAME:TAG", conflicts_with = "image")]
    pub from_snapshot: Option<String>,

    #[command(flatten)]
    pub machine: MachineArgs,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The workspace name.
    pub name: String,

    /// Continue from this snapshot of the workspace instead of booting
    /// (its disk, and memory unless disk-only, replace the current ones).
    /// Refused with the reason, nothing started, when the kernel, memory
    /// size or vCPUs differ from the snapshot's or one of its files is
    /// missing (a disk-only snapshot boots afresh: it needs only its disk).
    #[arg(long, value_name = "TAG")]
    pub from_snapshot: Option<String>,
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

pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VAL, got {s:?}")),
    }
}

pub(crate) fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse()
        .map_err(|e: vmkit::protocol::ProtocolError| e.message)
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

/// Parses `HOSTDIR:GUESTDIR[:ro|:rw]`; the host path is made absolute.
/// Whether the folder exists is checked before boot, with the rest of the
/// machine.
fn parse_volume(s: &str) -> Result<vmkit::protocol::Volume, String> {
    let usage = || format!("expected HOSTDIR:GUESTDIR[:ro], got {s:?}");
    let (rest, read_only) = match s.rsplit_once(':') {
        Some((rest, "ro")) => (rest, true),
        Some((rest, "rw")) => (rest, false),
        _ => (s, false),
    };
    let (host, guest) = rest.rsplit_once(':').ok_or_else(usage)?;
    if host.is_empty() || !guest.starts_with('/') {
        return Err(usage());
    }
    let host = std::path::absolute(host).map_err(|e| format!("volume {host:?}: {e}"))?;
    Ok(vmkit::protocol::Volume {
        host_path: host.to_string_lossy().into_owned(),
        guest_path: guest.to_owned(),
        read_only,
    })
}

/// The runtime for the chosen backend, events printed with `--json`
/// (orphaned VMs are cleaned up first: see [`vmkit::Runtime::open`]).
pub fn runtime(global: &Global, backend: Option<BackendKind>) -> anyhow::Result<vmkit::Runtime> {
    vmkit::Runtime::open(
        &global.state_dir,
        backend,
        crate::output::event_observer(global.json),
    )
    .map_err(exit::classify)
}

/// The runtime for the backend workspace `name` was created with.
pub fn workspace_runtime(global: &Global, name: &str) -> anyhow::Result<vmkit::Runtime> {
    vmkit::Runtime::for_workspace(
        &global.state_dir,
        name,
        crate::output::event_observer(global.json),
    )
    .map_err(exit::classify)
}

/// A runtime that prints no events and cleans up nothing by itself: for
/// `gc`, listings and the interrupt watcher, whose output must not mix
/// with event lines.
pub fn quiet_runtime(global: &Global) -> anyhow::Result<vmkit::Runtime> {
    let choice = vmkit::select_backend(None)?;
    vmkit::Runtime::new(&global.state_dir, choice.kind, None).map_err(exit::classify)
}

/// A runtime for listings: orphans cleaned up first (a VM whose driving
/// command died must not show as running), without printing the resulting
/// events into a `--json` listing.
fn listing_runtime(global: &Global) -> anyhow::Result<vmkit::Runtime> {
    vmkit::Runtime::open(&global.state_dir, None, None).map_err(exit::classify)
}

/// The machine the flags describe; network values are parsed here and
/// checked by the library (rules, free ports) before anything is built.
pub fn machine_params(m: &MachineArgs) -> anyhow::Result<vmkit::MachineParams> {
    let (network, publish) = m.net.parse()?;
    Ok(vmkit::MachineParams {
        memory_mib: m.memory,
        cpus: m.cpus,
        disks: m.disk.clone(),
        volumes: m.volume.clone(),
        env: m.env.iter().cloned().collect(),
        cwd: m.workdir.clone(),
        user: m.user.clone(),
        kernel: m.kernel.clone(),
        kernel_args: m.kernel_args.clone(),
        arch: m.arch,
        network,
        publish,
    })
}

/// The kernel (built on first use, with progress) and the image's root disk.
pub fn prepare_disks(
    rt: &vmkit::Runtime,
    image: &str,
    machine: &MachineArgs,
    global: &Global,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let arch = machine
        .arch
        .unwrap_or_else(vmkit::protocol::GuestArch::host);
    rt.preflight(&machine.volume).map_err(exit::classify)?;
    let mut reporter = crate::commands::kernel::Reporter::new(global.json);
    let kernel = rt
        .kernel(arch, machine.kernel.as_deref(), &mut |ev| {
            reporter.event(ev)
        })
        .map_err(exit::classify);
    reporter.finish();
    let kernel = kernel?;
    let progress = !global.json && std::io::stderr().is_terminal();
    let rootfs = rt.rootfs(image, arch, progress).map_err(exit::classify)?;
    Ok((kernel, rootfs.path))
}

pub(crate) fn report(event: &vmkit::protocol::Event, global: &Global) {
    // With --json the observer printed it already.
    if !global.json {
        eprintln!(
            "{}: {} ({})",
            event.identity.runtime_id, event.state, event.detail
        );
    }
}

pub fn create(args: CreateArgs, global: &Global) -> anyhow::Result<u8> {
    let image = match (&args.image, &args.from_snapshot) {
        (_, Some(from)) => return crate::commands::snapshot::fork(&args.name, from, global),
        (Some(image), None) => image,
        (None, None) => anyhow::bail!("create needs --image or --from-snapshot"),
    };
    let rt = runtime(global, args.machine.backend)?;
    let params = machine_params(&args.machine)?;
    rt.check_machine(&params).map_err(exit::classify)?;
    let (kernel, rootfs) = prepare_disks(&rt, image, &args.machine, global)?;
    let event = rt
        .create(&args.name, image, &kernel, &rootfs, &params)
        .map_err(exit::classify)?;
    report(&event, global);
    Ok(0)
}

pub fn start(args: StartArgs, global: &Global) -> anyhow::Result<u8> {
    let rt = workspace_runtime(global, &args.name)?;
    let event = match &args.from_snapshot {
        Some(tag) => rt.start_from_snapshot(&args.name, tag),
        None => rt.start(&args.name),
    }
    .map_err(exit::classify)?;
    report(&event, global);
    Ok(0)
}

pub(crate) fn simple(
    name: &str,
    global: &Global,
    f: impl FnOnce(&vmkit::Runtime) -> Result<vmkit::protocol::Event, vmkit::VmkitError>,
) -> anyhow::Result<u8> {
    let rt = workspace_runtime(global, name)?;
    let event = f(&rt).map_err(exit::classify)?;
    report(&event, global);
    Ok(0)
}

pub fn halt(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    simple(&args.name, global, |rt| rt.halt(&args.name))
}

pub fn stop(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    simple(&args.name, global, |rt| rt.stop(&args.name))
}

pub fn kill(args: NameArgs, global: &Global) -> anyhow::Result<u8> {
    simple(&args.name, global, |rt| rt.kill(&args.name))
}

pub fn delete(args: DeleteArgs, global: &Global) -> anyhow::Result<u8> {
    let rt = workspace_runtime(global, &args.name)?;
    rt.delete(&args.name, args.force).map_err(exit::classify)?;
    if global.json {
        println!(
            "{}",
            serde_json::json!({"type": "deleted", "name": args.name})
        );
    } else {
        eprintln!("{}: deleted", args.name);
    }
    Ok(0)
}

pub fn gc(global: &Global) -> anyhow::Result<u8> {
    let rt = quiet_runtime(global)?;
    let report = rt.gc().map_err(exit::classify)?;
    if global.json {
        let line = serde_json::json!({"type": "gc", "cleaned": report.cleaned, "removedMemory": report.removed_memory});
        println!("{line}");
        return Ok(0);
    }
    if report.cleaned.is_empty() && report.removed_memory.is_empty() {
        eprintln!("nothing to clean up");
    }
    for name in report.cleaned {
        eprintln!("{name}: cleaned up (marked failed)");
    }
    for removed in report.removed_memory {
        eprintln!("{removed}");
    }
    Ok(0)
}

pub fn list(global: &Global) -> anyhow::Result<u8> {
    let records = listing_runtime(global)?
        .workspaces()
        .map_err(exit::classify)?;
    if global.json {
        for r in &records {
            crate::output::print_typed("workspace", r)?;
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
    let record = listing_runtime(global)?
        .workspace(&args.name)
        .map_err(exit::classify)?;
    if global.json {
        crate::output::print_typed("workspace", &record)?;
    } else {
        println!("name:     {}", record.name);
        println!("state:    {}", record.state);
        println!("backend:  {}", record.backend);
        println!("image:    {}", record.image);
        println!("memory:   {} MiB", record.config.memory_mib);
        println!("cpus:     {}", record.config.cpu_count);
        println!("created:  {}", record.created_at);
        for line in
            crate::commands::network::describe(&record.config.network, &record.config.publish)
        {
            println!("{line}");
        }
        if let Some(vmm) = record.vmm {
            println!("vmm pid:  {}", vmm.pid);
        }
    }
    Ok(0)
}

pub fn events(args: EventsArgs, global: &Global) -> anyhow::Result<u8> {
    let rt = quiet_runtime(global)?;
    let mut print = |line: &str| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if global.json {
            // The log's lines are events; --json shows them as `run` does.
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(mut event) if event.is_object() => {
                    event["type"] = "event".into();
                    writeln!(out, "{event}")?;
                }
                Ok(_) => tracing::warn!("skipping an event line that is not an object"),
                Err(e) => tracing::warn!("skipping a damaged event line: {e}"),
            }
        } else if let Ok(e) = serde_json::from_str::<vmkit::protocol::Event>(line) {
            writeln!(
                out,
                "{}  {:<9} {}",
                e.observed_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                e.state,
                e.detail
            )?;
        }
        out.flush()
    };
    rt.events(&args.name, args.follow, &mut print)
        .map_err(exit::classify)?;
    Ok(0)
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The workspace name.
    pub name: String,

    /// Print the console bytes exactly as the guest wrote them, terminal
    /// escapes included. Without it, control characters other than newline
    /// and tab are shown as visible escapes (`\x1b`), so a hostile guest
    /// cannot drive your terminal (retitle it, write your clipboard).
    #[arg(long)]
    pub raw: bool,
}

pub fn logs(args: LogsArgs, global: &Global) -> anyhow::Result<u8> {
    let text = quiet_runtime(global)?
        .console_log(&args.name)
        .map_err(exit::classify)?;
    if args.raw {
        std::io::stdout().write_all(&text)?;
    } else {
        std::io::stdout().write_all(vmkit::protocol::terminal_safe_bytes(&text).as_bytes())?;
    }
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
    fn volume_specs_parse_or_say_what_is_wrong() {
        let v = parse_volume("/srv/p:/work:ro").unwrap();
        assert_eq!(
            (v.host_path.as_str(), v.guest_path.as_str(), v.read_only),
            ("/srv/p", "/work", true)
        );
        let v = parse_volume("./proj:/work").unwrap();
        assert!(v.host_path.starts_with('/') && v.host_path.ends_with("/proj") && !v.read_only);
        assert!(parse_volume("/srv/p").is_err());
        assert!(parse_volume("/srv/p:work").is_err());
        assert!(parse_volume(":/work").is_err());
    }

    #[test]
    fn env_pairs_need_a_key() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}

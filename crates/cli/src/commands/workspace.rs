//! Workspace lifecycle: `create`, `start`, `exec`, `halt`, `stop`, `kill`,
//! `delete`, `list`, `status`, `events`, `logs`, `gc`.

use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use vmkit_protocol::{BackendKind, Disk, DiskMode};
use vmkit_state::StateStore;

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
    #[arg(long, value_name = "TAG")]
    pub from_snapshot: Option<String>,
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

/// The runtime for the chosen backend. Every command that touches the state
/// folder first cleans up VMs whose driving command died.
pub fn runtime(global: &Global, backend: Option<BackendKind>) -> anyhow::Result<vmkit::Runtime> {
    let choice = vmkit::select_backend(backend)?;
    let rt = vmkit::Runtime::new(
        &global.state_dir,
        choice.kind,
        crate::output::event_observer(global.json),
    )
    .map_err(exit::classify)?;
    clean_up_orphans(&rt);
    Ok(rt)
}

/// A runtime that prints no events: for `gc`, listings and the interrupt
/// watcher, whose output must not mix with event lines.
pub fn quiet_runtime(global: &Global) -> anyhow::Result<vmkit::Runtime> {
    let choice = vmkit::select_backend(None)?;
    vmkit::Runtime::new(&global.state_dir, choice.kind, None).map_err(exit::classify)
}

/// Runs gc, reporting on stderr; a failure here must not stop the command.
fn clean_up_orphans(rt: &vmkit::Runtime) {
    match rt.gc() {
        Ok(cleaned) => {
            for name in cleaned {
                tracing::warn!("cleaned up orphaned VM of workspace {name}");
            }
        }
        Err(e) => tracing::warn!("gc: {e}"),
    }
}

/// Reconciles records with reality before reporting them (a VM whose
/// driving command died must not show as running), without printing the
/// resulting events into a `--json` listing.
fn reconcile_quietly(global: &Global) {
    match quiet_runtime(global) {
        Ok(rt) => clean_up_orphans(&rt),
        Err(e) => tracing::warn!("gc: {e:#}"),
    }
}

pub fn machine_params(m: &MachineArgs) -> vmkit::MachineParams {
    vmkit::MachineParams {
        memory_mib: m.memory,
        cpus: m.cpus,
        disks: m.disk.clone(),
        env: m.env.iter().cloned().collect(),
        cwd: m.workdir.clone(),
        user: m.user.clone(),
        kernel: m.kernel.clone(),
        kernel_args: m.kernel_args.clone(),
        arch: m.arch,
    }
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
    rt.preflight().map_err(exit::classify)?;
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
    let (kernel, rootfs) = prepare_disks(&rt, image, &args.machine, global)?;
    let params = machine_params(&args.machine);
    let event = rt
        .create(&args.name, image, &kernel, &rootfs, &params)
        .map_err(exit::classify)?;
    report(&event, global);
    Ok(0)
}

pub fn start(args: StartArgs, global: &Global) -> anyhow::Result<u8> {
    let rt = runtime(global, backend_of(global, &args.name)?)?;
    let event = match &args.from_snapshot {
        Some(tag) => rt.start_from_snapshot(&args.name, tag),
        None => rt.start(&args.name),
    }
    .map_err(exit::classify)?;
    report(&event, global);
    Ok(0)
}

pub fn exec(args: ExecArgs, global: &Global) -> anyhow::Result<u8> {
    let rt = runtime(global, backend_of(global, &args.name)?)?;
    let stdin_is_data = !std::io::stdin().is_terminal();
    let request = vmkit::ExecRequest {
        argv: args.argv.clone(),
        env: args.env.iter().cloned().collect(),
        cwd: args.cwd.clone(),
        timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)),
        ..vmkit::ExecRequest::default()
    };
    let options = vmkit::ExecOptions {
        request,
        stdin: stdin_is_data.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>),
    };
    let result = if global.json {
        rt.exec(
            &args.name,
            options,
            &mut crate::output::JsonStream::stdout(),
            &mut crate::output::JsonStream::stderr(),
        )
    } else {
        rt.exec(
            &args.name,
            options,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
    }
    .map_err(exit::classify)?;
    let timed_out = result.timed_out;
    let code = if timed_out {
        exit::TIMEOUT
    } else {
        exit::code_of(&result)
    };
    if global.json {
        crate::output::print_result(
            &args.name,
            &result,
            code,
            serde_json::json!({"timedOut": timed_out}),
        );
    } else if timed_out {
        eprintln!(
            "microagent: timed out after {}s",
            args.timeout.unwrap_or_default()
        );
    }
    Ok(code)
}

/// The backend a workspace was created with, so later commands use it too.
pub(crate) fn backend_of(global: &Global, name: &str) -> anyhow::Result<Option<BackendKind>> {
    Ok(store(global)?.peek(name)?.map(|r| r.backend))
}

pub(crate) fn simple(
    name: &str,
    global: &Global,
    f: impl FnOnce(&vmkit::Runtime) -> Result<vmkit::protocol::Event, vmkit::VmkitError>,
) -> anyhow::Result<u8> {
    let rt = runtime(global, backend_of(global, name)?)?;
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
    let rt = runtime(global, backend_of(global, &args.name)?)?;
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
    let cleaned = rt.gc().map_err(exit::classify)?;
    if global.json {
        println!("{}", serde_json::json!({"type": "gc", "cleaned": cleaned}));
    } else if cleaned.is_empty() {
        eprintln!("nothing to clean up");
    } else {
        for name in cleaned {
            eprintln!("{name}: cleaned up (marked failed)");
        }
    }
    Ok(0)
}

pub fn list(global: &Global) -> anyhow::Result<u8> {
    reconcile_quietly(global);
    let records = store(global)?.list()?;
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
    reconcile_quietly(global);
    let record = store(global)?
        .peek(&args.name)?
        .with_context(|| format!("workspace {:?} does not exist", args.name))?;
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
            // The log's lines are events; --json shows them as `run` does.
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(event) => crate::output::print_typed("event", event)?,
                Err(e) => tracing::warn!("skipping a damaged event line: {e}"),
            }
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
    let store = store(global)?;
    if store.peek(&args.name)?.is_none() {
        anyhow::bail!("workspace {:?} does not exist", args.name);
    }
    let path = store.workspace_dir(&args.name)?.join("console.log");
    let text = vmkit::read_console(&path);
    use std::io::Write;
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
    fn env_pairs_need_a_key() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}

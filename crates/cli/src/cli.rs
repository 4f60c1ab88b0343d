//! The whole command-line surface, in one place.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;

const EXAMPLES: &str = "\
Examples:
  microagent run --image alpine --setup 'apk add git' --exec 'git --version'
  microagent run --image oci-layout:./img --exec 'python3 agent.py' -e KEY=VAL --timeout 600
  microagent create ws --image 127.0.0.1:5000/agent:latest && microagent start ws
  microagent exec ws -- sh -c 'echo hi > /root/note'
  microagent exec -it ws -- sh          (or: microagent shell ws)
  microagent cp ./project ws:/work && microagent cp ws:/work/out ./out
  microagent halt ws && microagent start ws && microagent delete --force ws

Exit codes of run and exec: the guest command's own, 0-255, unchanged (128+N if
killed by signal N). microagent's own outcomes: 124 timeout, 125 microagent failed,
126 a --setup command failed, 127 the VM did not boot, 130 interrupted. A guest
command may exit with those codes too; with --json the result line's
\"exitCodeSource\" says which: \"guest\" or \"microagent\".";

/// Run AI-agent workloads in Linux microVMs.
///
/// microagent turns an OCI image into an ext4 root disk, boots a microVM from
/// a kernel and that disk, runs `--setup` then `--exec` inside it, streams the
/// output and exits with the guest command's exit code.
#[derive(Debug, Parser)]
#[command(
    name = "microagent",
    version,
    propagate_version = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Print events and results as JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Where workspaces, images, kernels and caches live.
    #[arg(long, global = true, env = "MICROAGENT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// More diagnostics on stderr (once: info, twice: debug). MICROAGENT_LOG
    /// overrides. (No `-v`: that is `--volume`, as in docker.)
    #[arg(long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command sees.
#[derive(Debug, Clone)]
pub struct Global {
    /// JSON lines on stdout instead of human output.
    pub json: bool,
    /// The state folder, resolved.
    pub state_dir: PathBuf,
}

impl Cli {
    /// Resolves the global options (default state dir: `~/.microagent`).
    /// The state folder is made absolute here, once: every request and
    /// record below holds absolute paths.
    pub fn global(&self) -> anyhow::Result<Global> {
        let state_dir = self.state_dir.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".microagent")
        });
        let state_dir = std::path::absolute(&state_dir)
            .map_err(|e| anyhow::anyhow!("--state-dir {}: {e}", state_dir.display()))?;
        Ok(Global {
            json: self.json,
            state_dir,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run commands in a fresh microVM from an image, then tear it down (unless --keep).
    ///
    /// Exits with the guest command's exit code (0-255, unchanged); 124 on
    /// --timeout, 125 when microagent itself fails, 126 when a --setup command
    /// fails, 127 when the VM does not boot. With --json the result line's
    /// exitCodeSource says whether the code is the guest's or microagent's.
    Run(commands::run::RunArgs),
    /// Create a workspace from an image (prepared, not booted), or fork one from a snapshot (running).
    Create(commands::workspace::CreateArgs),
    /// Boot a workspace (or continue it from one of its snapshots); returns once its exec service answers.
    Start(commands::workspace::StartArgs),
    /// Run a command in a running workspace; exits with its exit code.
    ///
    /// `-i` streams stdin, `-t` gives the command a pseudo-terminal (with
    /// `-i` on a terminal, the host terminal is raw until it ends; window
    /// size follows). Without `-t`, SIGINT, SIGTERM and SIGHUP sent to
    /// microagent go to the command's process group, and microagent exits
    /// with the command's status (130 after an interrupt that killed it).
    Exec(commands::exec::ExecArgs),
    /// An interactive login shell in a running workspace (bash if the image
    /// has it, else /bin/sh); the session ends when the shell does.
    Shell(commands::exec::ShellArgs),
    /// Copy files and folders between the host and a workspace (docker cp's shape).
    Cp(commands::copy::CpArgs),
    /// Shut a workspace down cleanly, keeping its disk.
    Halt(commands::workspace::NameArgs),
    /// Stop a workspace (forcibly after a grace period), keeping its disk.
    Stop(commands::workspace::NameArgs),
    /// Kill a workspace's VM at once.
    Kill(commands::workspace::NameArgs),
    /// Delete a workspace and its disks (refused while running unless --force).
    Delete(commands::workspace::DeleteArgs),
    /// Pause a running workspace: its vCPUs stop, memory and connections are kept.
    ///
    /// A paused VM uses no host CPU. `exec` refuses until `resume`; `halt`
    /// and `stop` resume it first so the guest can shut down. State `paused`.
    Pause(commands::workspace::NameArgs),
    /// Resume a paused workspace: its processes continue where they were.
    Resume(commands::workspace::NameArgs),
    /// Save, list and delete snapshots of a workspace (memory, device state, disk).
    #[command(subcommand)]
    Snapshot(commands::snapshot::SnapshotCommand),
    /// List workspaces.
    #[command(alias = "ls")]
    List,
    /// Show one workspace's state and configuration.
    Status(commands::workspace::NameArgs),
    /// Print a workspace's lifecycle events.
    Events(commands::workspace::EventsArgs),
    /// Print a workspace's serial console log (control characters escaped
    /// unless --raw).
    Logs(commands::workspace::LogsArgs),
    /// Print a workspace's egress decisions (egress.jsonl), one per line.
    ///
    /// Every connection, UDP flow and DNS query the guest's network policy
    /// decided on: allow or deny, protocol, destination IP:port, the name
    /// and how it was known (dns, sni, host), the rule, why, and bytes each
    /// way. With --json each record is one JSON line of type `egress`.
    Egress(commands::network::EgressArgs),
    /// Clean up VMs of killed commands, and guest RAM of deleted state folders.
    ///
    /// Every command first cleans up the VMs of this state folder whose
    /// driving command died (their processes are killed, the workspaces
    /// marked failed). gc does that, then also frees guest RAM files on
    /// tmpfs (/dev/shm/microagent-<uid>/) whose state folder was removed by
    /// hand: of any state folder of this user's, never one a live process
    /// still maps. With --json it prints one line of type `gc`: `cleaned`
    /// (workspace names) and `removedMemory` [{`path`, `owner`, `bytes`}].
    Gc,
    /// Internal: the per-VM channel relay the QEMU backend starts (serial transport).
    ///
    /// Serves the hybrid-vsock convention on --uds over the multiplexed
    /// virtio-serial link QEMU connects to on --serial; exits when QEMU does.
    #[command(hide = true)]
    ChannelRelay(commands::relay::RelayArgs),
    /// Serve one protocol request: JSON on stdin, JSON on stdout (exit 0 iff ok).
    Supervisor,
    /// Build and manage guest kernels.
    #[command(subcommand)]
    Kernel(commands::kernel::KernelCommand),
    /// Pull, list and remove OCI images.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Build ext4 root disks from images.
    #[command(subcommand)]
    Rootfs(commands::rootfs::RootfsCommand),
    /// Serve MCP over stdio: runs and workspaces as tools for a model.
    #[command(long_about = commands::mcp::LONG_ABOUT)]
    Mcp(commands::mcp::McpArgs),
    /// Check this host: KVM, QEMU, e2fsprogs, vsock, kernel; and which backend `run` would use.
    Doctor(commands::doctor::DoctorArgs),
    /// Print version information.
    Version,
}

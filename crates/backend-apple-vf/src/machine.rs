//! The apple-vf backend under the shared lifecycle: [`AppleVfMachine`]
//! launches the Swift supervisor's per-VM process (`vm-host PLAN`) the way
//! the QEMU backend launches QEMU. That process boots the VM with
//! Virtualization.framework and bridges its vsock device to the workspace's
//! hybrid-vsock socket, so everything after the launch (config disk, guest
//! channel, events, halt, gc) is `vmkit_lifecycle::Lifecycle`, unchanged.
//!
//! The plan is plain JSON (`VMPlan` in `supervisors/applevf`); the process
//! says `running` or `failed <why>` on its stdout once the VM is up or not.
//! Everything here but the framework itself runs on Linux too, where the
//! Swift supervisor answers `failed ... not available`: the tests check the
//! handshake against the real binary.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;
use vmkit_lifecycle::vmm_files::{clone_log, open_log, rotate_console};
use vmkit_lifecycle::{
    spawn_supervised, BootPlan, LaunchGuard, Launched, Machine, Nic, Supervision, WorkspacePaths,
};
use vmkit_protocol::{
    Accelerator, BackendKind, CheckStatus, DiskMode, ErrorCode, GuestArch, HostInfo, MachineConfig,
    ProtocolError,
};

use crate::AppleVfBackend;

/// How long the per-VM process may take to say whether the VM runs.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The console log's cap per file (the supervisor keeps two).
const CONSOLE_LIMIT: u64 = 1 << 20;

/// What the per-VM process boots: the Swift `VMPlan`, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmPlan {
    /// The kernel (an uncompressed arm64 `Image` on Apple silicon).
    pub kernel_path: String,
    /// The whole kernel command line.
    pub command_line: String,
    /// Block devices in guest order: `/dev/vda` first.
    pub disks: Vec<PlanDisk>,
    /// vCPUs.
    pub cpu_count: u32,
    /// Guest memory.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u32,
    /// The hybrid-vsock socket the bridge serves.
    pub vsock_path: String,
    /// Host ports the guest may dial (forwarded to `<vsockPath>_<port>`).
    pub host_ports: Vec<u32>,
    /// Where the guest's virtio console goes.
    pub console_log: String,
    /// The console log's cap per file.
    pub console_limit_bytes: u64,
    /// The per-VM process's control socket: pause and resume reach the VM
    /// there (Virtualization.framework VMs live in the process that made
    /// them).
    pub control_socket: String,
    /// The NIC, if the VM has one: a virtio-net device on a
    /// `VZFileHandleNetworkDeviceAttachment` whose datagram socket is bound
    /// at `vmSocket` and connected to the network helper's `stackSocket`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<PlanNetwork>,
    /// Host folders, one virtio-fs device each
    /// (`VZVirtioFileSystemDeviceConfiguration` + `VZSingleDirectoryShare`).
    pub volumes: Vec<PlanVolume>,
    /// Continue from this saved machine state (`restoreMachineStateFrom`,
    /// macOS 14) instead of booting the kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
}

/// The machine state file in a snapshot folder (what
/// `saveMachineStateTo` writes).
pub const STATE_FILE: &str = "vm.vzstate";

/// The NIC of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanNetwork {
    /// The network helper's datagram socket (it is bound already).
    pub stack_socket: String,
    /// Where the VM's end of the link is bound.
    pub vm_socket: String,
    /// The guest NIC's MAC address.
    pub mac_address: String,
}

/// One shared host folder of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanVolume {
    /// The virtio-fs tag the guest init mounts (`vol<i>`).
    pub tag: String,
    /// The host folder.
    pub path: String,
    /// Shared read-only.
    pub read_only: bool,
}

/// One disk of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDisk {
    /// The image file.
    pub path: String,
    /// Attached read-only.
    pub read_only: bool,
}

impl VmPlan {
    /// The plan for one boot: disks in the order the lifecycle's boot spec
    /// names them (root, extras, config disk), the virtio console `hvc0`.
    pub fn for_boot(plan: &BootPlan) -> VmPlan {
        let c = &plan.config;
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut disks = vec![PlanDisk {
            path: path(&plan.root_disk),
            read_only: false,
        }];
        disks.extend(c.disks.iter().map(|d| PlanDisk {
            path: d.path.clone(),
            read_only: d.mode == DiskMode::Ro,
        }));
        disks.push(PlanDisk {
            path: path(&plan.paths.config_disk),
            read_only: true,
        });
        let mut command_line = format!("console=hvc0 panic=-1 {}", plan.kernel_args);
        if let Some(extra) = &c.kernel_args {
            command_line.push(' ');
            command_line.push_str(extra);
        }
        VmPlan {
            kernel_path: c.kernel_path.clone(),
            command_line,
            disks,
            cpu_count: c.cpu_count,
            memory_mib: c.memory_mib,
            vsock_path: path(&plan.paths.vsock),
            host_ports: vec![vmkit_channel::DEFAULT_CONTROL_PORT],
            console_log: path(&plan.paths.console_log),
            console_limit_bytes: CONSOLE_LIMIT,
            control_socket: path(&control_socket(&plan.paths)),
            network: match &plan.nic {
                Some(Nic::Datagram {
                    socket,
                    vmm_socket,
                    mac,
                }) => Some(PlanNetwork {
                    stack_socket: path(socket),
                    vm_socket: path(vmm_socket),
                    mac_address: mac.clone(),
                }),
                _ => None,
            },
            volumes: c
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| PlanVolume {
                    tag: vmkit_lifecycle::volumes::tag(i),
                    path: v.host_path.clone(),
                    read_only: v.read_only,
                })
                .collect(),
            restore_from: plan.restore.as_ref().map(|dir| path(&dir.join(STATE_FILE))),
        }
    }
}

/// The per-VM process's control socket in the workspace folder.
pub fn control_socket(paths: &WorkspacePaths) -> PathBuf {
    paths.dir.join("vm-control.sock")
}

/// Launches VMs through the Swift supervisor's per-VM process.
#[derive(Debug, Clone, Default)]
pub struct AppleVfMachine {
    client: AppleVfBackend,
}

impl AppleVfMachine {
    /// The supervisor from `$MICROAGENT_APPLEVF_SUPERVISOR` or PATH.
    pub fn new() -> Self {
        Self::default()
    }

    /// A machine over a given supervisor client.
    pub fn with_client(client: AppleVfBackend) -> Self {
        AppleVfMachine { client }
    }

    fn program(&self) -> PathBuf {
        self.client.program()
    }
}

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

impl Machine for AppleVfMachine {
    fn kind(&self) -> BackendKind {
        BackendKind::AppleVf
    }

    fn host(&self) -> HostInfo {
        use vmkit_protocol::Backend;
        self.client.host().unwrap_or_else(|e| HostInfo {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            accelerator: Accelerator::None,
            accelerator_reason: e.message,
            checks: Vec::new(),
        })
    }

    /// The supervisor answers and reports every check it makes (the
    /// framework, the entitlement) as passing.
    fn available(&self) -> Result<(), ProtocolError> {
        use vmkit_protocol::Backend;
        let host = self.client.host()?;
        if let Some(failed) = host.checks.iter().find(|c| c.status == CheckStatus::Fail) {
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "the apple-vf backend cannot run here: {}{}",
                    failed.detail,
                    failed
                        .remedy
                        .as_deref()
                        .map(|r| format!("; {r}"))
                        .unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    fn check(&self, config: &MachineConfig) -> Result<(), ProtocolError> {
        self.available()?;
        if config.guest_arch() != GuestArch::host() {
            return Err(ProtocolError::invalid(format!(
                "config.arch {} cannot run here: Virtualization.framework runs only {} guests on this Mac",
                config.guest_arch(),
                GuestArch::host()
            )));
        }
        vmkit_lifecycle::check_config_files(config)
    }

    /// Pause and resume are the per-VM process's `pause`/`resume` control
    /// verbs (`VZVirtualMachine.pause`/`resume`).
    fn set_paused(&self, paths: &WorkspacePaths, paused: bool) -> Result<(), ProtocolError> {
        let (verb, want) = if paused {
            ("pause", vmkit_protocol::State::Paused)
        } else {
            ("resume", vmkit_protocol::State::Running)
        };
        let got = control(paths, verb, None)?;
        if got != want {
            return Err(internal(format!(
                "the VM's process answered {verb} with state {got}, not {want}"
            )));
        }
        Ok(())
    }

    /// The paused VM's state (devices and memory, one file) goes into the
    /// snapshot folder through the per-VM process's `save` verb
    /// (`saveMachineStateTo`, macOS 14); disks are the lifecycle's.
    fn save_state(
        &self,
        _config: &MachineConfig,
        paths: &WorkspacePaths,
        into: &Path,
    ) -> Result<(), ProtocolError> {
        let got = control(paths, "save", Some(&into.join(STATE_FILE)))?;
        if got != vmkit_protocol::State::Paused {
            return Err(internal(format!(
                "the VM's process answered save with state {got}, not paused"
            )));
        }
        Ok(())
    }

    fn launch(&self, plan: &BootPlan) -> Result<Launched, ProtocolError> {
        if let Some(snapshot) = &plan.restore {
            if !snapshot.join(STATE_FILE).is_file() {
                return Err(ProtocolError::invalid(format!(
                    "snapshot {} has no {STATE_FILE}: it was not taken on apple-vf",
                    snapshot.display()
                )));
            }
        }
        let supervision = if plan.detached {
            Supervision::Detached
        } else {
            Supervision::DiesWithParent
        };
        let plan_path = plan.paths.dir.join("vm-plan.json");
        let _ = std::fs::remove_file(control_socket(&plan.paths));
        let body = serde_json::to_vec(&VmPlan::for_boot(plan)).expect("plans serialize");
        std::fs::write(&plan_path, body)
            .map_err(|e| internal(format!("writing {}: {e}", plan_path.display())))?;
        rotate_console(&plan.paths.console_log);
        let log = open_log(&plan.paths.vmm_log)?;
        let program = self.program();
        // From here on, every early return kills what was started.
        let mut guard = LaunchGuard::new();
        let child = spawn_supervised(
            Command::new(&program)
                .arg("vm-host")
                .arg(&plan_path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(clone_log(&log)?),
            supervision,
        )
        .map_err(|e| {
            ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "starting the Apple VF supervisor {}: {e}",
                    program.display()
                ),
            )
        })?;
        let status = guard.vmm(child).stdout.take().expect("stdout is piped");
        match read_status(status, LAUNCH_TIMEOUT) {
            Some(line) if line == "running" => guard.disarm(),
            other => {
                let why = match other {
                    Some(line) => line.strip_prefix("failed ").unwrap_or(&line).to_owned(),
                    None => "it exited or hung before the VM ran; see vmm.log in the workspace"
                        .to_owned(),
                };
                let code = if why.contains("not available") || why.contains("entitlement") {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::Internal
                };
                Err(ProtocolError::new(
                    code,
                    format!("the Apple VF supervisor did not boot the VM: {why}"),
                ))
            }
        }
    }
}

/// How long the per-VM process may take to pause or resume the VM (it
/// waits up to 30 s for the framework itself).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(35);
/// Largest control answer read (the Swift side's `maxControlLine`).
const MAX_CONTROL_LINE: u64 = 64 << 10;

/// The per-VM process's answer on its control socket (Swift
/// `ControlResponse`).
#[derive(Debug, serde::Deserialize)]
struct ControlResponse {
    ok: bool,
    state: Option<vmkit_protocol::State>,
    error: Option<ProtocolError>,
}

/// Sends one control verb (`pause`, `resume`) to the per-VM process and
/// returns the state it reports. Its answer is untrusted: bounded, parsed,
/// checked.
pub fn control(
    paths: &WorkspacePaths,
    verb: &str,
    path: Option<&Path>,
) -> Result<vmkit_protocol::State, ProtocolError> {
    use std::io::Write;
    let socket = control_socket(paths);
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| {
        ProtocolError::new(
            ErrorCode::InvalidState,
            format!(
                "the VM's process is not answering on {}: {e}",
                socket.display()
            ),
        )
    })?;
    stream
        .set_read_timeout(Some(CONTROL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CONTROL_TIMEOUT)))
        .map_err(|e| internal(format!("control socket: {e}")))?;
    let mut request = serde_json::json!({ "verb": verb });
    if let Some(path) = path {
        request["path"] = path.to_string_lossy().into_owned().into();
    }
    let request = request.to_string() + "\n";
    stream
        .write_all(request.as_bytes())
        .map_err(|e| internal(format!("sending {verb} to the VM's process: {e}")))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_CONTROL_LINE))
        .read_line(&mut line)
        .map_err(|e| internal(format!("reading the VM's process's answer to {verb}: {e}")))?;
    let answer: ControlResponse = serde_json::from_str(line.trim_end()).map_err(|e| {
        internal(format!(
            "the VM's process answered {verb} with something else than a control response: {e}"
        ))
    })?;
    match answer {
        ControlResponse {
            ok: true,
            state: Some(state),
            ..
        } => Ok(state),
        ControlResponse {
            ok: false,
            error: Some(error),
            ..
        } => Err(error),
        _ => Err(internal(format!(
            "the VM's process gave an incomplete answer to {verb}: {}",
            line.trim_end()
        ))),
    }
}

/// The per-VM process's one status line (at most 4 KiB), or `None` when it
/// closes its stdout or says nothing within `timeout`.
fn read_status(stdout: impl Read + Send + 'static, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = BufReader::new(stdout.take(4096)).read_line(&mut line);
        let _ = tx.send(
            got.ok()
                .filter(|n| *n > 0)
                .map(|_| line.trim_end().to_owned()),
        );
    });
    rx.recv_timeout(timeout).ok().flatten()
}

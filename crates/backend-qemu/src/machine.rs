use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use vmkit_host::{find_in_path, probe_kvm, Tool};
use vmkit_lifecycle::vmm_files::{clone_log, rotate_console, spawn_console_relay, spawn_log_relay};
use vmkit_lifecycle::{
    spawn_supervised, BootPlan, LaunchGuard, Launched, Machine, Nic, Supervision, WorkspacePaths,
};
use vmkit_protocol::{
    Accelerator, BackendKind, DiskMode, ErrorCode, GuestArch, HostInfo, MachineConfig,
    ProtocolError,
};

use crate::choose_accelerator;
use crate::qmp::{self, QmpClient, QmpError};

/// The guest's vsock context ID. Each VM has its own vhost-device-vsock, so
/// every guest can use the same one.
const GUEST_CID: u32 = 3;
/// How long vhost-device-vsock may take to create its socket.
const VHOST_READY: Duration = Duration::from_secs(10);
/// QEMU's QMP socket in the workspace folder (pause, resume, snapshots).
pub const QMP_SOCKET: &str = "qmp.sock";

/// Launches QEMU microVMs.
#[derive(Debug, Default)]
pub struct QemuMachine {
    accel: OnceLock<(Accelerator, String)>,
    fail_at: Option<usize>,
}

impl QemuMachine {
    /// A machine that probes KVM on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// A machine whose launches fail at their `n`-th step (see
    /// [`LaunchGuard::failing_at`]): for failure-injection tests.
    pub fn failing_at_step(n: usize) -> Self {
        QemuMachine {
            fail_at: Some(n),
            ..Self::default()
        }
    }

    /// The accelerator this host gets (probed once per process).
    pub fn accelerator(&self) -> &(Accelerator, String) {
        self.accel.get_or_init(|| choose_accelerator(&probe_kvm()))
    }

    /// The accelerator for a guest of `arch`: the host's for its own
    /// architecture; TCG for another one (KVM runs only native guests).
    pub fn accelerator_for(&self, arch: GuestArch) -> (Accelerator, String) {
        if arch == GuestArch::host() {
            return self.accelerator().clone();
        }
        (
            Accelerator::Tcg,
            format!(
                "an {arch} guest on an {} host is emulated with TCG",
                GuestArch::host()
            ),
        )
    }

    /// The QEMU program for a guest of `arch`, and how to get it.
    fn qemu_for(arch: GuestArch) -> (Tool, &'static str) {
        match arch {
            GuestArch::X86_64 => (
                Tool::Qemu,
                "install it (Debian: apt-get install qemu-system-x86)",
            ),
            GuestArch::Aarch64 => (
                Tool::QemuAarch64,
                "install it (Debian: apt-get install qemu-system-arm)",
            ),
        }
    }

    fn tool(tool: Tool, remedy: &str) -> Result<PathBuf, ProtocolError> {
        find_in_path(tool.program()).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::Unavailable,
                format!("{} not found in PATH; {remedy}", tool.program()),
            )
        })
    }

    /// The QEMU command line for `plan` (without the program).
    ///
    /// x86_64 guests get `-M microvm` with virtio-mmio devices; aarch64
    /// guests `-M virt` with virtio-pci devices (PCI enumerates in command
    /// line order, so `/dev/vda` is still the root disk; virt's mmio slots
    /// are probed in reverse).
    pub fn qemu_args(&self, plan: &BootPlan, vhost_socket: &Path) -> Vec<String> {
        let c = &plan.config;
        let arch = c.guest_arch();
        let (accel, _) = self.accelerator_for(arch);
        let mem = format!("{}M", c.memory_mib);
        let (machine, cpu, base, blk, vsock) = match arch {
            GuestArch::X86_64 => (
                vmkit_kernel::boot::qemu_microvm_machine(),
                vmkit_kernel::boot::qemu_cpu_model(),
                vmkit_kernel::boot::kernel_cmdline_base(true),
                "virtio-blk-device",
                "vhost-user-vsock-device",
            ),
            GuestArch::Aarch64 => (
                vmkit_kernel::boot::QEMU_VIRT_MACHINE,
                vmkit_kernel::boot::qemu_aarch64_cpu_model(),
                vmkit_kernel::boot::qemu_virt_cmdline_base(true),
                "virtio-blk-pci",
                "vhost-user-vsock-pci",
            ),
        };
        let mut cmdline = base;
        cmdline.push(' ');
        cmdline.push_str(&plan.kernel_args);
        if let Some(extra) = &c.kernel_args {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        let mut args: Vec<String> = vec![
            "-M".into(),
            format!("{machine},memory-backend=mem"),
            "-accel".into(),
            match accel {
                Accelerator::Kvm => "kvm".into(),
                _ => "tcg".into(),
            },
            "-cpu".into(),
            match accel {
                Accelerator::Kvm => "host".into(),
                _ => cpu.into(),
            },
            "-m".into(),
            mem.clone(),
            "-smp".into(),
            c.cpu_count.to_string(),
            // vhost-user needs guest memory it can map: a shared memfd.
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            // A plain argument, not an option string: no escaping.
            "-kernel".into(),
            c.kernel_path.clone(),
            "-append".into(),
            cmdline,
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            // The serial console is QEMU's stdout, which the console relay
            // caps (see vmm_files::spawn_console_relay).
            "-chardev".into(),
            "stdio,id=console,signal=off".into(),
            "-serial".into(),
            "chardev:console".into(),
            // QEMU listens; later commands (pause, resume) connect.
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                qemu_escape(&plan.paths.dir.join(QMP_SOCKET))
            ),
        ];
        let mut drive = |id: &str, path: &Path, read_only: bool| {
            args.push("-drive".into());
            args.push(format!(
                "id={id},file={},format=raw,if=none,discard=unmap{}",
                qemu_escape(path),
                if read_only { ",readonly=on" } else { "" }
            ));
            args.push("-device".into());
            args.push(format!("{blk},drive={id}"));
        };
        drive("root", &plan.root_disk, false);
        for (i, d) in c.disks.iter().enumerate() {
            drive(
                &format!("disk{i}"),
                Path::new(&d.path),
                d.mode == DiskMode::Ro,
            );
        }
        drive("config", &plan.paths.config_disk, true);
        args.extend([
            "-chardev".into(),
            format!("socket,id=vsock,path={}", qemu_escape(vhost_socket)),
            "-device".into(),
            format!("{vsock},chardev=vsock"),
        ]);
        args.extend(nic_args(plan.nic.as_ref()));
        args.extend(crate::volumes::qemu_args(&plan.paths.dir, c.volumes.len()));
        args
    }
}

/// The guest NIC: virtio-net on a stream socket the network helper listens
/// on (QEMU connects as the client; frames travel length-prefixed). No TAP,
/// no root. No NIC at all without a plan for one.
fn nic_args(nic: Option<&Nic>) -> Vec<String> {
    match nic {
        Some(Nic::Stream { socket, mac }) => vec![
            "-netdev".into(),
            format!(
                "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                qemu_escape(socket)
            ),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ],
        Some(Nic::Tap { name, mac }) => vec![
            "-netdev".into(),
            format!("tap,id=net0,ifname={name},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ],
        None => Vec::new(),
    }
}

/// QEMU's option syntax splits on commas; a literal comma is doubled.
fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

impl Machine for QemuMachine {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn host(&self) -> HostInfo {
        let (accelerator, accelerator_reason) = self.accelerator().clone();
        HostInfo {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            accelerator,
            accelerator_reason,
            checks: Vec::new(),
        }
    }

    fn available(&self) -> Result<(), ProtocolError> {
        Self::tool(
            Tool::Qemu,
            "install it (Debian: apt-get install qemu-system-x86)",
        )?;
        Self::tool(
            Tool::VhostDeviceVsock,
            "install it (cargo install --locked vhost-device-vsock)",
        )?;
        Ok(())
    }

    fn check(&self, config: &MachineConfig) -> Result<(), ProtocolError> {
        self.available()?;
        let (qemu, remedy) = Self::qemu_for(config.guest_arch());
        Self::tool(qemu, remedy)?;
        vmkit_lifecycle::check_config_files(config)
    }

    fn set_paused(&self, paths: &WorkspacePaths, paused: bool) -> Result<(), ProtocolError> {
        let socket = paths.dir.join(QMP_SOCKET);
        let qmp_err = |e: QmpError| internal(format!("{e}"));
        let mut qmp = QmpClient::connect(&socket, qmp::DEFAULT_TIMEOUT).map_err(qmp_err)?;
        qmp.execute(if paused { "stop" } else { "cont" }, None)
            .map_err(qmp_err)?;
        // `stop` returns once the vCPUs are out of guest code; the status
        // is the VMM's own word that they are.
        let status = qmp.status().map_err(qmp_err)?;
        let expected = if paused { "paused" } else { "running" };
        if status != expected {
            return Err(internal(format!(
                "QEMU reports run state {status:?} after {}",
                if paused { "stop" } else { "cont" }
            )));
        }
        Ok(())
    }

    fn launch(&self, plan: &BootPlan) -> Result<Launched, ProtocolError> {
        let (qemu, remedy) = Self::qemu_for(plan.config.guest_arch());
        let qemu = Self::tool(qemu, remedy)?;
        let vhost = Self::tool(Tool::VhostDeviceVsock, "cargo install vhost-device-vsock")?;
        let supervision = if plan.detached {
            Supervision::Detached
        } else {
            Supervision::DiesWithParent
        };
        rotate_console(&plan.paths.console_log);
        let vhost_socket = plan.paths.dir.join("vhost.sock");
        let _ = std::fs::remove_file(&vhost_socket);
        // From here on, every early return kills what was started.
        let mut guard = LaunchGuard::new().failing_at(self.fail_at);
        guard.remove_on_failure(&vhost_socket);
        // QEMU's warnings are the guest's to provoke: the log is capped.
        let (log_relay, log) = spawn_log_relay(&plan.paths.vmm_log, supervision)?;
        guard.helper(log_relay);
        guard.checkpoint("vmm log relay started")?;

        // Separate flags, not `--vm key=value,...`: a path may hold a comma.
        let vhost_child = spawn_supervised(
            Command::new(&vhost)
                .arg("--guest-cid")
                .arg(GUEST_CID.to_string())
                .arg("--socket")
                .arg(&vhost_socket)
                .arg("--uds-path")
                .arg(&plan.paths.vsock)
                .stdin(Stdio::null())
                .stdout(clone_log(&log)?)
                .stderr(clone_log(&log)?),
            supervision,
        )
        .map_err(|e| internal(format!("starting vhost-device-vsock: {e}")))?;
        guard.helper(vhost_child);
        guard.checkpoint("vhost-device-vsock started")?;
        let vhost_child = guard.helper_mut(1);
        wait_for_socket(&vhost_socket, vhost_child, "vhost-device-vsock")?;
        guard.checkpoint("vhost-device-vsock ready")?;
        crate::volumes::start_servers(plan, &log, supervision, &mut guard)?;

        let args = self.qemu_args(plan, &vhost_socket);
        // One JSON array, so scripts/bench-run can replay the exact command.
        tracing::debug!(
            "qemu argv {}",
            serde_json::to_string(&args).unwrap_or_default()
        );
        let (relay, console) = spawn_console_relay(&plan.paths.console_log, supervision)?;
        guard.relay(relay);
        guard.checkpoint("console relay started")?;
        let vmm = spawn_supervised(
            Command::new(&qemu)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(console)
                .stderr(clone_log(&log)?),
            supervision,
        )
        .map_err(|e| internal(format!("starting {}: {e}", qemu.display())))?;
        guard.vmm(vmm);
        // Only the children hold the log's write end now: the relay ends
        // when they do.
        drop(log);
        guard.checkpoint("qemu started")?;
        guard.disarm()
    }
}

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

/// Waits until helper `what` (a vhost-user backend) has created its socket.
pub(crate) fn wait_for_socket(
    path: &Path,
    child: &mut Child,
    what: &str,
) -> Result<(), ProtocolError> {
    let deadline = Instant::now() + VHOST_READY;
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(internal(format!(
                "{what} exited at start ({status}); see vmm.log in the workspace"
            )));
        }
        if Instant::now() >= deadline {
            return Err(internal(format!(
                "{what} did not create {} within {}s",
                path.display(),
                VHOST_READY.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmkit_lifecycle::WorkspacePaths;
    use vmkit_protocol::Disk;

    /// Splits a QEMU option string the way QEMU does: on single commas,
    /// with `,,` a literal comma.
    fn qemu_options(s: &str) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    out.last_mut().unwrap().push(',');
                } else {
                    out.push(String::new());
                }
            } else {
                out.last_mut().unwrap().push(c);
            }
        }
        out
    }

    fn option<'a>(options: &'a [String], key: &str) -> Option<&'a str> {
        options
            .iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }

    #[test]
    fn every_path_in_an_option_string_survives_commas() {
        let dir = Path::new("/tmp/a,b/ws,1");
        let paths = WorkspacePaths::new(dir).unwrap();
        let disk = "/data/x,y.img";
        let plan = BootPlan {
            config: MachineConfig {
                disks: vec![Disk {
                    name: "d".into(),
                    path: disk.into(),
                    mountpoint: "/d".into(),
                    mode: DiskMode::Ro,
                }],
                ..MachineConfig::new("/k,ernel", paths.disk.to_string_lossy(), "/tmp/a,b", 128, 1)
            },
            paths: paths.clone(),
            root_disk: paths.disk.clone(),
            kernel_args: String::new(),
            detached: false,
            nic: None,
        };
        let vhost = dir.join("vhost.sock");
        let args = QemuMachine::new().qemu_args(&plan, &vhost);
        let values = |flag: &str| -> Vec<Vec<String>> {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| qemu_options(&w[1]))
                .collect()
        };
        let files: Vec<String> = values("-drive")
            .iter()
            .map(|o| option(o, "file").unwrap().to_owned())
            .collect();
        assert_eq!(
            files,
            [
                paths.disk.to_string_lossy().into_owned(),
                disk.to_owned(),
                paths.config_disk.to_string_lossy().into_owned()
            ]
        );
        let sockets: Vec<String> = values("-chardev")
            .iter()
            .filter_map(|o| option(o, "path").map(str::to_owned))
            .collect();
        assert_eq!(sockets, [vhost.to_string_lossy().into_owned()]);
        // -kernel takes a plain path.
        let kernel = args.iter().position(|a| a == "-kernel").unwrap();
        assert_eq!(args[kernel + 1], "/k,ernel");
    }
}

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use vmkit_host::{probe_kvm, Tool};
use vmkit_lifecycle::vmm_files::{
    clone_log, kill_child, rotate_console, spawn_console_relay, spawn_log_relay,
};
use vmkit_lifecycle::{spawn_supervised, BootPlan, Launched, Machine, Supervision, WorkspacePaths};
use vmkit_protocol::{
    Accelerator, BackendKind, DiskMode, ErrorCode, GuestArch, HostInfo, MachineConfig,
    ProtocolError,
};

use crate::choose_accelerator;
use crate::qmp::{self, QmpClient, QmpError};
use crate::transport::{tool, Transport};

/// QEMU's QMP socket in the workspace folder (pause, resume, snapshots).
pub const QMP_SOCKET: &str = "qmp.sock";

/// Launches QEMU microVMs.
#[derive(Debug)]
pub struct QemuMachine {
    accel: OnceLock<(Accelerator, String)>,
    transport: Result<Transport, ProtocolError>,
}

impl Default for QemuMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl QemuMachine {
    /// A machine that probes KVM on first use, with the transport
    /// `MICROAGENT_QEMU_TRANSPORT` names (serial by default).
    pub fn new() -> Self {
        Self::with_transport(Transport::from_env())
    }

    /// A machine with a given transport.
    pub fn with_transport(transport: Result<Transport, ProtocolError>) -> Self {
        QemuMachine {
            accel: OnceLock::new(),
            transport,
        }
    }

    /// The host<->guest transport of this machine's VMs.
    pub fn transport(&self) -> Result<Transport, ProtocolError> {
        self.transport.clone()
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

    /// The QEMU command line for `plan` (without the program).
    ///
    /// x86_64 guests get `-M microvm` with virtio-mmio devices; aarch64
    /// guests `-M virt` with virtio-pci devices (PCI enumerates in command
    /// line order, so `/dev/vda` is still the root disk; virt's mmio slots
    /// are probed in reverse).
    pub fn qemu_args(
        &self,
        plan: &BootPlan,
        transport: Transport,
        helper_socket: &Path,
    ) -> Vec<String> {
        let c = &plan.config;
        let arch = c.guest_arch();
        let (accel, _) = self.accelerator_for(arch);
        let mem = format!("{}M", c.memory_mib);
        let (machine, cpu, base, blk, pci) = match arch {
            GuestArch::X86_64 => (
                vmkit_kernel::boot::qemu_microvm_machine(),
                vmkit_kernel::boot::qemu_cpu_model(),
                vmkit_kernel::boot::kernel_cmdline_base(true),
                "virtio-blk-device",
                false,
            ),
            GuestArch::Aarch64 => (
                vmkit_kernel::boot::QEMU_VIRT_MACHINE,
                vmkit_kernel::boot::qemu_aarch64_cpu_model(),
                vmkit_kernel::boot::qemu_virt_cmdline_base(true),
                "virtio-blk-pci",
                true,
            ),
        };
        let mut cmdline = base;
        cmdline.push(' ');
        cmdline.push_str(&plan.kernel_args);
        cmdline.push(' ');
        cmdline.push_str(&transport.kernel_arg());
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
            "-object".into(),
            transport.memory_backend(&plan.paths.memory, &mem),
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
        args.extend(transport.device_args(helper_socket, pci));
        args
    }
}

/// QEMU's option syntax splits on commas; a literal comma is doubled.
pub(crate) fn qemu_escape(path: &Path) -> String {
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
        tool(
            Tool::Qemu,
            "install it (Debian: apt-get install qemu-system-x86)",
        )?;
        self.transport()?.available()
    }

    fn check(&self, config: &MachineConfig) -> Result<(), ProtocolError> {
        self.available()?;
        let (qemu, remedy) = Self::qemu_for(config.guest_arch());
        tool(qemu, remedy)?;
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

    fn save_state(&self, paths: &WorkspacePaths, into: &Path) -> Result<(), ProtocolError> {
        crate::snapshot::save_state(
            self.transport()?,
            &paths.dir.join(QMP_SOCKET),
            &paths.memory,
            into,
        )
    }

    fn launch(&self, plan: &BootPlan) -> Result<Launched, ProtocolError> {
        let (qemu, remedy) = Self::qemu_for(plan.config.guest_arch());
        let qemu = tool(qemu, remedy)?;
        let transport = self.transport()?;
        let supervision = if plan.detached {
            Supervision::Detached
        } else {
            Supervision::DiesWithParent
        };
        rotate_console(&plan.paths.console_log);
        // QEMU's warnings are the guest's to provoke: the log is capped.
        let (mut log_relay, log) = spawn_log_relay(&plan.paths.vmm_log, supervision)?;
        let (mut vhost_child, helper_socket) = match transport.spawn_helper(plan, &log, supervision)
        {
            Ok(spawned) => spawned,
            Err(e) => {
                kill_child(&mut log_relay);
                return Err(e);
            }
        };

        let mut args = self.qemu_args(plan, transport, &helper_socket);
        if let Some(snapshot) = &plan.restore {
            match crate::snapshot::prepare_restore(snapshot, &plan.paths.memory) {
                Ok(extra) => args.extend(extra),
                Err(e) => {
                    kill_child(&mut vhost_child);
                    kill_child(&mut log_relay);
                    return Err(e);
                }
            }
        }
        // One JSON array, so scripts/bench-run can replay the exact command.
        tracing::debug!(
            "qemu argv {}",
            serde_json::to_string(&args).unwrap_or_default()
        );
        let (mut relay, console) = match spawn_console_relay(&plan.paths.console_log, supervision) {
            Ok(r) => r,
            Err(e) => {
                kill_child(&mut vhost_child);
                kill_child(&mut log_relay);
                return Err(e);
            }
        };
        let spawned = spawn_supervised(
            Command::new(&qemu)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(console)
                .stderr(clone_log(&log)?),
            supervision,
        );
        // Only the children hold the log's write end now: the relay ends
        // when they do.
        drop(log);
        match spawned {
            Ok(vmm) => {
                let mut launched = Launched {
                    vmm,
                    helpers: vec![vhost_child, log_relay],
                    relay: Some(relay),
                };
                if let Some(snapshot) = &plan.restore {
                    let qmp = plan.paths.dir.join(QMP_SOCKET);
                    if let Err(e) =
                        crate::snapshot::complete_restore(&qmp, snapshot, &mut launched.vmm)
                    {
                        launched.shut_down();
                        return Err(e);
                    }
                }
                Ok(launched)
            }
            Err(e) => {
                kill_child(&mut vhost_child);
                kill_child(&mut log_relay);
                kill_child(&mut relay);
                Err(internal(format!("starting {}: {e}", qemu.display())))
            }
        }
    }
}

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

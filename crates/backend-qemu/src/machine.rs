use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use vmkit_host::{probe_kvm, Tool};
use vmkit_lifecycle::vmm_files::{clone_log, rotate_console, spawn_console_relay, spawn_log_relay};
use vmkit_lifecycle::{
    spawn_supervised, spawn_supervised_passing, BootPlan, LaunchGuard, Launched, Machine, Nic,
    Supervision, WorkspacePaths,
};
use vmkit_protocol::{
    Accelerator, BackendKind, DiskMode, ErrorCode, GuestArch, HostInfo, MachineConfig,
    ProtocolError,
};

use crate::choose_accelerator;
use crate::qmp::{self, QmpClient, QmpError};
use crate::transport::{tool, Transport};

/// How long a helper (the channel's, a volume's) may take to create its
/// socket.
const HELPER_READY: Duration = Duration::from_secs(10);
/// The descriptors the channel relay finds its two sockets on.
const RELAY_FD: std::os::fd::RawFd = 3;
/// QEMU's QMP socket in the workspace folder (pause, resume, snapshots).
pub const QMP_SOCKET: &str = "qmp.sock";

/// Launches QEMU microVMs.
#[derive(Debug)]
pub struct QemuMachine {
    accel: OnceLock<(Accelerator, String)>,
    fail_at: Option<usize>,
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
            fail_at: None,
            transport,
        }
    }

    /// A machine whose launches fail at their `n`-th step (see
    /// [`LaunchGuard::failing_at`]): for failure-injection tests.
    pub fn failing_at_step(mut self, n: usize) -> Self {
        self.fail_at = Some(n);
        self
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
        if let Some(arg) = plan.nic.as_ref().and_then(Nic::guest_kernel_arg) {
            cmdline.push(' ');
            cmdline.push_str(arg);
        }
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
        args.extend(transport.device_args(helper_socket, pci));
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
            // vnet_hdr=on, as Firecracker opens it: the guest gets
            // checksum offload, the helper completes the checksums.
            format!("tap,id=net0,ifname={name},script=no,downscript=no,vnet_hdr=on"),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ],
        // QEMU's own datagram netdev speaks the same one-frame-per-datagram
        // frontend as Apple VF's file-handle attachment.
        Some(Nic::Datagram {
            socket,
            vmm_socket,
            mac,
        }) => vec![
            "-netdev".into(),
            format!(
                "dgram,id=net0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                qemu_escape(vmm_socket),
                qemu_escape(socket)
            ),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ],
        None => Vec::new(),
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

    fn save_state(
        &self,
        config: &MachineConfig,
        paths: &WorkspacePaths,
        into: &Path,
    ) -> Result<(), ProtocolError> {
        if !config.volumes.is_empty() {
            // QEMU 7.2 marks vhost-user-fs unmigratable: a `migrate`
            // fails with "State blocked by non-migratable device".
            return Err(ProtocolError::new(
                ErrorCode::Unsupported,
                "QEMU cannot save the memory of a VM with volumes (its vhost-user-fs devices cannot migrate); snapshot --disk-only works, or create the workspace without --volume",
            ));
        }
        crate::snapshot::save_state(&paths.dir.join(QMP_SOCKET), &paths.memory, into)
    }

    fn launch(&self, plan: &BootPlan) -> Result<Launched, ProtocolError> {
        let (qemu, remedy) = Self::qemu_for(plan.config.guest_arch());
        let qemu = tool(qemu, remedy)?;
        let transport = self.transport()?;
        if plan.restore.is_some() && transport != Transport::Serial {
            return Err(crate::snapshot::vsock_refusal());
        }
        let supervision = if plan.detached {
            Supervision::Detached
        } else {
            Supervision::DiesWithParent
        };
        rotate_console(&plan.paths.console_log);
        if transport == Transport::Serial {
            // Only this transport keeps guest RAM in a file (see memory_backend).
            vmkit_lifecycle::ensure_memory_dir(&plan.paths)?;
        }
        let helper_socket = transport.helper_socket(&plan.paths.dir);
        let _ = std::fs::remove_file(&helper_socket);
        // From here on, every early return kills what was started.
        let mut guard = LaunchGuard::new().failing_at(self.fail_at);
        guard.remove_on_failure(&helper_socket);
        // QEMU's warnings are the guest's to provoke: the log is capped.
        let (log_relay, log) = spawn_log_relay(&plan.paths.vmm_log, supervision)?;
        guard.helper(log_relay);
        guard.checkpoint("vmm log relay started")?;

        // Our own relay's sockets are bound here and handed over, so QEMU
        // can connect before the relay has started; vhost-device-vsock
        // binds its own, and is waited for.
        let relay_sockets = match transport {
            Transport::Serial => Some(
                vmkit_channel::relay::Relay::bind(&helper_socket, &plan.paths.vsock)
                    .map_err(|e| internal(format!("binding the channel's sockets: {e}")))?,
            ),
            Transport::Vsock => None,
        };
        let mut command = transport.helper_command(&helper_socket, &plan.paths.vsock)?;
        let mut pass = Vec::new();
        if let Some(sockets) = &relay_sockets {
            command.arg("--inherited-fds").arg(RELAY_FD.to_string());
            pass.extend(sockets.listeners().into_iter().zip(RELAY_FD..));
        }
        let helper = spawn_supervised_passing(
            command
                .stdin(Stdio::null())
                .stdout(clone_log(&log)?)
                .stderr(clone_log(&log)?),
            supervision,
            &pass,
        )
        .map_err(|e| internal(format!("starting {}: {e}", transport.helper_name())))?;
        drop(pass);
        drop(relay_sockets);
        guard.helper(helper);
        guard.checkpoint("channel helper started")?;
        if transport == Transport::Vsock {
            let helper = guard.helper_mut(1);
            wait_for_socket(&helper_socket, helper, transport.helper_name())?;
        }
        guard.checkpoint("channel helper ready")?;
        crate::volumes::start_servers(plan, &log, supervision, &mut guard)?;

        let mut args = self.qemu_args(plan, transport, &helper_socket);
        if let Some(snapshot) = &plan.restore {
            guard.remove_on_failure(&plan.paths.memory);
            args.extend(crate::snapshot::prepare_restore(
                snapshot,
                &plan.paths.memory,
            )?);
        }
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
        if let (Some(snapshot), Some(vmm)) = (&plan.restore, guard.vmm_mut()) {
            crate::snapshot::complete_restore(&plan.paths.dir.join(QMP_SOCKET), snapshot, vmm)?;
            guard.checkpoint("state restored")?;
        }
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
    let deadline = Instant::now() + HELPER_READY;
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
                HELPER_READY.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests;

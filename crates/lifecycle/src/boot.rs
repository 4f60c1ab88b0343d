//! Booting a workspace's VM: the boot spec, the launch, the guest init
//! connecting back and, for a workspace, its `ready`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmkit_channel::host::{Control, HostListener};
use vmkit_channel::{BootSpec, DiskMount, Mode, Ready, PROTOCOL_VERSION};
use vmkit_protocol::{DiskMode, ErrorCode, ProtocolError, State};
use vmkit_state::ProcessRecord;

use crate::lifecycle::BOOT_TIMEOUT;
use crate::machine::{BootPlan, Launched};
use crate::workspace::{
    guest_err, remove_stale_vm_files, remove_vm_files, with_console_tail, with_vmm_log_tail,
    Workspace,
};

/// A booted VM: its processes and the guest init's control connection.
pub(crate) struct Booted {
    pub(crate) launched: Launched,
    pub(crate) control: Control,
}

impl Workspace<'_> {
    /// Boots in `mode`, or with `restore` continues the memory snapshot in
    /// that folder. On success the guest's init has connected back (and,
    /// for a workspace, reported ready with a compatible protocol). On
    /// failure every process is gone and the workspace is `failed`.
    pub(crate) fn boot(
        &mut self,
        mode: Mode,
        detached: bool,
        restore: Option<PathBuf>,
    ) -> Result<Booted, ProtocolError> {
        self.transition(State::Starting, "launching VMM")?;
        let started = Instant::now();
        let restoring = restore.is_some();
        let (spec, plan, mut net) = match self.plan(mode, detached, restore) {
            Ok(p) => p,
            Err(e) => return Err(self.fail_boot(None, e)),
        };
        // The network helper is started before the VMM (which connects to
        // the socket bound for it) and says ready while the VMM starts; a
        // failure before the launch ends it here.
        let mut end_helpers = |e: ProtocolError| {
            for h in &mut net.helpers {
                crate::network::kill_child(h);
            }
            e
        };
        remove_stale_vm_files(self.paths());
        let listener = match HostListener::bind(&self.paths().vsock, spec.control_port) {
            Ok(l) => l,
            Err(e) => {
                let e = end_helpers(guest_err(format!("listening for the guest: {e}")));
                return Err(self.fail_boot(None, e));
            }
        };
        let mut launched = match self.locked.lifecycle.machine.launch(&plan) {
            Ok(l) => l,
            Err(e) => {
                let e = end_helpers(e);
                return Err(self.fail_boot(None, e));
            }
        };
        launched.helpers.append(&mut net.helpers);
        tracing::debug!("VMM launched");
        if let Some(ready) = net.ready.take() {
            if let Err(e) = ready.wait(&mut launched.helpers) {
                return Err(self.fail_boot(Some(launched), e));
            }
        }
        let connected = self.adopt(&launched, detached).and_then(|()| {
            let mut control =
                accept(&listener, &mut launched, &self.peers()).map_err(|e| match e {
                    BootWait::VmmExited(e) => with_vmm_log_tail(e, self.paths()),
                    BootWait::Failed(e) => e,
                })?;
            if detached {
                let ready = control
                    .wait_ready(BOOT_TIMEOUT)
                    .map_err(|e| guest_err(format!("waiting for the guest to be ready: {e}")))?;
                self.record.exec_port = Some(check_ready(&ready, &spec)?);
            }
            Ok(control)
        });
        let control = match connected {
            Ok(c) => c,
            Err(e) => return Err(self.fail_boot(Some(launched), e)),
        };
        let verb = if restoring {
            "restored from a snapshot"
        } else {
            "booted"
        };
        let detail = format!("{verb} in {:.2}s", started.elapsed().as_secs_f64());
        if let Err(e) = self.transition(State::Running, &detail) {
            return Err(self.fail_boot(Some(launched), e));
        }
        Ok(Booted { launched, control })
    }

    /// The boot spec (written to the config disk), the backend's plan, and
    /// the network helper started for it (with its log relay and its
    /// pending `ready`).
    fn plan(
        &self,
        mode: Mode,
        detached: bool,
        restore: Option<PathBuf>,
    ) -> Result<(BootSpec, BootPlan, crate::network::NetworkBoot), ProtocolError> {
        let config = &self.record.config;
        // Extra disks are /dev/vdb... in request order; the config disk
        // follows. The disk count is bounded by validation, the letters too.
        let device = |i: usize| -> Result<String, ProtocolError> {
            u8::try_from(i)
                .ok()
                .and_then(|i| b'b'.checked_add(i))
                .filter(u8::is_ascii_lowercase)
                .map(|c| format!("/dev/vd{}", c as char))
                .ok_or_else(|| ProtocolError::invalid("too many disks for /dev/vd[b-z]"))
        };
        let disks = config
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Ok(DiskMount {
                    device: device(i)?,
                    mountpoint: d.mountpoint.clone(),
                    read_only: d.mode == DiskMode::Ro,
                    fs_type: None,
                })
            })
            .collect::<Result<_, ProtocolError>>()?;
        let workload = config.workload.clone().unwrap_or_default();
        let supervision = if detached {
            crate::Supervision::Detached
        } else {
            crate::Supervision::DiesWithParent
        };
        let mut net = crate::network::start(
            config,
            self.paths(),
            self.locked.lifecycle.machine.kind(),
            supervision,
        )?;
        let spec = BootSpec {
            volumes: crate::volumes::mounts(&config.volumes),
            hostname: Some(
                config
                    .hostname
                    .clone()
                    .unwrap_or_else(|| vmkit_protocol::hostname_for(&self.record.name)),
            ),
            disks,
            env: workload.env,
            cwd: workload.cwd,
            user: workload.user,
            mode,
            network: net.guest.take(),
            publish: net.publish.take(),
            ..BootSpec::default()
        };
        let paths = self.paths();
        if let Err(e) = vmkit_channel::write_config_disk(&paths.config_disk, &spec) {
            for h in &mut net.helpers {
                crate::network::kill_child(h);
            }
            return Err(ProtocolError::new(
                ErrorCode::Internal,
                format!("writing the config disk: {e}"),
            ));
        }
        let plan = BootPlan {
            config: config.clone(),
            paths: paths.clone(),
            root_disk: paths.disk.clone(),
            kernel_args: format!(
                "root=/dev/vda rw init=/sbin/microagent-init {}",
                vmkit_channel::kernel_args(&device(config.disks.len())?)
            ),
            detached,
            nic: net.nic.take(),
            restore,
        };
        Ok((spec, plan, net))
    }

    /// The processes allowed to forward the guest's connection: the VMM
    /// and its vsock helper (any other local process is refused).
    fn peers(&self) -> Vec<i32> {
        self.processes().iter().map(|p| p.pid).collect()
    }

    /// Records the launched processes so later commands (and gc) find them.
    fn adopt(&mut self, launched: &Launched, detached: bool) -> Result<(), ProtocolError> {
        let (vmm, helpers) = launched.records();
        self.record.vmm = vmm;
        self.record.helpers = helpers;
        self.record.owner = if detached {
            None
        } else {
            ProcessRecord::of(std::process::id() as i32)
        };
        self.save()
    }

    /// Ends a failed boot: processes, sockets, `failed` with the console's
    /// last lines in the message.
    fn fail_boot(&mut self, launched: Option<Launched>, error: ProtocolError) -> ProtocolError {
        let had_vm = launched.is_some();
        if let Some(mut l) = launched {
            l.shut_down();
        }
        remove_vm_files(self.paths());
        let error = if had_vm {
            with_console_tail(error, self.paths())
        } else {
            error
        };
        let _ = self.transition(State::Failed, &error.message);
        error
    }
}

/// Waits for the guest init to connect, in short slices so a VMM that dies
/// during boot is noticed at once rather than after the whole boot timeout.
/// Why waiting for the guest ended without it.
enum BootWait {
    /// The VMM process ended: its log says why.
    VmmExited(ProtocolError),
    Failed(ProtocolError),
}

fn accept(
    listener: &HostListener,
    launched: &mut Launched,
    peers: &[i32],
) -> Result<Control, BootWait> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        match listener.accept_from(Duration::from_millis(100), peers) {
            Ok(stream) => {
                tracing::debug!("guest connected");
                return Ok(Control::from_stream(stream));
            }
            Err(vmkit_channel::ChannelError::Timeout(_)) => {}
            Err(e @ vmkit_channel::ChannelError::WrongPeer { .. }) => {
                tracing::warn!("control socket: {e}");
            }
            Err(e) => {
                return Err(BootWait::Failed(guest_err(format!(
                    "accepting the guest: {e}"
                ))))
            }
        }
        if let Ok(Some(status)) = launched.vmm.try_wait() {
            // Under -no-reboot a guest reset (a kernel that cannot boot
            // here triple-faults) or power-off ends QEMU with status 0.
            let hint = if status.success() {
                ": the guest reset or powered off before its init connected (a kernel that does not boot on this machine, or an init that could not start)"
            } else {
                ""
            };
            return Err(BootWait::VmmExited(guest_err(format!(
                "the VMM exited during boot ({status}){hint}"
            ))));
        }
        if Instant::now() >= deadline {
            return Err(BootWait::Failed(ProtocolError::new(
                ErrorCode::Timeout,
                format!(
                    "the guest did not connect within {}s of boot",
                    BOOT_TIMEOUT.as_secs()
                ),
            )));
        }
    }
}

/// Checks the guest init's `ready` (it is guest data: hostile) and returns
/// the exec port it announced.
pub(crate) fn check_ready(ready: &Ready, spec: &BootSpec) -> Result<u32, ProtocolError> {
    if ready.protocol_version != PROTOCOL_VERSION {
        return Err(ProtocolError::new(
            ErrorCode::GuestFailure,
            format!(
                "the guest init speaks channel protocol version {}, this microagent speaks version {PROTOCOL_VERSION}; rebuild the root disk with a matching microagent-init (`microagent rootfs build`, or set MICROAGENT_INIT)",
                ready.protocol_version
            ),
        ));
    }
    if ready.exec_port == 0 || ready.exec_port == spec.control_port {
        return Err(guest_err(format!(
            "the guest announced exec port {}, which cannot be its exec service",
            ready.exec_port
        )));
    }
    Ok(ready.exec_port)
}

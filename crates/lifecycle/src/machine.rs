use std::path::PathBuf;
use std::process::Child;

use vmkit_protocol::{BackendKind, HostInfo, MachineConfig, ProtocolError};
use vmkit_state::ProcessRecord;

use crate::WorkspacePaths;

/// Everything a VMM needs for one boot, decided by [`crate::Lifecycle`].
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// The machine as requested.
    pub config: MachineConfig,
    /// The workspace's files.
    pub paths: WorkspacePaths,
    /// The root disk to attach as `/dev/vda` (the workspace's copy).
    pub root_disk: PathBuf,
    /// microagent's part of the kernel command line (root, init, config
    /// device); the backend adds console and machine-specific arguments and
    /// the user's `kernelArgs` go last.
    pub kernel_args: String,
    /// Whether the VM outlives the command that launches it (a workspace
    /// `start`) or dies with it (a one-shot `run`).
    pub detached: bool,
    /// Continue from the memory snapshot in this folder (written by
    /// [`Machine::save_state`]) instead of booting the kernel.
    pub restore: Option<PathBuf>,
}

/// The processes a launch started.
#[derive(Debug)]
pub struct Launched {
    /// The VMM.
    pub vmm: Child,
    /// Helpers to kill once the VMM is gone (e.g. vhost-device-vsock).
    pub helpers: Vec<Child>,
    /// The console relay: it ends by itself when the VMM's stdout closes,
    /// so it is given a moment to write the console's last lines (a
    /// panic message, say) before it would be killed.
    pub relay: Option<Child>,
}

impl Launched {
    /// Ends everything this launch started: the VMM and helpers at once,
    /// then the console relay once it has written what the VMM left it
    /// (it ends by itself at end-of-file; killed if it lingers).
    pub fn shut_down(&mut self) {
        let _ = self.vmm.kill();
        for h in &mut self.helpers {
            let _ = h.kill();
        }
        let _ = self.vmm.wait();
        for h in &mut self.helpers {
            let _ = h.wait();
        }
        if let Some(relay) = &mut self.relay {
            if !crate::process::wait_child(relay, std::time::Duration::from_secs(1)) {
                let _ = relay.kill();
                let _ = relay.wait();
            }
        }
    }

    /// The records to persist so later commands can find these processes.
    pub fn records(&self) -> (Option<ProcessRecord>, Vec<ProcessRecord>) {
        let vmm = ProcessRecord::of(self.vmm.id() as i32);
        let helpers = self
            .helpers
            .iter()
            .chain(self.relay.iter())
            .filter_map(|c| ProcessRecord::of(c.id() as i32))
            .collect();
        (vmm, helpers)
    }
}

/// Checks that the files a config names exist: the kernel and every extra
/// disk. Every backend's [`Machine::check`] starts with this.
pub fn check_config_files(config: &MachineConfig) -> Result<(), ProtocolError> {
    let kernel = std::path::Path::new(&config.kernel_path);
    if !kernel.is_file() {
        return Err(ProtocolError::invalid(format!(
            "kernel {} does not exist; run `microagent kernel build`",
            kernel.display()
        )));
    }
    for (i, d) in config.disks.iter().enumerate() {
        if !std::path::Path::new(&d.path).is_file() {
            return Err(ProtocolError::invalid(format!(
                "disks[{i}].path {} is not a file",
                d.path
            )));
        }
    }
    Ok(())
}

/// How one backend launches its VMM. Everything else is shared.
pub trait Machine: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Host facts as this backend sees them.
    fn host(&self) -> HostInfo;
    /// Whether this backend can run on this host at all (binaries present,
    /// accelerator usable), before any kernel or image work is done.
    fn available(&self) -> Result<(), ProtocolError> {
        Ok(())
    }
    /// Whether `config` can run here (what `available` checks, plus the
    /// kernel and disks it names).
    fn check(&self, config: &MachineConfig) -> Result<(), ProtocolError>;
    /// Starts the VMM (and its helpers) for `plan`. Returns once the VMM
    /// process runs; the guest's readiness is the lifecycle's business. On
    /// error, everything it started must already be gone.
    fn launch(&self, plan: &BootPlan) -> Result<Launched, ProtocolError>;
    /// Writes the paused VM's device state, and its memory, into the
    /// folder `into` (which exists and is empty), so that a launch with
    /// [`BootPlan::restore`] naming a copy of it continues the VM there.
    fn save_state(
        &self,
        paths: &WorkspacePaths,
        into: &std::path::Path,
    ) -> Result<(), ProtocolError> {
        let _ = (paths, into);
        Err(ProtocolError::new(
            vmkit_protocol::ErrorCode::Unsupported,
            format!("the {} backend cannot snapshot a VM's memory", self.kind()),
        ))
    }
    /// Stops (`paused` true) or restarts the vCPUs of the VM running in the
    /// workspace at `paths`, keeping memory, devices and connections.
    /// Returns once the VMM confirms the new run state.
    fn set_paused(&self, paths: &WorkspacePaths, paused: bool) -> Result<(), ProtocolError> {
        let _ = (paths, paused);
        Err(ProtocolError::new(
            vmkit_protocol::ErrorCode::Unsupported,
            format!("the {} backend cannot pause a VM", self.kind()),
        ))
    }
}

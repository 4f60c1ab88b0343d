use std::path::PathBuf;
use std::process::Child;

use vmkit_protocol::{BackendKind, ErrorCode, HostInfo, MachineConfig, ProtocolError};
use vmkit_state::ProcessRecord;

use crate::{Nic, WorkspacePaths};

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
    /// The network device to attach, already served by the VM's network
    /// helper; `None`: no NIC (network mode `none`).
    pub nic: Option<Nic>,
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
        end_processes(Some(&mut self.vmm), &mut self.helpers, self.relay.as_mut());
    }

    /// Sends the VMM and helpers SIGKILL without waiting, so that their
    /// exit (the VMM unmapping guest RAM takes ~10 ms) overlaps whatever
    /// the caller does next; [`Launched::shut_down`] then reaps them.
    pub fn kill(&mut self) {
        kill_processes(Some(&mut self.vmm), &mut self.helpers);
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

/// SIGKILL to the VMM and helpers, without waiting.
fn kill_processes(vmm: Option<&mut Child>, helpers: &mut [Child]) {
    if let Some(v) = vmm {
        let _ = v.kill();
    }
    for h in helpers.iter_mut() {
        let _ = h.kill();
    }
}

fn end_processes(vmm: Option<&mut Child>, helpers: &mut [Child], relay: Option<&mut Child>) {
    let mut vmm = vmm;
    kill_processes(vmm.as_deref_mut(), helpers);
    if let Some(v) = vmm {
        let _ = v.wait();
    }
    for h in helpers.iter_mut() {
        let _ = h.wait();
    }
    if let Some(relay) = relay {
        if !crate::process::wait_child(relay, std::time::Duration::from_secs(1)) {
            let _ = relay.kill();
            let _ = relay.wait();
        }
    }
}

/// Owns what a [`Machine::launch`] has started so far. Dropped before
/// [`LaunchGuard::disarm`] (an early `?`, a panic), it kills and reaps every
/// process in it and removes the files it was given, so a launch cannot
/// leak a process on any error path.
///
/// [`LaunchGuard::checkpoint`] marks the steps of a launch; a machine made
/// with a fault plan ([`LaunchGuard::failing_at`]) fails at the n-th one, so
/// tests can fail a launch after each step and check nothing is left.
#[derive(Debug, Default)]
pub struct LaunchGuard {
    vmm: Option<Child>,
    helpers: Vec<Child>,
    relay: Option<Child>,
    files: Vec<PathBuf>,
    fail_at: Option<usize>,
    steps: usize,
}

impl LaunchGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`-th [`LaunchGuard::checkpoint`] (from 0) fail: for
    /// failure-injection tests; `None` never fails.
    pub fn failing_at(mut self, n: Option<usize>) -> Self {
        self.fail_at = n;
        self
    }

    /// Takes a helper process (killed once the VMM is gone).
    pub fn helper(&mut self, child: Child) -> &mut Child {
        self.helpers.push(child);
        self.helpers.last_mut().expect("just pushed")
    }

    /// The `i`-th helper taken so far.
    pub fn helper_mut(&mut self, i: usize) -> &mut Child {
        &mut self.helpers[i]
    }

    /// Takes the console relay.
    pub fn relay(&mut self, child: Child) -> &mut Child {
        self.relay.insert(child)
    }

    /// Takes the VMM.
    pub fn vmm(&mut self, child: Child) -> &mut Child {
        self.vmm.insert(child)
    }

    /// The VMM taken so far.
    pub fn vmm_mut(&mut self) -> Option<&mut Child> {
        self.vmm.as_mut()
    }

    /// The VMM and the console relay taken so far, both at once.
    pub fn vmm_and_relay(&mut self) -> (Option<&mut Child>, Option<&mut Child>) {
        (self.vmm.as_mut(), self.relay.as_mut())
    }

    /// A file (a socket, say) to remove if the launch fails.
    pub fn remove_on_failure(&mut self, path: impl Into<PathBuf>) {
        self.files.push(path.into());
    }

    /// Marks the end of one launch step, named `what`; fails where the
    /// fault plan says.
    pub fn checkpoint(&mut self, what: &str) -> Result<(), ProtocolError> {
        let step = self.steps;
        self.steps += 1;
        if self.fail_at == Some(step) {
            return Err(ProtocolError::new(
                ErrorCode::Internal,
                format!("{INJECTED_FAILURE} after step {step} ({what})"),
            ));
        }
        Ok(())
    }

    /// The launch succeeded: hands its processes over, to be ended by
    /// [`Launched::shut_down`] (or left running, for a workspace).
    pub fn disarm(mut self) -> Result<Launched, ProtocolError> {
        let vmm = self.vmm.take().ok_or_else(|| {
            ProtocolError::new(ErrorCode::Internal, "a launch finished without a VMM")
        })?;
        self.files.clear();
        Ok(Launched {
            vmm,
            helpers: std::mem::take(&mut self.helpers),
            relay: self.relay.take(),
        })
    }
}

/// The start of the message of a failure [`LaunchGuard::failing_at`] injected.
pub const INJECTED_FAILURE: &str = "injected launch failure";

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        end_processes(self.vmm.as_mut(), &mut self.helpers, self.relay.as_mut());
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Checks that the files a config names exist: the kernel, every extra
/// disk and every volume's host folder. Every backend's [`Machine::check`]
/// starts with this.
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
    check_volume_folders(&config.volumes)
}

/// Checks that every volume's host path is an existing folder.
pub fn check_volume_folders(volumes: &[vmkit_protocol::Volume]) -> Result<(), ProtocolError> {
    for (i, v) in volumes.iter().enumerate() {
        match std::fs::metadata(&v.host_path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ProtocolError::invalid(format!(
                    "volumes[{i}]: {} is not a folder (a volume shares a folder; a file goes in with `microagent cp`)",
                    v.host_path
                )))
            }
            Err(e) => {
                return Err(ProtocolError::invalid(format!(
                    "volumes[{i}]: host folder {}: {e}",
                    v.host_path
                )))
            }
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
    /// Whether this backend can share these host folders (checked before
    /// any kernel or image work, like `available`).
    fn check_volumes(&self, _volumes: &[vmkit_protocol::Volume]) -> Result<(), ProtocolError> {
        Ok(())
    }
    /// Whether `config` can run here (what `available` checks, plus the
    /// kernel and disks it names).
    fn check(&self, config: &MachineConfig) -> Result<(), ProtocolError>;
    /// Starts the VMM (and its helpers) for `plan`. Returns once the VMM
    /// process runs; the guest's readiness is the lifecycle's business. On
    /// error, everything it started must already be gone: build the result
    /// in a [`LaunchGuard`].
    fn launch(&self, plan: &BootPlan) -> Result<Launched, ProtocolError>;
    /// Writes the paused VM's device state, and its memory, into the
    /// folder `into` (which exists and is empty), so that a launch with
    /// [`BootPlan::restore`] naming a copy of it continues the VM there.
    /// `config` is the machine the VM runs.
    fn save_state(
        &self,
        config: &MachineConfig,
        paths: &WorkspacePaths,
        into: &std::path::Path,
    ) -> Result<(), ProtocolError> {
        let _ = (config, paths, into);
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

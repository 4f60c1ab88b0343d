//! The library's front door for the CLI's workload commands: kernels and
//! root disks on demand, then runs and workspaces through the backend.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use vmkit_kernel::{BuildEvent, KernelStore};
use vmkit_lifecycle::{ExecOptions, Observer, RunOutput};
use vmkit_protocol::{
    BackendKind, Command, Disk, ErrorCode, Event, GuestArch, Identity, MachineConfig, Network,
    ProtocolError, PublishedPort, Request, RunResult, Workload,
};
use vmkit_rootfs::{BuildOptions, BuiltRootfs, ImageRef, RootfsBuilder};

use crate::{Driver, VmkitError};

/// The machine a run or workspace gets.
#[derive(Debug, Clone)]
pub struct MachineParams {
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Extra disks.
    pub disks: Vec<Disk>,
    /// Host folders shared with the guest (`-v HOST:GUEST[:ro]`).
    pub volumes: Vec<vmkit_protocol::Volume>,
    /// Extra environment for guest commands.
    pub env: BTreeMap<String, String>,
    /// Working directory override.
    pub cwd: Option<String>,
    /// User override.
    pub user: Option<String>,
    /// Use this kernel instead of the installed one.
    pub kernel: Option<PathBuf>,
    /// Extra kernel command-line arguments.
    pub kernel_args: Option<String>,
    /// The guest architecture (`None`: the host's).
    pub arch: Option<GuestArch>,
    /// Network mode and egress rules.
    pub network: Network,
    /// Host ports forwarded to guest ports.
    pub publish: Vec<PublishedPort>,
}

/// A one-shot run.
#[derive(Debug, Clone)]
pub struct RunParams {
    /// Workspace name (a fresh `run-<id>` when `None`).
    pub name: Option<String>,
    /// Setup commands, in order.
    pub setup: Vec<String>,
    /// The main command.
    pub exec: String,
    /// Whole-run deadline, seconds.
    pub timeout_seconds: Option<u64>,
    /// The image reference the root disk was built from, as the user gave
    /// it; recorded for listings.
    pub image: Option<String>,
    /// Keep the workspace afterwards.
    pub keep: bool,
    /// The machine.
    pub machine: MachineParams,
}

/// What [`Runtime::gc`] cleaned up.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Workspaces whose VM was cleaned up and marked failed.
    pub cleaned: Vec<String>,
    /// Guest RAM files of deleted state folders, removed.
    pub removed_memory: Vec<vmkit_lifecycle::OrphanedMemory>,
}

/// microagent's state folder plus the backend that serves it.
pub struct Runtime {
    state_dir: PathBuf,
    backend: BackendKind,
    driver: Box<dyn Driver>,
}

impl Runtime {
    /// A runtime over `state_dir` with `backend` (see [`crate::select_backend`]).
    /// `observer` sees every lifecycle event as it is recorded.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        backend: BackendKind,
        observer: Option<Observer>,
    ) -> Result<Self, VmkitError> {
        Ok(Runtime {
            state_dir: state_dir.into(),
            backend,
            driver: crate::driver_for(backend, observer),
        })
    }

    /// Fails early, with the remedy, when the backend cannot run on this
    /// host: better than finding out after a five-minute kernel build.
    /// `volumes` are the host folders the machine will share.
    pub fn preflight(&self, volumes: &[vmkit_protocol::Volume]) -> Result<(), VmkitError> {
        self.driver.check_volumes(volumes)?;
        Ok(self.driver.preflight()?)
    }

    /// Checks a machine's network rules and published ports (the ports
    /// must be free now), so bad input is refused before any kernel build
    /// or image pull. Errors name the flag and the value.
    pub fn check_network(&self, machine: &MachineParams) -> Result<(), VmkitError> {
        Ok(vmkit_lifecycle::network::validate(
            &machine.network,
            &machine.publish,
        )?)
    }

    /// The egress audit log of workspace `name` (`egress.jsonl`; the
    /// previous one, once rotated, is beside it as `egress.jsonl.1`).
    pub fn egress_log(&self, name: &str) -> Result<PathBuf, VmkitError> {
        let store = vmkit_state::StateStore::open(&self.state_dir)?;
        if store.peek(name)?.is_none() {
            return Err(ProtocolError::new(
                ErrorCode::NotFound,
                format!("workspace {name:?} does not exist"),
            )
            .into());
        }
        let paths = vmkit_lifecycle::WorkspacePaths::new(&store.workspace_dir(name)?)?;
        Ok(paths.egress_log)
    }

    /// The state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The driver serving this runtime's backend.
    pub(crate) fn driver(&self) -> &dyn crate::driver::Driver {
        self.driver.as_ref()
    }

    /// The installed kernel for `arch`, building it first when there is
    /// none (`progress` hears what the build is doing), or `explicit` if given.
    pub fn kernel(
        &self,
        arch: GuestArch,
        explicit: Option<&Path>,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<PathBuf, VmkitError> {
        if let Some(path) = explicit {
            return std::path::absolute(path).map_err(|e| {
                VmkitError::Protocol(ProtocolError::invalid(format!(
                    "--kernel {}: {e}",
                    path.display()
                )))
            });
        }
        let store = KernelStore::with_arch(&self.state_dir, arch.as_str());
        let kernel = vmkit_kernel::ensure_installed(&store, progress)?;
        Ok(kernel.vmlinux_path().to_owned())
    }

    /// The root disk for `image` (cached by digest), with the guest init in
    /// it: the image's `arch` platform (`linux/arm64` for aarch64) and that
    /// architecture's init.
    pub fn rootfs(
        &self,
        image: &str,
        arch: GuestArch,
        progress: bool,
    ) -> Result<BuiltRootfs, VmkitError> {
        let image = ImageRef::parse(image)?;
        let platform = vmkit_rootfs::Platform::parse(match arch {
            GuestArch::X86_64 => "linux/amd64",
            GuestArch::Aarch64 => "linux/arm64",
        })?;
        let options = BuildOptions {
            init_binary: Some(crate::find_guest_init_for(arch)?),
            platform: Some(platform),
            guest_network: Some(vmkit_lifecycle::network::standard_guest_network()),
            progress,
            ..BuildOptions::default()
        };
        Ok(RootfsBuilder::new(&self.state_dir).build(&image, &options)?)
    }

    pub(crate) fn request(
        &self,
        command: Command,
        name: &str,
        role: &str,
        config: Option<MachineConfig>,
        image: Option<&str>,
    ) -> Request {
        Request {
            command,
            identity: Identity {
                request_id: new_id(),
                runtime_id: name.to_owned(),
                role: role.to_owned(),
                backend: self.backend,
            },
            config,
            state_dir: Some(self.state_dir.to_string_lossy().into_owned()),
            image: image.map(str::to_owned),
            snapshot: None,
            from_snapshot: None,
        }
    }

    fn config(
        &self,
        kernel: &Path,
        rootfs: &Path,
        m: &MachineParams,
        workload: Option<Workload>,
    ) -> MachineConfig {
        MachineConfig {
            disks: m.disks.clone(),
            volumes: m.volumes.clone(),
            kernel_args: m.kernel_args.clone(),
            arch: m.arch,
            network: m.network.clone(),
            publish: m.publish.clone(),
            workload: workload.or_else(|| {
                // A workspace keeps its env/cwd/user for every boot.
                (!m.env.is_empty() || m.cwd.is_some() || m.user.is_some()).then(|| Workload {
                    setup: vec![],
                    exec: "true".into(),
                    env: m.env.clone(),
                    cwd: m.cwd.clone(),
                    user: m.user.clone(),
                    timeout_seconds: None,
                })
            }),
            ..MachineConfig::new(
                kernel.to_string_lossy(),
                rootfs.to_string_lossy(),
                self.state_dir.to_string_lossy(),
                m.memory_mib,
                m.cpus,
            )
        }
    }

    /// Checks a run's parameters the way the backend will, before any
    /// kernel or image work: a mistyped `--memory` must not cost a kernel
    /// build first.
    pub fn check_run(&self, params: &RunParams) -> Result<(), VmkitError> {
        let placeholder = Path::new("/");
        let config = self.config(
            placeholder,
            placeholder,
            &params.machine,
            Some(workload_of(params)),
        );
        config.validate()?;
        self.check_network(&params.machine)
    }

    /// [`Runtime::check_run`] for a workspace's machine.
    pub fn check_machine(&self, machine: &MachineParams) -> Result<(), VmkitError> {
        let placeholder = Path::new("/");
        self.config(placeholder, placeholder, machine, None)
            .validate()?;
        self.check_network(machine)
    }

    /// Runs `params` once in a fresh VM, streaming the guest's stdout and
    /// stderr to the sinks as they are produced.
    pub fn run(
        &self,
        params: &RunParams,
        kernel: &Path,
        rootfs: &Path,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunOutput, VmkitError> {
        let name = params.name.clone().unwrap_or_else(new_run_name);
        let config = self.config(kernel, rootfs, &params.machine, Some(workload_of(params)));
        let request = self.request(
            Command::Run,
            &name,
            "run",
            Some(config),
            params.image.as_deref(),
        );
        Ok(self
            .driver
            .run_streaming(&request, params.keep, stdout, stderr)?)
    }

    /// Creates a workspace (prepared) from a built root disk.
    pub fn create(
        &self,
        name: &str,
        image: &str,
        kernel: &Path,
        rootfs: &Path,
        machine: &MachineParams,
    ) -> Result<Event, VmkitError> {
        let config = self.config(kernel, rootfs, machine, None);
        let request = self.request(
            Command::Prepare,
            name,
            "workspace",
            Some(config),
            Some(image),
        );
        self.call(&request)
    }

    /// Boots a workspace with the machine it was created with; returns
    /// once its exec service is ready.
    pub fn start(&self, name: &str) -> Result<Event, VmkitError> {
        self.start_with(name, None)
    }

    /// [`Self::start`], continuing from a snapshot when `from` is given.
    pub(crate) fn start_with(
        &self,
        name: &str,
        from: Option<vmkit_protocol::SnapshotRef>,
    ) -> Result<Event, VmkitError> {
        let store = vmkit_state::StateStore::open(&self.state_dir)?;
        let record = store.peek(name)?.ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::NotFound,
                format!("workspace {name:?} does not exist"),
            )
        })?;
        let mut config = record.config;
        config.state_dir = self.state_dir.to_string_lossy().into_owned();
        let mut request = self.request(Command::Start, name, "workspace", Some(config), None);
        request.from_snapshot = from;
        self.call(&request)
    }

    /// Runs a command in a running workspace.
    pub fn exec(
        &self,
        name: &str,
        options: ExecOptions,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunResult, VmkitError> {
        Ok(self
            .driver
            .exec_streaming(&self.state_dir, name, options, stdout, stderr)?)
    }

    /// Clean shutdown; disk kept.
    pub fn halt(&self, name: &str) -> Result<Event, VmkitError> {
        self.call(&self.request(Command::Halt, name, "workspace", None, None))
    }

    /// Stop, forcibly after a grace period; disk kept.
    pub fn stop(&self, name: &str) -> Result<Event, VmkitError> {
        self.call(&self.request(Command::Stop, name, "workspace", None, None))
    }

    /// Kill at once; disk kept.
    pub fn kill(&self, name: &str) -> Result<Event, VmkitError> {
        self.call(&self.request(Command::Kill, name, "workspace", None, None))
    }

    /// Stops a running workspace's vCPUs (state `paused`).
    pub fn pause(&self, name: &str) -> Result<Event, VmkitError> {
        self.call(&self.request(Command::Pause, name, "workspace", None, None))
    }

    /// Lets a paused workspace run again.
    pub fn resume(&self, name: &str) -> Result<Event, VmkitError> {
        self.call(&self.request(Command::Resume, name, "workspace", None, None))
    }

    /// Removes a workspace; with `force`, kills its VM first.
    pub fn delete(&self, name: &str, force: bool) -> Result<(), VmkitError> {
        if force {
            self.kill(name)?;
        }
        let request = self.request(Command::Delete, name, "workspace", None, None);
        self.call_outcome(&request).map(|_| ())
    }

    /// Ends the VM of a run in progress at once (for Ctrl-C): the run then
    /// sees its guest channel break, records `failed` and cleans up as on
    /// any other failure. Returns whether there was a VM to kill.
    pub fn abort_run(&self, name: &str) -> Result<bool, VmkitError> {
        let store = vmkit_state::StateStore::open(&self.state_dir)?;
        Ok(store
            .peek(name)?
            .and_then(|r| r.vmm)
            .is_some_and(|vmm| vmm.signal(nix::sys::signal::Signal::SIGKILL)))
    }

    /// Cleans up VMs whose driving command died (every command does this
    /// first, see [`Runtime::open`]), then removes this user's guest RAM
    /// files whose state folder was deleted by hand (any state folder's:
    /// they share one tmpfs folder) and that no live process maps.
    pub fn gc(&self) -> Result<GcReport, VmkitError> {
        let cleaned = self.gc_dead_vms()?;
        let removed_memory = vmkit_lifecycle::remove_orphaned_memory()?;
        Ok(GcReport {
            cleaned,
            removed_memory,
        })
    }

    /// Cleans up VMs whose driving command died; returns their names.
    pub(crate) fn gc_dead_vms(&self) -> Result<Vec<String>, VmkitError> {
        Ok(self.driver.gc(&self.state_dir)?)
    }

    pub(crate) fn call_outcome(
        &self,
        request: &Request,
    ) -> Result<vmkit_protocol::Response, VmkitError> {
        let response = crate::dispatch(self.driver.as_ref(), request);
        match response.error {
            Some(e) => Err(e.into()),
            None => Ok(response),
        }
    }

    pub(crate) fn call(&self, request: &Request) -> Result<Event, VmkitError> {
        let response = self.call_outcome(request)?;
        response.event.ok_or_else(|| {
            ProtocolError::new(ErrorCode::Internal, "backend returned no event").into()
        })
    }
}

fn workload_of(params: &RunParams) -> Workload {
    Workload {
        setup: params.setup.clone(),
        exec: params.exec.clone(),
        env: params.machine.env.clone(),
        cwd: params.machine.cwd.clone(),
        user: params.machine.user.clone(),
        timeout_seconds: params.timeout_seconds,
    }
}

/// A fresh name for a one-shot run: `run-` and 12 hex digits.
pub fn new_run_name() -> String {
    format!("run-{}", &new_id()[..12])
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

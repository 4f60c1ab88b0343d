use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use vmkit_channel::host::{Control, ExecClient, HostListener, RunOutcome};
use vmkit_channel::{BootSpec, DiskMount, ExecRequest, Mode, RunSpec, SetupStep};
use vmkit_protocol::{
    Backend, BackendKind, ErrorCode, Event, HostInfo, Identity, Outcome, ProtocolError, Request,
    RunResult, State,
};
use vmkit_state::{LockWait, ProcessRecord, StateStore, WorkspaceLock, WorkspaceRecord};

use crate::machine::{BootPlan, Launched, Machine};
use crate::paths::WorkspacePaths;
use crate::process::{terminate, wait_child, wait_gone};

/// Receives every event as it is recorded (the CLI prints them with `--json`).
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// How long a second command waits for a workspace's lock before `busy`.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// How long a guest may take from VMM start to its init connecting back.
/// TCG boots take about a second; the margin is for loaded CI machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a halting guest gets to power off before it is killed.
const HALT_GRACE: Duration = Duration::from_secs(20);
/// Grace for `stop` before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The guest's timeout kill needs SIGTERM grace plus reporting time; the
/// host's backstop waits this much longer before killing the VM itself.
const TIMEOUT_SLACK: Duration = Duration::from_secs(15);

/// What a one-shot run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// The exec command's result, or the failing setup step's.
    pub result: RunResult,
    /// The setup step that failed, if one did (exec did not run).
    pub setup_failed: Option<SetupStep>,
}

/// Options for an exec in a running workspace.
pub struct ExecOptions {
    /// The command.
    pub request: ExecRequest,
    /// Bytes for the command's stdin, streamed as they are read.
    pub stdin: Option<Box<dyn Read + Send>>,
}

/// The shared lifecycle over one backend's [`Machine`].
pub struct Lifecycle {
    machine: Box<dyn Machine>,
    observer: Option<Observer>,
}

impl Lifecycle {
    /// Wraps a machine.
    pub fn new(machine: impl Machine + 'static) -> Self {
        Lifecycle {
            machine: Box::new(machine),
            observer: None,
        }
    }

    /// Adds an observer that sees every event as it is recorded.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The machine.
    pub fn machine(&self) -> &dyn Machine {
        self.machine.as_ref()
    }

    pub(crate) fn store(&self, request: &Request) -> Result<StateStore, ProtocolError> {
        let dir = request
            .state_dir()
            .ok_or_else(|| ProtocolError::invalid("stateDir is required"))?;
        StateStore::open(dir).map_err(state_err)
    }

    pub(crate) fn lock(
        &self,
        store: &StateStore,
        name: &str,
    ) -> Result<WorkspaceLock, ProtocolError> {
        store
            .lock(name, LockWait::Timeout(LOCK_WAIT))
            .map_err(state_err)
    }

    pub(crate) fn paths(store: &StateStore, name: &str) -> Result<WorkspacePaths, ProtocolError> {
        WorkspacePaths::new(&store.workspace_dir(name).map_err(state_err)?)
    }

    fn emit(&self, store: &StateStore, identity: &Identity, state: State, detail: &str) -> Event {
        let event = Event::now(identity.clone(), state, detail);
        if let Err(e) = store
            .events(&identity.runtime_id)
            .and_then(|log| log.append(&event))
        {
            tracing::warn!("recording event: {e}");
        }
        if let Some(observer) = &self.observer {
            observer(&event);
        }
        event
    }

    /// Moves `record` to `to`, saving it and recording the event.
    pub(crate) fn transition(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
        record: &mut WorkspaceRecord,
        identity: &Identity,
        to: State,
        detail: &str,
    ) -> Result<Event, ProtocolError> {
        record.state.transition(to).map_err(|e| {
            ProtocolError::new(
                ErrorCode::InvalidState,
                format!("workspace {:?}: {e}", record.name),
            )
        })?;
        record.state = to;
        record.updated_at = Utc::now();
        if !to.has_vm() {
            record.vmm = None;
            record.helpers.clear();
            record.owner = None;
        }
        store.save(lock, record).map_err(state_err)?;
        Ok(self.emit(store, identity, to, detail))
    }

    pub(crate) fn load(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
    ) -> Result<WorkspaceRecord, ProtocolError> {
        store.load(lock).map_err(state_err)?.ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::NotFound,
                format!("workspace {:?} does not exist", lock.name()),
            )
        })
    }

    /// Brings a record in line with reality: a VM state whose VMM is gone,
    /// or whose driving `run` command died, becomes `failed`, and whatever
    /// processes remain are killed. Returns whether anything changed.
    pub(crate) fn reconcile(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
        record: &mut WorkspaceRecord,
    ) -> Result<bool, ProtocolError> {
        if !record.state.has_vm() {
            return Ok(false);
        }
        let vmm_alive = record.vmm.is_some_and(|p| p.is_alive());
        let owner_dead = record.owner.is_some_and(|p| !p.is_alive());
        if vmm_alive && !owner_dead {
            return Ok(false);
        }
        let detail = if owner_dead {
            "the microagent command driving this VM died; its processes were cleaned up"
        } else {
            "the VMM exited unexpectedly"
        };
        let mut procs: Vec<ProcessRecord> = record.vmm.into_iter().collect();
        procs.extend(record.helpers.iter().copied());
        terminate(&procs, Duration::ZERO);
        remove_vm_files(&Self::paths(store, &record.name)?);
        let identity = identity_of(record, "gc");
        self.transition(store, lock, record, &identity, State::Failed, detail)?;
        Ok(true)
    }

    /// Finds VMs whose driving command died or whose VMM is gone, cleans up
    /// their processes and marks them failed. Workspaces another command is
    /// working on right now are skipped. Returns the names cleaned.
    pub fn gc(&self, state_dir: &Path) -> Result<Vec<String>, ProtocolError> {
        let store = StateStore::open(state_dir).map_err(state_err)?;
        let mut cleaned = Vec::new();
        for record in store.list().map_err(state_err)? {
            if !record.state.has_vm() {
                continue;
            }
            let Ok(lock) = store.lock(&record.name, LockWait::NoWait) else {
                continue;
            };
            let Some(mut record) = store.load(&lock).map_err(state_err)? else {
                continue;
            };
            if self.reconcile(&store, &lock, &mut record)? {
                cleaned.push(record.name.clone());
            }
        }
        Ok(cleaned)
    }

    fn prepare_locked(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
        request: &Request,
    ) -> Result<(WorkspaceRecord, Event), ProtocolError> {
        let config = request
            .config
            .as_ref()
            .ok_or_else(|| ProtocolError::invalid("prepare needs config"))?;
        let name = &request.identity.runtime_id;
        if store.load(lock).map_err(state_err)?.is_some() {
            return Err(ProtocolError::new(
                ErrorCode::AlreadyExists,
                format!("workspace {name:?} already exists"),
            ));
        }
        self.machine.check(config)?;
        let paths = Self::paths(store, name)?;
        let source = Path::new(&config.rootfs_path);
        if !source.is_file() {
            return Err(ProtocolError::invalid(format!(
                "config.rootfsPath {} is not a file",
                source.display()
            )));
        }
        create_private_dir(&paths.dir)?;
        let result = (|| {
            if source != paths.disk {
                // The workspace's own writable copy: shared blocks where the
                // file system can, else a sparse copy; atomic either way.
                vmkit_rootfs::clone_disk(source, &paths.disk).map_err(|e| {
                    ProtocolError::new(ErrorCode::Internal, format!("copying the root disk: {e}"))
                })?;
            }
            let now = Utc::now();
            let mut config = config.clone();
            config.rootfs_path = paths.disk.to_string_lossy().into_owned();
            let record = WorkspaceRecord {
                name: name.clone(),
                state: State::Prepared,
                backend: self.machine.kind(),
                image: request.identity.role.clone(),
                config,
                created_at: now,
                updated_at: now,
                keep: request.identity.role != "run",
                vmm: None,
                helpers: Vec::new(),
                owner: None,
                last_result: None,
                labels: Default::default(),
            };
            store.create(lock, &record).map_err(state_err)?;
            Ok(record)
        })();
        match result {
            Ok(record) => {
                let event = self.emit(store, &request.identity, State::Prepared, "disk ready");
                Ok((record, event))
            }
            Err(e) => {
                // Nothing half-made stays behind.
                let _ = std::fs::remove_dir_all(&paths.dir);
                Err(e)
            }
        }
    }

    /// Boots `record` in `mode`. On success the guest's init has connected
    /// back (and, for a workspace, reported ready). On failure every process
    /// is gone and the workspace is `failed`.
    #[allow(clippy::too_many_arguments)]
    fn boot(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
        record: &mut WorkspaceRecord,
        identity: &Identity,
        mode: Mode,
        detached: bool,
        restore: Option<PathBuf>,
    ) -> Result<(Launched, Control), ProtocolError> {
        let paths = Self::paths(store, &record.name)?;
        self.transition(
            store,
            lock,
            record,
            identity,
            State::Starting,
            "launching VMM",
        )?;
        let started = Instant::now();
        let restoring = restore.is_some();
        let booted = self.launch_and_connect(store, lock, record, &paths, mode, detached, restore);
        match booted {
            Ok((launched, mut control)) => {
                if detached {
                    let ready = control
                        .wait_ready(BOOT_TIMEOUT)
                        .map_err(|e| guest_err(format!("waiting for the guest to be ready: {e}")));
                    if let Err(e) = ready {
                        return Err(
                            self.fail_boot(store, lock, record, identity, launched, &paths, e)
                        );
                    }
                }
                let verb = if restoring {
                    "restored from a snapshot"
                } else {
                    "booted"
                };
                let detail = format!("{verb} in {:.2}s", started.elapsed().as_secs_f64());
                self.transition(store, lock, record, identity, State::Running, &detail)?;
                Ok((launched, control))
            }
            Err((launched, e)) => match launched {
                Some(l) => Err(self.fail_boot(store, lock, record, identity, l, &paths, e)),
                None => {
                    remove_vm_files(&paths);
                    let _ =
                        self.transition(store, lock, record, identity, State::Failed, &e.message);
                    Err(e)
                }
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fail_boot(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
        record: &mut WorkspaceRecord,
        identity: &Identity,
        mut launched: Launched,
        paths: &WorkspacePaths,
        error: ProtocolError,
    ) -> ProtocolError {
        launched.shut_down();
        remove_vm_files(paths);
        let error = with_console_tail(error, paths);
        let _ = self.transition(store, lock, record, identity, State::Failed, &error.message);
        error
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn launch_and_connect(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
        record: &mut WorkspaceRecord,
        paths: &WorkspacePaths,
        mode: Mode,
        detached: bool,
        restore: Option<PathBuf>,
    ) -> Result<(Launched, Control), (Option<Launched>, ProtocolError)> {
        let config = &record.config;
        // Extra disks are /dev/vdb... in request order; the config disk follows.
        let letter = |i: usize| (b'b' + i as u8) as char;
        let disks = config
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskMount {
                device: format!("/dev/vd{}", letter(i)),
                mountpoint: d.mountpoint.clone(),
                read_only: d.mode == vmkit_protocol::DiskMode::Ro,
                fs_type: None,
            })
            .collect();
        let workload = config.workload.clone().unwrap_or_default();
        let spec = BootSpec {
            hostname: Some(
                config
                    .hostname
                    .clone()
                    .unwrap_or_else(|| vmkit_protocol::hostname_for(&record.name)),
            ),
            disks,
            env: workload.env.clone(),
            cwd: workload.cwd.clone(),
            user: workload.user.clone(),
            mode,
            ..BootSpec::default()
        };
        let config_device = format!("/dev/vd{}", letter(config.disks.len()));
        vmkit_channel::write_config_disk(&paths.config_disk, &spec).map_err(|e| {
            (
                None,
                ProtocolError::new(ErrorCode::Internal, format!("writing the config disk: {e}")),
            )
        })?;
        remove_vm_files(paths);
        let listener = HostListener::bind(&paths.vsock, spec.control_port)
            .map_err(|e| (None, guest_err(format!("listening for the guest: {e}"))))?;
        let plan = BootPlan {
            config: config.clone(),
            paths: paths.clone(),
            root_disk: paths.disk.clone(),
            kernel_args: format!(
                "root=/dev/vda rw init=/sbin/microagent-init {}",
                vmkit_channel::kernel_args(&config_device)
            ),
            detached,
            restore,
        };
        let mut launched = self.machine.launch(&plan).map_err(|e| (None, e))?;
        tracing::debug!("VMM launched");
        let (vmm, helpers) = launched.records();
        record.vmm = vmm;
        record.helpers = helpers;
        record.owner = if detached {
            None
        } else {
            ProcessRecord::of(std::process::id() as i32)
        };
        if let Err(e) = store.save(lock, record) {
            return Err((Some(launched), state_err(e)));
        }
        // Accept in short slices so a VMM that dies during boot is noticed
        // at once rather than after the whole boot timeout.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        // Only the VMM or its vsock helper forwards the guest's connection.
        let peers: Vec<i32> = record
            .vmm
            .iter()
            .chain(&record.helpers)
            .map(|p| p.pid)
            .collect();
        loop {
            match listener.accept_from(Duration::from_millis(100), &peers) {
                Ok(stream) => {
                    tracing::debug!("guest connected");
                    return Ok((launched, Control::from_stream(stream)));
                }
                Err(vmkit_channel::ChannelError::Timeout(_)) => {}
                Err(e @ vmkit_channel::ChannelError::WrongPeer { .. }) => {
                    tracing::warn!("control socket: {e}");
                }
                Err(e) => {
                    return Err((
                        Some(launched),
                        guest_err(format!("accepting the guest: {e}")),
                    ))
                }
            }
            if let Ok(Some(status)) = launched.vmm.try_wait() {
                return Err((
                    Some(launched),
                    guest_err(format!("the VMM exited during boot ({status})")),
                ));
            }
            if Instant::now() >= deadline {
                return Err((
                    Some(launched),
                    ProtocolError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the guest did not connect within {}s of boot",
                            BOOT_TIMEOUT.as_secs()
                        ),
                    ),
                ));
            }
        }
    }

    /// Runs a workload once: prepare, boot, stream output to the sinks as
    /// it is produced, stop, and delete unless the identity's role keeps it.
    /// `keep` leaves the workspace `stopped` for a later `start`.
    pub fn run_streaming(
        &self,
        request: &Request,
        keep: bool,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunOutput, ProtocolError> {
        request.validate()?;
        let config = request
            .config
            .as_ref()
            .ok_or_else(|| ProtocolError::invalid("run needs config"))?;
        let workload = config
            .workload
            .clone()
            .ok_or_else(|| ProtocolError::invalid("run needs config.workload"))?;
        let store = self.store(request)?;
        let identity = &request.identity;
        let lock = self.lock(&store, &identity.runtime_id)?;
        let (mut record, _) = self.prepare_locked(&store, &lock, request)?;
        record.keep = keep;
        let timeout = workload.timeout_seconds.map(Duration::from_secs);
        let mode = Mode::Run(RunSpec {
            setup: workload.setup.clone(),
            exec: workload.exec.clone(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        });
        let outcome = (|| {
            let (mut launched, mut control) =
                self.boot(&store, &lock, &mut record, identity, mode, false, None)?;
            // Without a run timeout the guest runs as long as it likes; the
            // backstop then only guards against a wedged channel.
            let backstop =
                timeout.map_or(Duration::from_secs(365 * 24 * 3600), |t| t + TIMEOUT_SLACK);
            let received = control.receive_run(&workload.setup, stdout, stderr, backstop);
            tracing::debug!("run reported");
            // A kept disk must be flushed and cleanly unmounted, so the
            // guest powers off by itself after acknowledging. A discarded
            // one needs no flush: ending the VM at once saves the guest's
            // shutdown, which is most of a short run's tail.
            let powered_off = keep && wait_child(&mut launched.vmm, Duration::from_secs(10));
            launched.shut_down();
            let paths = Self::paths(&store, &record.name)?;
            remove_vm_files(&paths);
            let report = match received {
                Ok(report) => report,
                Err(vmkit_channel::ChannelError::Timeout(_)) => {
                    let result = RunResult {
                        error: Some(format!(
                            "timed out after {}s; the VM was killed",
                            timeout.unwrap_or_default().as_secs()
                        )),
                        timed_out: true,
                        ..RunResult::default()
                    };
                    self.transition(
                        &store,
                        &lock,
                        &mut record,
                        identity,
                        State::Stopped,
                        "killed at the run timeout",
                    )?;
                    return Ok(RunOutput {
                        result,
                        setup_failed: None,
                    });
                }
                Err(e) => {
                    let e = with_console_tail(guest_err(format!("guest channel: {e}")), &paths);
                    self.transition(
                        &store,
                        &lock,
                        &mut record,
                        identity,
                        State::Failed,
                        &e.message,
                    )?;
                    return Err(e);
                }
            };
            let detail = match (keep, powered_off) {
                (false, _) => "run finished; VM discarded",
                (true, true) => "guest powered off",
                (true, false) => "guest did not power off; VMM killed",
            };
            // The guest enforces the deadline and says in the result
            // whether it killed the command for it.
            let output = match report.outcome {
                RunOutcome::Completed(result) => RunOutput {
                    result,
                    setup_failed: None,
                },
                RunOutcome::SetupFailed(step) => RunOutput {
                    result: step.result.clone(),
                    setup_failed: Some(step),
                },
            };
            record.last_result = Some(output.result.clone());
            self.transition(&store, &lock, &mut record, identity, State::Stopped, detail)?;
            Ok(output)
        })();
        if !keep {
            let _ = store.remove(&lock);
        }
        outcome
    }

    /// Runs a command in a running workspace, streaming its output.
    pub fn exec_streaming(
        &self,
        state_dir: &Path,
        name: &str,
        options: ExecOptions,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunResult, ProtocolError> {
        let store = StateStore::open(state_dir).map_err(state_err)?;
        // Execs run concurrently, so they take the lock only to check state.
        let paths = {
            let lock = self.lock(&store, name)?;
            let mut record = self.load(&store, &lock)?;
            self.reconcile(&store, &lock, &mut record)?;
            if record.state != State::Running {
                let remedy = if record.state == State::Paused {
                    "resume"
                } else {
                    "start"
                };
                return Err(ProtocolError::new(
                    ErrorCode::InvalidState,
                    format!(
                        "workspace {name:?} is {}; `microagent {remedy} {name}` first",
                        record.state
                    ),
                ));
            }
            Self::paths(&store, name)?
        };
        let backstop = options
            .request
            .timeout_ms
            .map_or(Duration::from_secs(365 * 24 * 3600), |t| {
                Duration::from_millis(t) + TIMEOUT_SLACK
            });
        ExecClient::new(&paths.vsock, vmkit_channel::DEFAULT_EXEC_PORT)
            .exec(&options.request, options.stdin, stdout, stderr, backstop)
            .map_err(|e| guest_err(format!("exec in {name:?}: {e}")))
    }

    fn halt_locked(
        &self,
        store: &StateStore,
        lock: &WorkspaceLock,
        identity: &Identity,
        grace: Duration,
        final_state: State,
    ) -> Result<Event, ProtocolError> {
        let mut record = self.load(store, lock)?;
        self.reconcile(store, lock, &mut record)?;
        if !record.state.has_vm() {
            // Already down: report where it is.
            return Ok(Event::now(identity.clone(), record.state, "no VM running"));
        }
        let paths = Self::paths(store, &record.name)?;
        // A paused guest cannot shut itself down: let it run for that.
        let grace = self.unpause_for_shutdown(&record, &paths, grace);
        self.transition(
            store,
            lock,
            &mut record,
            identity,
            State::Stopping,
            "shutting down",
        )?;
        let vmm: Vec<ProcessRecord> = record.vmm.into_iter().collect();
        let mut clean = false;
        if !grace.is_zero() {
            let asked = ExecClient::new(&paths.vsock, vmkit_channel::DEFAULT_EXEC_PORT)
                .with_connect_timeout(Duration::from_secs(2))
                .shutdown(Duration::from_secs(5));
            clean = asked.is_ok() && wait_gone(&vmm.iter().collect::<Vec<_>>(), grace);
        }
        let mut procs = vmm.clone();
        procs.extend(record.helpers.iter().copied());
        terminate(
            &procs,
            if clean {
                Duration::ZERO
            } else {
                STOP_GRACE.min(grace)
            },
        );
        remove_vm_files(&paths);
        let (state, detail) = match (clean, final_state) {
            (true, State::Halted) => (State::Halted, "guest powered off"),
            (true, _) => (State::Stopped, "guest powered off"),
            (false, _) if grace.is_zero() => (State::Stopped, "VMM killed"),
            (false, _) => (
                State::Stopped,
                "guest did not power off in time; VMM killed",
            ),
        };
        self.transition(store, lock, &mut record, identity, state, detail)
    }

    pub(crate) fn with_lock<T>(
        &self,
        request: &Request,
        f: impl FnOnce(&StateStore, &WorkspaceLock) -> Result<T, ProtocolError>,
    ) -> Result<T, ProtocolError> {
        let store = self.store(request)?;
        let lock = self.lock(&store, &request.identity.runtime_id)?;
        f(&store, &lock)
    }
}

impl Backend for Lifecycle {
    fn kind(&self) -> BackendKind {
        self.machine.kind()
    }

    fn host(&self) -> Result<HostInfo, ProtocolError> {
        Ok(self.machine.host())
    }

    fn check(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let config = request
            .config
            .as_ref()
            .ok_or_else(|| ProtocolError::invalid("check needs config"))?;
        self.machine.check(config)?;
        Ok(Outcome {
            host: Some(self.machine.host()),
            ..Outcome::default()
        })
    }

    fn prepare(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let request = &self.fork_request(request)?;
        self.with_lock(request, |store, lock| {
            let (_, event) = self.prepare_locked(store, lock, request)?;
            Ok(event_outcome(event))
        })
    }

    fn start(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.with_lock(request, |store, lock| {
            let mut record = self.load(store, lock)?;
            self.reconcile(store, lock, &mut record)?;
            if !record.state.can_start() {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidState,
                    format!(
                        "cannot start {:?}: it is {} (start works from prepared, halted, stopped or failed)",
                        record.name, record.state
                    ),
                ));
            }
            // The config given now (memory, disks) replaces the recorded one,
            // except for the disk, which is the workspace's own.
            if let Some(config) = &request.config {
                let disk = record.config.rootfs_path.clone();
                record.config = config.clone();
                record.config.rootfs_path = disk;
            }
            let restore = match &request.from_snapshot {
                Some(from) => self.restore_source(store, &record, from)?,
                None => None,
            };
            let (launched, _control) = self.boot(
                store,
                lock,
                &mut record,
                &request.identity,
                Mode::Workspace,
                true,
                restore,
            )?;
            // The VM outlives this command; dropping the handles does not
            // kill it (it is in its own session) and its exit is reaped by
            // whoever inherits it.
            drop(launched);
            let event = Event::now(request.identity.clone(), State::Running, "exec service ready");
            Ok(event_outcome(event))
        })
    }

    fn run(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        // The one-response form cannot stream, so output is discarded; the
        // CLI and library callers use `run_streaming`.
        let output =
            self.run_streaming(request, false, &mut std::io::sink(), &mut std::io::sink())?;
        Ok(Outcome {
            event: Some(Event::now(
                request.identity.clone(),
                State::Stopped,
                "run finished",
            )),
            result: Some(output.result),
            host: None,
            snapshots: None,
        })
    }

    fn inspect(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.with_lock(request, |store, lock| {
            let mut record = self.load(store, lock)?;
            self.reconcile(store, lock, &mut record)?;
            let event = Event::now(request.identity.clone(), record.state, "inspected");
            Ok(event_outcome(event))
        })
    }

    fn halt(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.with_lock(request, |store, lock| {
            self.halt_locked(store, lock, &request.identity, HALT_GRACE, State::Halted)
                .map(event_outcome)
        })
    }

    fn stop(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.with_lock(request, |store, lock| {
            self.halt_locked(store, lock, &request.identity, STOP_GRACE, State::Stopped)
                .map(event_outcome)
        })
    }

    fn kill(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.with_lock(request, |store, lock| {
            self.halt_locked(
                store,
                lock,
                &request.identity,
                Duration::ZERO,
                State::Stopped,
            )
            .map(event_outcome)
        })
    }

    fn delete(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.with_lock(request, |store, lock| {
            let mut record = self.load(store, lock)?;
            self.reconcile(store, lock, &mut record)?;
            if record.state.has_vm() {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidState,
                    format!(
                        "workspace {:?} is {}; stop it first (or delete --force)",
                        record.name, record.state
                    ),
                ));
            }
            store.remove(lock).map_err(state_err)?;
            Ok(Outcome::default())
        })
    }

    fn pause(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.with_lock(request, |store, lock| {
            self.set_paused_locked(store, lock, &request.identity, true)
                .map(event_outcome)
        })
    }

    fn snapshot(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.snapshot_command(request)
    }

    fn resume(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        self.with_lock(request, |store, lock| {
            self.set_paused_locked(store, lock, &request.identity, false)
                .map(event_outcome)
        })
    }
}

fn event_outcome(event: Event) -> Outcome {
    Outcome {
        event: Some(event),
        ..Outcome::default()
    }
}

fn identity_of(record: &WorkspaceRecord, request_id: &str) -> Identity {
    Identity {
        request_id: request_id.into(),
        runtime_id: record.name.clone(),
        role: if record.keep { "workspace" } else { "run" }.into(),
        backend: record.backend,
    }
}

pub(crate) fn state_err(e: vmkit_state::StateError) -> ProtocolError {
    use vmkit_state::StateError as S;
    let code = match &e {
        S::Busy { .. } => ErrorCode::Busy,
        S::NotFound { .. } => ErrorCode::NotFound,
        S::AlreadyExists { .. } => ErrorCode::AlreadyExists,
        S::InvalidName(_) => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    };
    ProtocolError::new(code, e.to_string())
}

fn guest_err(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::GuestFailure, message)
}

/// Appends the console's last lines: a boot failure is unreadable without them.
fn with_console_tail(mut error: ProtocolError, paths: &WorkspacePaths) -> ProtocolError {
    let text = crate::vmm_files::read_console(&paths.console_log);
    if !text.is_empty() {
        // Guest text, on its way to a terminal: no escapes.
        let text = vmkit_protocol::terminal_safe_bytes(&text[text.len().saturating_sub(4096)..]);
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        if !tail.is_empty() {
            error.message.push_str("\nlast console lines:\n");
            for line in tail.iter().rev() {
                error.message.push_str("  ");
                error.message.push_str(line);
                error.message.push('\n');
            }
        }
    }
    error
}

/// Removes what only a running VM needs: its sockets, and the guest RAM
/// file a VMM may keep (QEMU; snapshots hold their own copies).
fn remove_vm_files(paths: &WorkspacePaths) {
    let _ = std::fs::remove_file(&paths.vsock);
    let _ = std::fs::remove_file(&paths.memory);
    crate::vmm_files::remove_guest_listeners(&paths.vsock);
}

fn create_private_dir(dir: &Path) -> Result<(), ProtocolError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            ProtocolError::new(
                ErrorCode::Internal,
                format!("creating {}: {e}", dir.display()),
            )
        })
}

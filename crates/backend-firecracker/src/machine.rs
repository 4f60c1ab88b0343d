//! The [`Machine`] for Firecracker: spawn the process, configure it over
//! its API socket, start the guest.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vmkit_host::{find_in_path, probe_kvm, Tool};
use vmkit_lifecycle::vmm_files::{
    clone_log, remove_stale_socket, rotate_console, settle_relay, spawn_console_relay,
    spawn_log_relay,
};
use vmkit_lifecycle::{
    spawn_supervised, BootPlan, LaunchGuard, Launched, Machine, Supervision, WorkspacePaths,
};
use vmkit_protocol::{Accelerator, BackendKind, ErrorCode, HostInfo, MachineConfig, ProtocolError};

use crate::api::{ApiClient, ApiError};
use crate::config::{self, ApiCall};

/// The API socket's name in the workspace folder (short: a Unix socket
/// path must fit in 108 bytes).
pub const API_SOCKET: &str = "fc.sock";
/// How long Firecracker may take to open its API socket.
const API_READY: Duration = Duration::from_secs(10);
/// Most of a log line quoted in an error.
const MAX_HINT_CHARS: usize = 300;

/// Launches Firecracker microVMs.
#[derive(Debug, Default)]
pub struct FirecrackerMachine {
    fail_at: Option<usize>,
}

impl FirecrackerMachine {
    /// A machine that finds `firecracker` in `PATH` at each launch.
    pub fn new() -> Self {
        Self::default()
    }

    /// A machine whose launches fail at their `n`-th step (see
    /// [`LaunchGuard::failing_at`]): for failure-injection tests.
    pub fn failing_at_step(n: usize) -> Self {
        FirecrackerMachine { fail_at: Some(n) }
    }
}

fn binary() -> Result<PathBuf, ProtocolError> {
    find_in_path(Tool::Firecracker.program()).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::Unavailable,
            "firecracker not found in PATH; install a release binary or use --backend qemu",
        )
    })
}

impl Machine for FirecrackerMachine {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn host(&self) -> HostInfo {
        let kvm = probe_kvm();
        HostInfo {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            accelerator: if kvm.usable() {
                Accelerator::Kvm
            } else {
                Accelerator::None
            },
            accelerator_reason: kvm.detail,
            checks: Vec::new(),
        }
    }

    fn available(&self) -> Result<(), ProtocolError> {
        // KVM first: without it, installing firecracker would not help,
        // so it is the refusal worth reading.
        let kvm = probe_kvm();
        if !kvm.usable() {
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "firecracker needs usable KVM: {}; use --backend qemu",
                    kvm.detail
                ),
            ));
        }
        binary().map(|_| ())
    }

    fn check_volumes(&self, volumes: &[vmkit_protocol::Volume]) -> Result<(), ProtocolError> {
        config::refuse_volumes(volumes)
    }

    fn check(&self, config: &MachineConfig) -> Result<(), ProtocolError> {
        // What the backend cannot do at all is said first, wherever it runs.
        config::validate(config)?;
        self.available()?;
        vmkit_lifecycle::check_config_files(config)
    }

    fn save_state(
        &self,
        _config: &MachineConfig,
        paths: &WorkspacePaths,
        into: &Path,
    ) -> Result<(), ProtocolError> {
        let call = crate::snapshot::create(into)?;
        ApiClient::new(paths.dir.join(API_SOCKET))
            .send_json(call.method, &call.path, &call.body, call.timeout)
            .map_err(|e| internal(format!("firecracker refused PUT /snapshot/create: {e}")))
    }

    fn set_paused(&self, paths: &WorkspacePaths, paused: bool) -> Result<(), ProtocolError> {
        let call = config::vm_state(paused);
        ApiClient::new(paths.dir.join(API_SOCKET))
            .send_json(call.method, &call.path, &call.body, call.timeout)
            .map_err(|e| {
                internal(format!(
                    "firecracker refused {} {} {}: {e}",
                    call.method, call.path, call.body
                ))
            })
    }

    fn launch(&self, plan: &BootPlan) -> Result<Launched, ProtocolError> {
        let firecracker = binary()?;
        // Everything that can be refused is refused before a process runs.
        // A restore loads the snapshot instead of configuring and booting.
        let calls = match &plan.restore {
            Some(snapshot) => crate::snapshot::restore(plan, snapshot)?,
            None => {
                let mut calls = config::configuration(plan)?;
                calls.push(config::instance_start());
                calls
            }
        };
        let supervision = if plan.detached {
            Supervision::Detached
        } else {
            Supervision::DiesWithParent
        };
        rotate_console(&plan.paths.console_log);
        let socket = plan.paths.dir.join(API_SOCKET);
        // Firecracker refuses to start when its socket path exists, and a
        // VMM that died leaves its socket behind.
        remove_stale_socket(&socket)?;
        let name = plan
            .paths
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = config::instance_id(&name);
        // From here on, every early return kills what was started.
        let mut guard = LaunchGuard::new().failing_at(self.fail_at);
        guard.remove_on_failure(&socket);
        // Firecracker's stderr and our notes: what the guest makes
        // Firecracker complain about is capped, like QEMU's.
        let (log_relay, mut log) = spawn_log_relay(&plan.paths.vmm_log, supervision)?;
        guard.helper(log_relay);
        guard.checkpoint("vmm log relay started")?;
        note(
            &mut log,
            &format!(
                "starting {} --api-sock {} --id {id}",
                firecracker.display(),
                socket.display()
            ),
        );
        // The guest's serial console is Firecracker's stdout, and so are
        // Firecracker's own log lines (it logs to stdout unless told
        // otherwise), so a boot failure's console tail shows both.
        // stderr (panics) goes to vmm.log with our notes. stdin is a pipe
        // closed at once: the serial input sees end-of-file and is dropped
        // (/dev/null cannot be polled, which Firecracker warns about).
        let (relay, console) = spawn_console_relay(&plan.paths.console_log, supervision)?;
        guard.relay(relay);
        guard.checkpoint("console relay started")?;
        let child = spawn_supervised(
            Command::new(&firecracker)
                .arg("--api-sock")
                .arg(&socket)
                .arg("--id")
                .arg(&id)
                .stdin(Stdio::piped())
                .stdout(console)
                .stderr(clone_log(&log)?),
            supervision,
        )
        .map_err(|e| internal(format!("starting {}: {e}", firecracker.display())))?;
        drop(guard.vmm(child).stdin.take());
        guard.checkpoint("firecracker started")?;
        let started = match guard.vmm_and_relay() {
            (Some(child), Some(_)) => configure_and_start(child, &socket, &calls, &mut log),
            _ => unreachable!("both taken above"),
        };
        if let Err(failure) = started {
            note(&mut log, &format!("launch failed: {}", failure.summary()));
            // Firecracker's last words and our notes reach both logs
            // before they are quoted: Firecracker ends, then our end of
            // vmm.log closes, then both relays drain (the guard would kill
            // them with what they still hold).
            if let (Some(child), _) = guard.vmm_and_relay() {
                let _ = child.kill();
                let _ = child.wait();
            }
            drop(log);
            if let (_, Some(relay)) = guard.vmm_and_relay() {
                settle_relay(relay);
            }
            settle_relay(guard.helper_mut(0));
            return Err(failure.into_error(plan));
        }
        guard.checkpoint("instance started")?;
        guard.disarm()
    }
}

/// Why a launch failed once Firecracker was running.
enum Failure {
    /// Firecracker exited, `during` (`at start`, `during PUT /x`): its
    /// last output, quoted once the logs are complete, is the news.
    Exited { status: ExitStatus, during: String },
    /// Anything else: refused, timed out.
    Error(ProtocolError),
}

impl Failure {
    fn summary(&self) -> String {
        match self {
            Failure::Exited { status, during } => format!("firecracker exited {during} ({status})"),
            Failure::Error(e) => e.message.clone(),
        }
    }

    fn into_error(self, plan: &BootPlan) -> ProtocolError {
        match self {
            Failure::Exited { .. } => {
                let hint = last_output(plan)
                    .map(|l| format!("; last output: {l}"))
                    .unwrap_or_default();
                internal(format!(
                    "{}{hint}; see console.log and vmm.log in {}",
                    self.summary(),
                    plan.paths.dir.display()
                ))
            }
            Failure::Error(e) => e,
        }
    }
}

/// Waits for the API socket, then makes every call (the last one starts
/// or resumes the guest).
fn configure_and_start(
    child: &mut Child,
    socket: &Path,
    calls: &[ApiCall],
    log: &mut File,
) -> Result<(), Failure> {
    wait_for_api(child, socket)?;
    let client = ApiClient::new(socket);
    for call in calls {
        note(log, &format!("{} {} {}", call.method, call.path, call.body));
        match client.send_json(call.method, &call.path, &call.body, call.timeout) {
            Ok(()) => {}
            Err(e) => return Err(api_error(child, &call.path, e)),
        }
    }
    note(log, "the guest is booting (or resuming)");
    Ok(())
}

/// Turns an API failure into the error the caller sees. A Firecracker
/// that died shows up as a refused or dropped connection; then its death
/// (and its last words) is the news, not the transport error.
fn api_error(child: &mut Child, path: &str, e: ApiError) -> Failure {
    if let Ok(Some(status)) = child.try_wait() {
        return Failure::Exited {
            status,
            during: format!("during PUT {path}"),
        };
    }
    Failure::Error(match e {
        ApiError::Fault { status, message } => internal(format!(
            "firecracker refused PUT {path} (HTTP {status}): {message}"
        )),
        ApiError::Timeout(t) => ProtocolError::new(
            ErrorCode::Timeout,
            format!(
                "firecracker did not answer PUT {path} within {}s",
                t.as_secs()
            ),
        ),
        other => internal(format!("firecracker API, PUT {path}: {other}")),
    })
}

/// Polls until the API socket accepts a connection; fails early if the
/// process exits first.
fn wait_for_api(child: &mut Child, socket: &Path) -> Result<(), Failure> {
    let deadline = Instant::now() + API_READY;
    loop {
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Failure::Exited {
                status,
                during: "at start".into(),
            });
        }
        if Instant::now() >= deadline {
            return Err(Failure::Error(ProtocolError::new(
                ErrorCode::Timeout,
                format!(
                    "firecracker did not open its API socket {} within {}s",
                    socket.display(),
                    API_READY.as_secs()
                ),
            )));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The last line Firecracker printed: on stdout (console.log, where its
/// log lines go) or, failing that, in vmm.log.
fn last_output(plan: &BootPlan) -> Option<String> {
    last_line(&plan.paths.console_log).or_else(|| last_line(&plan.paths.vmm_log))
}

/// The last non-empty line of a file, read from its last 4 KiB only,
/// made printable and cut to [`MAX_HINT_CHARS`].
fn last_line(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.take(4096).read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("microagent: "))?;
    Some(
        line.chars()
            .take(MAX_HINT_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    )
}

/// Appends one of our own lines to vmm.log. Losing a note must not fail
/// a launch, so write errors are ignored.
fn note(log: &mut File, line: &str) {
    tracing::debug!("firecracker: {line}");
    let _ = writeln!(log, "microagent: {line}");
}

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_skips_our_notes_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            "a\nError: bad \x1b thing\n\nmicroagent: launch failed\n\n",
        )
        .unwrap();
        assert_eq!(last_line(&p).unwrap(), "Error: bad   thing");
        std::fs::write(&p, "x".repeat(10_000)).unwrap();
        assert_eq!(last_line(&p).unwrap().len(), MAX_HINT_CHARS);
        assert!(last_line(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn a_stale_socket_is_removed_and_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fc.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        remove_stale_socket(&p).unwrap();
        assert!(!p.exists());
        remove_stale_socket(&p).unwrap();
        std::fs::write(&p, "data").unwrap();
        assert!(remove_stale_socket(&p).is_err());
        assert!(p.exists());
    }
}

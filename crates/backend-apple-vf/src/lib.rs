//! The Apple Virtualization.framework backend.
//!
//! Virtualization.framework is only reachable from Swift/Objective-C, so the
//! VM lives in a separate supervisor process (`microagent-applevf-supervisor`,
//! the Swift package in `supervisors/applevf`, or `$MICROAGENT_APPLEVF_SUPERVISOR`). Each protocol command spawns it once:
//! one JSON [`Request`] on its stdin, one JSON [`Response`] on its stdout,
//! exit 0 iff `"ok": true`, diagnostics on stderr. This crate is that
//! client. The supervisor's output is untrusted: it is read with a size
//! bound and a deadline, and anything that is not one well-formed response
//! agreeing with the exit status becomes an error, never a panic.
//!
//! [`AppleVfMachine`] is the backend under the shared lifecycle: it launches
//! the supervisor's per-VM process with a [`VmPlan`], and the Rust host
//! channel drives the guest over the supervisor's hybrid-vsock bridge.

mod machine;

pub use machine::{
    control, control_socket, AppleVfMachine, PlanDisk, PlanNetwork, PlanVolume, VmPlan, STATE_FILE,
};

/// The apple-vf backend: the shared lifecycle over an [`AppleVfMachine`].
pub fn backend() -> vmkit_lifecycle::Lifecycle {
    vmkit_lifecycle::Lifecycle::new(AppleVfMachine::new())
}

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use vmkit_protocol::{
    Backend, BackendKind, ErrorCode, HostInfo, Outcome, ProtocolError, Request, Response,
};

/// Largest response accepted from a supervisor.
pub const MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// Largest stderr kept for error messages.
const MAX_DIAGNOSTICS: u64 = 16 << 10;
/// The supervisor's program name when `$MICROAGENT_APPLEVF_SUPERVISOR` is unset.
pub const SUPERVISOR_PROGRAM: &str = "microagent-applevf-supervisor";
/// The variable naming the supervisor executable.
pub const SUPERVISOR_ENV: &str = "MICROAGENT_APPLEVF_SUPERVISOR";

/// The Apple VF backend: a client of the Swift supervisor.
#[derive(Debug, Clone)]
pub struct AppleVfBackend {
    supervisor: Option<PathBuf>,
    timeout: Duration,
}

impl Default for AppleVfBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl AppleVfBackend {
    /// Uses `$MICROAGENT_APPLEVF_SUPERVISOR`, else
    /// `microagent-applevf-supervisor` in PATH.
    pub fn new() -> Self {
        AppleVfBackend {
            supervisor: std::env::var_os(SUPERVISOR_ENV).map(PathBuf::from),
            timeout: Duration::from_secs(300),
        }
    }

    /// Uses the supervisor at `path`, with a deadline per command.
    pub fn with_supervisor(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        AppleVfBackend {
            supervisor: Some(path.into()),
            timeout,
        }
    }

    /// The supervisor executable this client runs.
    pub fn program(&self) -> PathBuf {
        self.supervisor
            .clone()
            .unwrap_or_else(|| PathBuf::from(SUPERVISOR_PROGRAM))
    }

    /// Sends one request to a fresh supervisor process and returns its response.
    pub fn call(&self, request: &Request) -> Result<Response, ProtocolError> {
        let program = self.program();
        let unavailable = |e: std::io::Error| {
            ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "cannot start the Apple VF supervisor {}: {e}; it ships with the macOS build of microagent",
                    program.display()
                ),
            )
        };
        let mut child = Command::new(&program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(unavailable)?;
        let body = serde_json::to_vec(request).expect("requests always serialize");
        let mut stdin = child.stdin.take().expect("piped");
        // A supervisor that never reads must not block us: write on a thread.
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        let tx_err = tx.clone();
        thread::spawn(move || {
            let mut out = Vec::new();
            let r = stdout.take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut out);
            let _ = tx.send((true, r.map(|_| out)));
        });
        thread::spawn(move || {
            let mut err = Vec::new();
            let r = stderr.take(MAX_DIAGNOSTICS).read_to_end(&mut err);
            let _ = tx_err.send((false, r.map(|_| err)));
        });
        let mut out = None;
        let mut diag = Vec::new();
        for _ in 0..2 {
            match rx.recv_timeout(self.timeout) {
                Ok((true, r)) => out = Some(r),
                Ok((false, r)) => diag = r.unwrap_or_default(),
                Err(_) => break,
            }
        }
        let Some(out) = out else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProtocolError::new(
                ErrorCode::Timeout,
                format!(
                    "the Apple VF supervisor did not answer within {}s",
                    self.timeout.as_secs()
                ),
            ));
        };
        let _ = writer.join();
        let status = child.wait().map_err(unavailable)?;
        let diag = String::from_utf8_lossy(&diag).trim().to_owned();
        let out = out.map_err(|e| bad(format!("reading its response: {e}"), &diag))?;
        if out.len() as u64 > MAX_RESPONSE_BYTES {
            let _ = child.kill();
            return Err(bad(
                format!("its response exceeds {MAX_RESPONSE_BYTES} bytes"),
                &diag,
            ));
        }
        let response: Response = serde_json::from_slice(&out).map_err(|e| {
            bad(
                format!("its response is not a protocol response: {e}"),
                &diag,
            )
        })?;
        if response.ok != status.success() {
            return Err(bad(
                format!("it answered ok={} but exited with {status}", response.ok),
                &diag,
            ));
        }
        if response.ok == response.error.is_some() {
            return Err(bad("ok and error disagree in its response".into(), &diag));
        }
        if response.backend != BackendKind::AppleVf {
            return Err(bad(
                format!("it answered as backend {}", response.backend),
                &diag,
            ));
        }
        Ok(response)
    }

    /// Sends one request to the supervisor and returns what it did: every
    /// request method of this backend is this.
    pub fn command(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let response = self.call(request)?;
        if let Some(error) = response.error {
            return Err(error);
        }
        Ok(Outcome {
            event: response.event,
            host: response.host,
            result: response.result,
            snapshots: response.snapshots,
        })
    }
}

fn bad(what: String, diagnostics: &str) -> ProtocolError {
    let mut message = format!("the Apple VF supervisor misbehaved: {what}");
    if !diagnostics.is_empty() {
        message.push_str(&format!(" (stderr: {diagnostics})"));
    }
    ProtocolError::new(ErrorCode::Internal, message)
}

impl Backend for AppleVfBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::AppleVf
    }
    fn host(&self) -> Result<HostInfo, ProtocolError> {
        let request = Request {
            command: vmkit_protocol::Command::Host,
            identity: vmkit_protocol::Identity {
                backend: BackendKind::AppleVf,
                ..vmkit_protocol::Identity::host_probe()
            },
            config: None,
            state_dir: None,
            image: None,
            snapshot: None,
            from_snapshot: None,
        };
        self.command(&request)?
            .host
            .ok_or_else(|| bad("it answered host without host facts".into(), ""))
    }
    // Every request goes to the supervisor as it is.
    vmkit_protocol::forward_requests!(command);
}

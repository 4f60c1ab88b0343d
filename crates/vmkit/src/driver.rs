//! [`Driver`]: how the library reaches every backend, the same way.
//!
//! The protocol's [`Backend`] is the one-request, one-response form. A
//! [`crate::Runtime`] needs a little more from a backend: streaming runs
//! and execs, cleaning up after dead commands, and a quick check that it
//! can run here at all. [`driver_for`] builds the driver for any
//! [`BackendKind`]: the shared lifecycle over the backend's machine
//! (apple-vf's is the Swift supervisor's per-VM process, on macOS), and
//! off macOS, for apple-vf, the one-request supervisor client.

use std::io::Write;
use std::path::Path;

use vmkit_apple_vf::AppleVfBackend;
use vmkit_channel::host::ExecClient;
use vmkit_lifecycle::{ExecOptions, Lifecycle, Observer, RunOutput};
use vmkit_protocol::{
    Backend, BackendKind, ErrorCode, HostInfo, Outcome, ProtocolError, Request, RunResult, Volume,
};

/// A backend as the library drives it.
pub trait Driver: Backend {
    /// Fails early, with the remedy, when the backend cannot run on this
    /// host (before any kernel or image work).
    fn preflight(&self) -> Result<(), ProtocolError>;

    /// Runs a workload once, streaming its output to the sinks; `keep`
    /// leaves the workspace `stopped` afterwards.
    fn run_streaming(
        &self,
        request: &Request,
        keep: bool,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunOutput, ProtocolError>;

    /// Runs a command in a running workspace, streaming its output.
    fn exec_streaming(
        &self,
        state_dir: &Path,
        name: &str,
        options: ExecOptions,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunResult, ProtocolError>;

    /// Cleans up VMs whose driving command died; returns their names.
    fn gc(&self, state_dir: &Path) -> Result<Vec<String>, ProtocolError>;

    /// Whether these host folders can be shared as volumes here (checked
    /// with `preflight`, before any kernel or image work).
    fn check_volumes(&self, volumes: &[Volume]) -> Result<(), ProtocolError> {
        vmkit_lifecycle::check_volume_folders(volumes)
    }

    /// A client of a running workspace's exec service, for `cp`.
    fn exec_client(&self, _state_dir: &Path, _name: &str) -> Result<ExecClient, ProtocolError> {
        Err(ProtocolError::new(
            ErrorCode::Unavailable,
            "cp is not available through this backend's supervisor yet",
        ))
    }
}

/// The driver for `kind`; `observer` sees every lifecycle event as it is
/// recorded.
pub fn driver_for(kind: BackendKind, observer: Option<Observer>) -> Box<dyn Driver> {
    let lifecycle = match kind {
        BackendKind::Qemu => vmkit_qemu::backend(),
        BackendKind::Firecracker => vmkit_firecracker::backend(),
        BackendKind::AppleVf if cfg!(target_os = "macos") => vmkit_apple_vf::backend(),
        BackendKind::AppleVf => {
            return Box::new(Supervised {
                client: AppleVfBackend::new(),
                observer,
            })
        }
    };
    Box::new(match observer {
        Some(o) => lifecycle.with_observer(o),
        None => lifecycle,
    })
}

impl Driver for Lifecycle {
    fn preflight(&self) -> Result<(), ProtocolError> {
        self.machine().available()
    }

    fn check_volumes(&self, volumes: &[Volume]) -> Result<(), ProtocolError> {
        self.machine().check_volumes(volumes)?;
        vmkit_lifecycle::check_volume_folders(volumes)
    }

    fn exec_client(&self, state_dir: &Path, name: &str) -> Result<ExecClient, ProtocolError> {
        Lifecycle::exec_client(self, state_dir, name)
    }

    fn run_streaming(
        &self,
        request: &Request,
        keep: bool,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunOutput, ProtocolError> {
        Lifecycle::run_streaming(self, request, keep, stdout, stderr)
    }

    fn exec_streaming(
        &self,
        state_dir: &Path,
        name: &str,
        options: ExecOptions,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<RunResult, ProtocolError> {
        Lifecycle::exec_streaming(self, state_dir, name, options, stdout, stderr)
    }

    fn gc(&self, state_dir: &Path) -> Result<Vec<String>, ProtocolError> {
        Lifecycle::gc(self, state_dir)
    }
}

/// A backend whose lifecycle lives in an external supervisor process
/// (apple-vf): every command is one protocol request to it, and the events
/// in its responses go to the observer.
struct Supervised {
    client: AppleVfBackend,
    observer: Option<Observer>,
}

impl Supervised {
    /// One request to the supervisor; the event in its answer goes to the
    /// observer.
    fn observed_command(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let outcome = self.client.command(request);
        if let (Ok(Outcome { event: Some(e), .. }), Some(observer)) = (&outcome, &self.observer) {
            observer(e);
        }
        outcome
    }

    fn unsupported(what: &str) -> ProtocolError {
        ProtocolError::new(
            ErrorCode::Unsupported,
            format!("{what} is not part of the apple-vf supervisor's protocol yet"),
        )
    }
}

impl Backend for Supervised {
    fn kind(&self) -> BackendKind {
        self.client.kind()
    }
    fn host(&self) -> Result<HostInfo, ProtocolError> {
        self.client.host()
    }
    vmkit_protocol::forward_requests!(observed_command);
}

impl Driver for Supervised {
    fn preflight(&self) -> Result<(), ProtocolError> {
        let program = self.client.program();
        let found = if program.components().count() > 1 {
            program.is_file()
        } else {
            vmkit_host::find_in_path(&program.to_string_lossy()).is_some()
        };
        if found {
            Ok(())
        } else {
            Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "the Apple VF supervisor {} is not installed (it ships with the macOS build of microagent; MICROAGENT_VF_SUPERVISOR names another)",
                    program.display()
                ),
            ))
        }
    }

    fn run_streaming(
        &self,
        request: &Request,
        keep: bool,
        _stdout: &mut dyn Write,
        _stderr: &mut dyn Write,
    ) -> Result<RunOutput, ProtocolError> {
        if keep {
            return Err(Self::unsupported("run --keep"));
        }
        // One response: the supervisor reports the result, not the output.
        let outcome = self.run(request)?;
        let result = outcome.result.ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::Internal,
                "the apple-vf supervisor answered run without a result",
            )
        })?;
        Ok(RunOutput {
            result,
            setup_failed: None,
        })
    }

    fn exec_streaming(
        &self,
        _state_dir: &Path,
        _name: &str,
        _options: ExecOptions,
        _stdout: &mut dyn Write,
        _stderr: &mut dyn Write,
    ) -> Result<RunResult, ProtocolError> {
        Err(Self::unsupported("exec"))
    }

    fn gc(&self, _state_dir: &Path) -> Result<Vec<String>, ProtocolError> {
        // The supervisor owns its VMs and their clean-up.
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_gets_a_driver_of_its_kind() {
        for kind in [
            BackendKind::Qemu,
            BackendKind::Firecracker,
            BackendKind::AppleVf,
        ] {
            assert_eq!(driver_for(kind, None).kind(), kind);
        }
    }
}

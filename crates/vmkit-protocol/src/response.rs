use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BackendKind, Event, ProtocolError};

/// A backend's answer to one [`crate::Request`]. `ok` is true iff `error` is
/// absent; an external supervisor exits 0 iff `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// Whether the command succeeded.
    pub ok: bool,
    /// The backend that answered.
    pub backend: BackendKind,
    /// The state the workspace is in after the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    /// Host facts, for `host` and `check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostInfo>,
    /// The workload's outcome, for `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
    /// Snapshots made (`snapshot` create) or listed (`snapshot` list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<crate::SnapshotInfo>>,
    /// What went wrong, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProtocolError>,
}

impl Response {
    /// A failed response.
    pub fn failure(backend: BackendKind, error: ProtocolError) -> Self {
        Self {
            ok: false,
            backend,
            event: None,
            host: None,
            result: None,
            snapshots: None,
            error: Some(error),
        }
    }

    /// A successful response with nothing attached yet.
    pub fn success(backend: BackendKind) -> Self {
        Self {
            ok: true,
            backend,
            event: None,
            host: None,
            result: None,
            snapshots: None,
            error: None,
        }
    }
}

/// How guest code is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Accelerator {
    /// Linux KVM.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
    /// Apple's Hypervisor.framework (through Virtualization.framework).
    Hvf,
    /// Nothing usable.
    None,
}

impl Accelerator {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
            Accelerator::Hvf => "hvf",
            Accelerator::None => "none",
        }
    }
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl RunResult {
    /// Longest `error` text kept from a guest: enough for any real
    /// diagnosis, too short to make the host hold a guest's flood.
    pub const MAX_ERROR_BYTES: usize = 4096;

    /// Checks a result that came from a guest (hostile): exactly one of
    /// `exitCode` (0-255) or `signal` (1-64), or neither with an `error`
    /// saying why the command did not run.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |m: String| Err(ProtocolError::invalid(format!("guest result: {m}")));
        match (self.exit_code, self.signal) {
            (Some(_), Some(_)) => bad("both exitCode and signal are set".into()),
            (Some(c), None) if !(0..=255).contains(&c) => {
                bad(format!("exitCode {c} is outside 0-255"))
            }
            (None, Some(s)) if !(1..=64).contains(&s) => bad(format!("signal {s} is outside 1-64")),
            (None, None) if self.error.is_none() => {
                bad("neither exitCode nor signal, and no error saying why".into())
            }
            _ => Ok(()),
        }
    }

    /// Cuts `error` to [`Self::MAX_ERROR_BYTES`] (on a character boundary).
    pub fn truncate_error(&mut self) {
        if let Some(e) = &mut self.error {
            truncate_text(e, Self::MAX_ERROR_BYTES);
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate_text(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
}

/// Facts about the host, answered by `host` and `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostInfo {
    /// `linux` or `macos`.
    pub os: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// The accelerator this backend would use.
    pub accelerator: Accelerator,
    /// Why that accelerator (e.g. "/dev/kvm is PVM: a standard guest kernel cannot run").
    pub accelerator_reason: String,
    /// Individual probes, each with a remedy where it failed.
    #[serde(default)]
    pub checks: Vec<CheckItem>,
}

/// One probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckItem {
    /// Short machine name (`kvm`, `qemu`, `mke2fs`, ...).
    pub name: String,
    /// The verdict.
    pub status: CheckStatus,
    /// What was found (a version, a path, an error).
    pub detail: String,
    /// What to do when the status is not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

/// A probe's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CheckStatus {
    /// Works.
    Ok,
    /// Works with a caveat, or only optional features are missing.
    Warn,
    /// Does not work.
    Fail,
}

/// The outcome of a workload: exactly one of `exitCode` or `signal` is set
/// when the command ran; `error` says why it did not.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// The command's exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// When the command started (guest clock).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::event::rfc3339_opt"
    )]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended (guest clock).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::event::rfc3339_opt"
    )]
    pub completed_at: Option<DateTime<Utc>>,
    /// Why the command did not complete normally (setup failure, timeout, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The command hit its deadline and was killed (its `signal` says how).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

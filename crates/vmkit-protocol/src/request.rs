use serde::{Deserialize, Serialize};

use crate::{BackendKind, MachineConfig, ProtocolError, SnapshotRef, SnapshotRequest};

/// Largest request an external supervisor accepts; anything bigger is refused
/// before parsing.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// One command for a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "WireRequest")]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Which workspace, on whose behalf, through which backend. Required on
    /// the wire for every command but `host`, which needs nothing: a `host`
    /// request without one gets [`Identity::host_probe`].
    pub identity: Identity,
    /// The machine; required by `check`, `prepare`, `start` and `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineConfig>,
    /// microagent's state folder, for commands that need no full config
    /// (`inspect`, `halt`, `stop`, `kill`, `delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// The image reference the root disk was built from, as the user gave
    /// it (`alpine`, `repo@sha256:...`, `oci-layout:DIR`); recorded by
    /// `prepare` and `run` for listings. Absent: the root disk's path is
    /// recorded instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// For `snapshot`: what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRequest>,
    /// For `start` (and `prepare` of a fork): continue from this snapshot
    /// instead of booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<SnapshotRef>,
}

/// Longest image reference a request may carry (a local path inside a
/// reference can be long; this bounds what a record holds).
pub const MAX_IMAGE_REF_BYTES: usize = 4096;

/// A request as it arrives, before the identity rule is applied.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireRequest {
    command: Command,
    #[serde(default)]
    identity: Option<Identity>,
    #[serde(default)]
    config: Option<MachineConfig>,
    #[serde(default)]
    state_dir: Option<String>,
    #[serde(default)]
    image: Option<String>,
    snapshot: Option<SnapshotRequest>,
    #[serde(default)]
    from_snapshot: Option<SnapshotRef>,
}

impl TryFrom<WireRequest> for Request {
    type Error = String;

    fn try_from(w: WireRequest) -> Result<Self, String> {
        let identity = match (w.identity, w.command) {
            (Some(identity), _) => identity,
            (None, Command::Host) => Identity::host_probe(),
            (None, _) => return Err("missing field `identity`".into()),
        };
        Ok(Request {
            command: w.command,
            identity,
            config: w.config,
            state_dir: w.state_dir,
            image: w.image,
            snapshot: w.snapshot,
            from_snapshot: w.from_snapshot,
        })
    }
}

/// The commands of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    /// Describe the host: OS, architecture, accelerator, available backends.
    Host,
    /// Check that the config could run here, without changing anything.
    Check,
    /// Create the workspace's state and disks; leaves it `prepared`.
    Prepare,
    /// Boot the VM; returns once the guest is `running`.
    Start,
    /// Prepare, start, execute the workload, stop and delete.
    Run,
    /// Report the current state.
    Inspect,
    /// Ask the guest to shut down cleanly; disk kept.
    Halt,
    /// Stop the VM, forcibly after a grace period; disk kept.
    Stop,
    /// Kill the VMM at once.
    Kill,
    /// Remove the workspace and its disks.
    Delete,
    /// Stop the vCPUs of a running VM; memory, devices and connections kept.
    Pause,
    /// Let a paused VM's vCPUs run again.
    Resume,
    /// Create, list or delete snapshots (`snapshot` says which).
    Snapshot,
}

impl Command {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Host => "host",
            Command::Check => "check",
            Command::Prepare => "prepare",
            Command::Start => "start",
            Command::Run => "run",
            Command::Inspect => "inspect",
            Command::Halt => "halt",
            Command::Stop => "stop",
            Command::Kill => "kill",
            Command::Delete => "delete",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Snapshot => "snapshot",
        }
    }

    /// Whether the command needs the full machine config.
    pub fn needs_config(self) -> bool {
        matches!(
            self,
            Command::Check | Command::Prepare | Command::Start | Command::Run
        )
    }

    /// Whether the command needs a state folder (from config or `stateDir`).
    pub fn needs_state_dir(self) -> bool {
        !matches!(self, Command::Host)
    }
}

/// Who a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Unique per request; echoed in events so callers can correlate.
    #[serde(rename = "requestID")]
    pub request_id: String,
    /// The workspace name.
    #[serde(rename = "runtimeID")]
    pub runtime_id: String,
    /// What the VM is for (`workspace`, `run`, or a caller's own label).
    pub role: String,
    /// Which backend serves it.
    pub backend: BackendKind,
}

impl Identity {
    /// The identity of a `host` request that came without one: the host's
    /// own backend ([`BackendKind::native`]), on behalf of nobody in particular.
    pub fn host_probe() -> Self {
        Identity {
            request_id: "host".into(),
            runtime_id: "host".into(),
            role: "host".into(),
            backend: BackendKind::native(),
        }
    }

    /// Checks the runtime ID is usable as a folder name and a hostname.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        validate_runtime_id(&self.runtime_id)?;
        if self.request_id.is_empty() || self.request_id.len() > 128 {
            return Err(ProtocolError::invalid(
                "identity.requestID must be 1-128 characters",
            ));
        }
        if self.role.len() > 64 {
            return Err(ProtocolError::invalid(
                "identity.role must be at most 64 characters",
            ));
        }
        Ok(())
    }
}

/// A workspace name: 1-63 characters of `[a-z0-9-_.]`, starting alphanumeric,
/// so it is safe as a folder name and a hostname.
pub fn validate_runtime_id(id: &str) -> Result<(), ProtocolError> {
    if is_folder_name(id, 63) {
        Ok(())
    } else {
        Err(ProtocolError::invalid(format!(
            "identity.runtimeID must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit; got {id:?}"
        )))
    }
}

/// 1-`max` letters, digits, `-`, `_` or `.`, starting with a letter or
/// digit: safe as a folder name (no `..`, no `/`).
pub(crate) fn is_folder_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Request {
    /// Parses and validates a request. Errors carry the JSON path of the
    /// offending field (`config.disks[1].mode: unknown variant ...`).
    pub fn from_json(bytes: &[u8]) -> Result<Request, ProtocolError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(ProtocolError::invalid(format!(
                "request is {} bytes; the limit is {MAX_REQUEST_BYTES}",
                bytes.len()
            )));
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let request: Request = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." {
                ProtocolError::invalid(format!("malformed request: {inner}"))
            } else {
                ProtocolError::invalid(format!("{path}: {inner}"))
            }
        })?;
        request.validate()?;
        Ok(request)
    }

    /// Checks everything serde cannot: identity, config ranges, and that the
    /// command has what it needs.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        self.identity.validate()?;
        if let Some(config) = &self.config {
            config.validate()?;
        }
        if self.command.needs_config() && self.config.is_none() {
            return Err(ProtocolError::invalid(format!(
                "command {} needs config",
                self.command.as_str()
            )));
        }
        if self.command.needs_state_dir() && self.state_dir().is_none() {
            return Err(ProtocolError::invalid(format!(
                "command {} needs stateDir (or config.stateDir)",
                self.command.as_str()
            )));
        }
        if let Some(image) = &self.image {
            if image.is_empty() || image.len() > MAX_IMAGE_REF_BYTES {
                return Err(ProtocolError::invalid(format!(
                    "image must be 1-{MAX_IMAGE_REF_BYTES} bytes, got {}",
                    image.len()
                )));
            }
            if image.chars().any(char::is_control) {
                return Err(ProtocolError::invalid(
                    "image must not contain control characters",
                ));
            }
        }
        if let Some(dir) = &self.state_dir {
            if !dir.starts_with('/') {
                return Err(ProtocolError::invalid(format!(
                    "stateDir must be an absolute path, got {dir:?}"
                )));
            }
        }
        if self.command == Command::Run
            && self.config.as_ref().is_some_and(|c| c.workload.is_none())
        {
            return Err(ProtocolError::invalid("command run needs config.workload"));
        }
        match (&self.snapshot, self.command) {
            (None, Command::Snapshot) => {
                return Err(ProtocolError::invalid("command snapshot needs snapshot"))
            }
            (Some(s), Command::Snapshot) => s.validate()?,
            (Some(_), _) => {
                return Err(ProtocolError::invalid(
                    "snapshot is only for command snapshot",
                ))
            }
            (None, _) => {}
        }
        if let Some(from) = &self.from_snapshot {
            if !matches!(self.command, Command::Start | Command::Prepare) {
                return Err(ProtocolError::invalid(
                    "fromSnapshot is only for commands start and prepare",
                ));
            }
            from.validate()?;
        }
        Ok(())
    }

    /// The workspace state folder, from `stateDir` or `config.stateDir`.
    pub fn state_dir(&self) -> Option<&str> {
        self.state_dir
            .as_deref()
            .or(self.config.as_ref().map(|c| c.state_dir.as_str()))
    }
}

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vmkit_protocol::{BackendKind, MachineConfig, RunResult, State};

use crate::ProcessRecord;

/// What the store knows about one workspace, kept in `workspace.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceRecord {
    /// The workspace name (the protocol's runtimeID).
    pub name: String,
    /// The current lifecycle state.
    pub state: State,
    /// The backend that runs it.
    pub backend: BackendKind,
    /// The image reference it was built from, as the user gave it.
    pub image: String,
    /// The machine it boots.
    pub config: MachineConfig,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// Whether it outlives the command that made it (`--keep`, `create`).
    #[serde(default)]
    pub keep: bool,
    /// The VMM process while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<ProcessRecord>,
    /// Helper processes (e.g. vhost-device-vsock) while the VM runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub helpers: Vec<ProcessRecord>,
    /// The CLI process driving a one-shot run, so `gc` can tell an orphan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ProcessRecord>,
    /// The port the guest's exec service listens on, as its init announced
    /// in `ready`, while the VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_port: Option<u32>,
    /// The last workload's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<RunResult>,
    /// Free-form labels set by whoever created it; the MCP server marks the
    /// workspaces it created here and shows its clients only those.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

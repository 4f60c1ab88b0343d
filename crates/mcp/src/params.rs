//! The tools' arguments and structured results. Their JSON Schemas are what
//! `tools/list` shows; docs/mcp.md describes them for people.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Arguments of `run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunInput {
    /// Registry reference of the image (`alpine`, `host:port/repo:tag`).
    pub image: String,
    /// Shell commands run first, in order; the first failure ends the run.
    #[serde(default)]
    pub setup: Vec<String>,
    /// The shell command whose result is returned.
    pub command: String,
    /// Extra environment variables for the commands.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whole-run deadline in seconds (bounded by the server).
    pub timeout_seconds: Option<u64>,
    /// Guest memory, MiB (default 512, bounded by the server).
    pub memory_mib: Option<u32>,
    /// vCPUs (default 1, bounded by the server).
    pub cpus: Option<u32>,
    /// Guest network mode, at most as open as the server's own (public >
    /// allowlist > none); default: the server's.
    pub network: Option<NetworkInput>,
    /// Allow rules (NAME, .NAME, IP, CIDR, each with :PORT, or host:PORT);
    /// each must lie within the server's. Default: the server's.
    pub allow: Option<Vec<String>>,
    /// Extra deny rules (same forms), added to the server's.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A guest network mode.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkInput {
    /// The public internet (not private, loopback or metadata addresses).
    Public,
    /// Only what allow rules name.
    Allowlist,
    /// No network device.
    None,
}

impl From<NetworkInput> for vmkit::protocol::NetworkMode {
    fn from(n: NetworkInput) -> Self {
        match n {
            NetworkInput::Public => vmkit::protocol::NetworkMode::Public,
            NetworkInput::Allowlist => vmkit::protocol::NetworkMode::Allowlist,
            NetworkInput::None => vmkit::protocol::NetworkMode::None,
        }
    }
}

/// A client's network arguments (`network`, `allow`, `deny`), gathered.
#[derive(Debug, Default)]
pub struct NetworkAsk {
    /// The mode asked for.
    pub mode: Option<NetworkInput>,
    /// Allow rules asked for.
    pub allow: Option<Vec<String>>,
    /// Deny rules to add.
    pub deny: Vec<String>,
}

/// What a command did (`run`, `workspace_exec`).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandOutput {
    /// The command's exit code; 128+N when killed by signal N.
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Its stdout, at most the server's cap (64 KiB by default), as UTF-8
    /// text (invalid bytes replaced).
    pub stdout: String,
    /// Its stderr, likewise.
    pub stderr: String,
    /// stdout was longer than the cap; `stdoutBytes` says how long.
    pub stdout_truncated: bool,
    /// stderr was longer than the cap.
    pub stderr_truncated: bool,
    /// Total bytes the command wrote to stdout.
    pub stdout_bytes: u64,
    /// Total bytes the command wrote to stderr.
    pub stderr_bytes: u64,
    /// The deadline expired and the command was killed.
    pub timed_out: bool,
    /// For `run`: the setup command that failed (the main command did not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_failed: Option<String>,
}

/// Arguments of `workspace_create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateInput {
    /// The workspace name: letters, digits, '-', '_', '.'.
    pub name: String,
    /// Registry reference of the image.
    pub image: String,
    /// Guest memory, MiB (default 512, bounded by the server).
    pub memory_mib: Option<u32>,
    /// vCPUs (default 1, bounded by the server).
    pub cpus: Option<u32>,
    /// Environment for every command in the workspace.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Boot it right away (default true).
    pub start: Option<bool>,
    /// Guest network mode, at most as open as the server's own (public >
    /// allowlist > none); default: the server's.
    pub network: Option<NetworkInput>,
    /// Allow rules (NAME, .NAME, IP, CIDR, each with :PORT, or host:PORT);
    /// each must lie within the server's. Default: the server's.
    pub allow: Option<Vec<String>>,
    /// Extra deny rules (same forms), added to the server's.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A workspace name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameInput {
    /// The workspace name.
    pub name: String,
}

/// Arguments of `workspace_start`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartInput {
    /// The workspace name.
    pub name: String,
    /// Continue from this snapshot of the workspace instead of booting.
    pub from_snapshot: Option<String>,
}

/// Arguments of `workspace_delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteInput {
    /// The workspace name.
    pub name: String,
    /// Kill the VM first if it is running (default true).
    pub force: Option<bool>,
}

/// Arguments of `workspace_exec`: `argv` or `command`, not both.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecInput {
    /// The workspace name.
    pub name: String,
    /// Program and arguments, run without a shell.
    pub argv: Option<Vec<String>>,
    /// A shell command, run with `/bin/sh -c`.
    pub command: Option<String>,
    /// Text for the command's stdin.
    pub stdin: Option<String>,
    /// Working directory in the guest.
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Deadline in seconds (bounded by the server).
    pub timeout_seconds: Option<u64>,
}

/// Arguments of `workspace_write_file`: `content` or `contentBase64`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WriteFileInput {
    /// The workspace name.
    pub name: String,
    /// Absolute path in the guest; missing parent folders are created.
    pub path: String,
    /// The content as text.
    pub content: Option<String>,
    /// The content as base64, for bytes that are not text.
    pub content_base64: Option<String>,
    /// Permission bits in octal, e.g. "0755" (default 0644).
    pub mode: Option<String>,
}

/// Result of `workspace_write_file`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriteFileOutput {
    /// The path written.
    pub path: String,
    /// How many bytes.
    pub bytes: u64,
}

/// Arguments of `workspace_read_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadFileInput {
    /// The workspace name.
    pub name: String,
    /// Absolute path in the guest.
    pub path: String,
    /// Start at this byte (default 0).
    pub offset: Option<u64>,
    /// Read at most this many bytes (default and maximum: the server's output cap).
    pub max_bytes: Option<u64>,
}

/// Result of `workspace_read_file`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadFileOutput {
    /// The path read.
    pub path: String,
    /// The file's size in bytes.
    pub size: u64,
    /// Where this read started.
    pub offset: u64,
    /// "utf-8" when `content` is the bytes as text, "base64" otherwise.
    pub encoding: String,
    /// The bytes read.
    pub content: String,
    /// How many bytes were read.
    pub bytes: u64,
    /// More of the file follows: read again from `offset + bytes`.
    pub truncated: bool,
}

/// One workspace, as `workspace_list` and `workspace_status` show it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceInfo {
    /// The workspace name.
    pub name: String,
    /// prepared, starting, running, stopping, halted, stopped or failed.
    pub state: String,
    /// The image it was made from.
    pub image: String,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Its guest network policy.
    pub network: NetworkInfo,
}

/// A workspace's network policy.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInfo {
    /// public, allowlist or none.
    pub mode: String,
    /// Allow rules.
    pub allow: Vec<String>,
    /// Deny rules (the server's and the client's).
    pub deny: Vec<String>,
}

/// Result of `workspace_list`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListOutput {
    /// The workspaces this server created.
    pub workspaces: Vec<WorkspaceInfo>,
}

/// Result of the lifecycle tools (`workspace_start`, `workspace_halt`, ...).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateOutput {
    /// The workspace name.
    pub name: String,
    /// Its state afterwards ("deleted" after `workspace_delete`).
    pub state: String,
    /// What happened, in a few words.
    pub detail: String,
}

/// Which way `workspace_cp` copies.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CopyDirection {
    /// From the server's files folder into the workspace.
    ToGuest,
    /// From the workspace into the server's files folder.
    FromGuest,
}

/// Arguments of `workspace_cp`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyInput {
    /// The workspace name.
    pub name: String,
    /// toGuest or fromGuest.
    pub direction: CopyDirection,
    /// A path relative to the server's files folder (`microagent mcp
    /// --files-dir`); "." is the folder itself. Never absolute, no "..".
    pub host_path: String,
    /// An absolute path in the guest.
    pub guest_path: String,
}

/// Result of `workspace_cp`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyOutput {
    /// "toGuest" or "fromGuest".
    pub direction: String,
    /// The host path, relative to the files folder, as given.
    pub host_path: String,
    /// The guest path.
    pub guest_path: String,
    /// Files, folders and links copied.
    pub entries: u64,
    /// File content bytes copied.
    pub bytes: u64,
}

/// Arguments of `workspace_egress_log`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressInput {
    /// The workspace name.
    pub name: String,
    /// How many of the newest decisions (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Result of `workspace_egress_log`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressOutput {
    /// The newest decisions, oldest first: each the JSON record of
    /// `microagent egress NAME --json` (time, decision, proto, dst, name,
    /// nameSource, rule, reason, bytesOut, bytesIn, durationMs).
    pub records: Vec<serde_json::Value>,
    /// Decisions in the log in all.
    pub total: u64,
    /// Older decisions were left out (by the limit or the output cap).
    pub truncated: bool,
}

/// Arguments of `workspace_snapshot`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotInput {
    /// The workspace (running or paused; stopped too with diskOnly).
    pub name: String,
    /// The snapshot's tag: letters, digits, '-', '_', '.'.
    pub tag: String,
    /// Only the disk, no memory (default false).
    pub disk_only: Option<bool>,
}

/// Result of `workspace_snapshot`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOutput {
    /// The workspace.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// Disk only: a fork or restore boots from the disk.
    pub disk_only: bool,
    /// The guest's filesystems were frozen while the disk was copied (a
    /// running or paused workspace): the disk is clean and complete.
    pub frozen: bool,
    /// Guest memory it holds, MiB.
    pub memory_mib: u32,
    /// Bytes it takes on the host.
    pub size_bytes: u64,
}

/// Arguments of `workspace_fork`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForkInput {
    /// The new workspace's name.
    pub name: String,
    /// The workspace whose snapshot it continues from.
    pub source: String,
    /// The snapshot's tag.
    pub tag: String,
}

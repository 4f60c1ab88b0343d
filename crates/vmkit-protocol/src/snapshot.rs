//! Snapshot requests: what `snapshot` and `start` from a snapshot carry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{validate_runtime_id, ProtocolError};

/// What a `snapshot` request does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotRequest {
    /// `create`, `list` or `delete`.
    pub action: SnapshotAction,
    /// The snapshot's tag (required for create and delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Only the disk (the guest's filesystems frozen while it is cloned),
    /// no memory: restoring it is a fresh boot from that disk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_only: bool,
}

/// The snapshot actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SnapshotAction {
    /// Save memory, device state and disk of a running or paused workspace.
    Create,
    /// List a workspace's snapshots.
    List,
    /// Remove one snapshot.
    Delete,
}

/// Where a `start` resumes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotRef {
    /// The workspace that holds the snapshot (the request's own for a
    /// restore, another for a fork).
    #[serde(rename = "runtimeID")]
    pub runtime_id: String,
    /// The snapshot's tag.
    pub tag: String,
}

/// A tag: 1-64 letters, digits, `-`, `_` or `.`, starting alphanumeric
/// (it names a folder).
pub fn validate_tag(tag: &str) -> Result<(), ProtocolError> {
    if crate::request::is_folder_name(tag, 64) {
        Ok(())
    } else {
        Err(ProtocolError::invalid(format!(
            "snapshot tag must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit; got {tag:?}"
        )))
    }
}

impl SnapshotRequest {
    /// Checks the tag is there when needed, and well-formed.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match (&self.tag, self.action) {
            (None, SnapshotAction::Create | SnapshotAction::Delete) => Err(ProtocolError::invalid(
                "snapshot.tag is required for create and delete",
            )),
            (Some(t), _) => validate_tag(t),
            (None, SnapshotAction::List) => Ok(()),
        }?;
        if self.disk_only && self.action != SnapshotAction::Create {
            return Err(ProtocolError::invalid(
                "snapshot.diskOnly applies to create only",
            ));
        }
        Ok(())
    }
}

impl SnapshotRef {
    /// Checks both names.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        validate_runtime_id(&self.runtime_id).map_err(|e| {
            ProtocolError::invalid(e.message.replacen(
                "identity.runtimeID",
                "fromSnapshot.runtimeID",
                1,
            ))
        })?;
        validate_tag(&self.tag)
    }
}

/// One snapshot, as `snapshot` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// The workspace it belongs to.
    #[serde(rename = "runtimeID")]
    pub runtime_id: String,
    /// Its tag.
    pub tag: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Disk only (no memory): restoring boots from the disk.
    #[serde(default)]
    pub disk_only: bool,
    /// The guest's filesystems were frozen while its disk was copied (a
    /// disk-only snapshot of a running or paused workspace), so the copy
    /// is clean, with all the guest had written. False where no freeze is
    /// needed: a stopped workspace's disk, a memory snapshot (its disk
    /// goes with its memory).
    #[serde(default)]
    pub frozen: bool,
    /// Guest memory it holds, MiB (a restore needs the same).
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u32,
    /// Bytes it takes on the host (sparse files counted by their blocks).
    pub size_bytes: u64,
}

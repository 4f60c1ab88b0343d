//! Snapshots, restores and forks through the [`Runtime`].

use vmkit_protocol::{
    Command, ErrorCode, Event, ProtocolError, SnapshotAction, SnapshotInfo, SnapshotRef,
    SnapshotRequest,
};

use crate::{Runtime, VmkitError};

impl Runtime {
    /// Snapshots a running or paused workspace (memory, device state and
    /// disk), or with `disk_only` just its disk (also of a stopped one).
    pub fn snapshot_create(
        &self,
        name: &str,
        tag: &str,
        disk_only: bool,
    ) -> Result<SnapshotInfo, VmkitError> {
        let mut list = self.snapshot_call(name, SnapshotAction::Create, Some(tag), disk_only)?;
        list.pop().ok_or_else(|| {
            ProtocolError::new(ErrorCode::Internal, "the backend reported no snapshot").into()
        })
    }

    /// The snapshots of `name`, or of every workspace.
    pub fn snapshot_list(&self, name: Option<&str>) -> Result<Vec<SnapshotInfo>, VmkitError> {
        match name {
            Some(n) => self.snapshot_call(n, SnapshotAction::List, None, false),
            None => {
                let store = vmkit_state::StateStore::open(self.state_dir())?;
                let mut all = Vec::new();
                for record in store.list()? {
                    all.extend(self.snapshot_call(
                        &record.name,
                        SnapshotAction::List,
                        None,
                        false,
                    )?);
                }
                Ok(all)
            }
        }
    }

    /// Removes one snapshot.
    pub fn snapshot_delete(&self, name: &str, tag: &str) -> Result<(), VmkitError> {
        self.snapshot_call(name, SnapshotAction::Delete, Some(tag), false)
            .map(|_| ())
    }

    /// Starts a stopped workspace from one of its snapshots: its disk
    /// becomes the snapshot's, and its memory too unless disk-only.
    pub fn start_from_snapshot(&self, name: &str, tag: &str) -> Result<Event, VmkitError> {
        let from = SnapshotRef {
            runtime_id: name.to_owned(),
            tag: tag.to_owned(),
        };
        self.start_with(name, Some(from))
    }

    /// A new workspace `name`, running, continued from `source`'s snapshot
    /// `tag` with its own copy of disk and memory. If the restore is
    /// refused, the new workspace is removed again.
    pub fn fork(&self, name: &str, source: &str, tag: &str) -> Result<Event, VmkitError> {
        let from = SnapshotRef {
            runtime_id: source.to_owned(),
            tag: tag.to_owned(),
        };
        let store = vmkit_state::StateStore::open(self.state_dir())?;
        let source_record = store.peek(source)?.ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::NotFound,
                format!("workspace {source:?} does not exist"),
            )
        })?;
        let mut config = source_record.config;
        config.state_dir = self.state_dir().to_string_lossy().into_owned();
        let mut prepare = self.request(
            Command::Prepare,
            name,
            "workspace",
            Some(config),
            Some(&source_record.image),
        );
        prepare.from_snapshot = Some(from.clone());
        self.call(&prepare)?;
        match self.start_with(name, Some(from)) {
            Ok(event) => Ok(event),
            Err(e) => {
                let _ = self.delete(name, true);
                Err(e)
            }
        }
    }

    fn snapshot_call(
        &self,
        name: &str,
        action: SnapshotAction,
        tag: Option<&str>,
        disk_only: bool,
    ) -> Result<Vec<SnapshotInfo>, VmkitError> {
        let mut request = self.request(Command::Snapshot, name, "workspace", None, None);
        request.snapshot = Some(SnapshotRequest {
            action,
            tag: tag.map(str::to_owned),
            disk_only,
        });
        Ok(self.call_outcome(&request)?.snapshots.unwrap_or_default())
    }
}

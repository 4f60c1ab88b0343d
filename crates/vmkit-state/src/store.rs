use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use vmkit_protocol::validate_runtime_id;

use crate::{EventLog, LockWait, StateError, WorkspaceLock, WorkspaceRecord};

const RECORD: &str = "workspace.json";
const EVENTS: &str = "events.jsonl";

/// The state folder: workspaces, their locks and event logs.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// Opens (creating if needed) a state folder. Refuses one another user
    /// owns or could write to (see [`crate::ensure_private_dir`]); the root
    /// may be a symlink, the folders inside may not.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        private_dir(&root, true)?;
        for dir in [root.join("workspaces"), root.join("locks")] {
            private_dir(&dir, false)?;
        }
        Ok(StateStore { root })
    }

    /// The state folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of workspace `name` (which may not exist yet).
    pub fn workspace_dir(&self, name: &str) -> Result<PathBuf, StateError> {
        validate_runtime_id(name)?;
        Ok(self.root.join("workspaces").join(name))
    }

    /// Takes the exclusive lock of workspace `name` (it need not exist).
    pub fn lock(&self, name: &str, wait: LockWait) -> Result<WorkspaceLock, StateError> {
        validate_runtime_id(name)?;
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let lock = WorkspaceLock::acquire(&path, name, wait)?;
        // Whatever is done under the lock happens in this folder: it must be ours.
        let dir = self.workspace_dir(name)?;
        if fs::symlink_metadata(&dir).is_ok() {
            private_dir(&dir, false)?;
        }
        Ok(lock)
    }

    /// Reads a workspace's record; `None` if it does not exist.
    pub fn load(&self, lock: &WorkspaceLock) -> Result<Option<WorkspaceRecord>, StateError> {
        self.read_record(lock.name())
    }

    /// Reads a workspace's record without the lock. Safe because records are
    /// replaced atomically; the answer may be stale by the time it is used.
    pub fn peek(&self, name: &str) -> Result<Option<WorkspaceRecord>, StateError> {
        self.read_record(name)
    }

    fn read_record(&self, name: &str) -> Result<Option<WorkspaceRecord>, StateError> {
        let path = self.workspace_dir(name)?.join(RECORD);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::io("reading", path, e)),
        }
    }

    /// Creates a workspace; fails if one of that name exists.
    pub fn create(&self, lock: &WorkspaceLock, record: &WorkspaceRecord) -> Result<(), StateError> {
        if self.load(lock)?.is_some() {
            return Err(StateError::AlreadyExists {
                name: record.name.clone(),
            });
        }
        self.save(lock, record)
    }

    /// Replaces a workspace's record atomically.
    pub fn save(&self, lock: &WorkspaceLock, record: &WorkspaceRecord) -> Result<(), StateError> {
        if lock.name() != record.name {
            return Err(StateError::WrongLock {
                held: lock.name().to_owned(),
                wanted: record.name.clone(),
            });
        }
        let dir = self.workspace_dir(&record.name)?;
        private_dir(&dir, false)?;
        let json = serde_json::to_vec_pretty(record).expect("records always serialize");
        crate::write_atomic(&dir.join(RECORD), &json)
    }

    /// Sets one label on an existing workspace's record (under its lock).
    pub fn set_label(&self, name: &str, key: &str, value: &str) -> Result<(), StateError> {
        let lock = self.lock(name, LockWait::Block)?;
        let mut record = self.load(&lock)?.ok_or_else(|| StateError::NotFound {
            name: name.to_owned(),
        })?;
        record.labels.insert(key.to_owned(), value.to_owned());
        record.updated_at = chrono::Utc::now();
        self.save(&lock, &record)
    }

    /// Removes a workspace and everything in its folder.
    pub fn remove(&self, lock: &WorkspaceLock) -> Result<(), StateError> {
        let dir = self.workspace_dir(lock.name())?;
        // Drop the record first: a crash half-way through leaves a folder
        // without a record, which `list` ignores, never a record without
        // its disks.
        match fs::remove_file(dir.join(RECORD)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::io("removing", dir.join(RECORD), e)),
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::io("removing", dir, e)),
        }
    }

    /// The event log of workspace `name`.
    pub fn events(&self, name: &str) -> Result<EventLog, StateError> {
        Ok(EventLog::new(self.workspace_dir(name)?.join(EVENTS)))
    }

    /// Every workspace with a readable record, sorted by name. Corrupt
    /// records are reported through `tracing` and skipped, so one bad
    /// folder never hides the rest.
    pub fn list(&self) -> Result<Vec<WorkspaceRecord>, StateError> {
        let dir = self.root.join("workspaces");
        let entries = fs::read_dir(&dir).map_err(|e| StateError::io("listing", &dir, e))?;
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StateError::io("listing", &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_runtime_id(&name).is_err() {
                continue;
            }
            match self.read_record(&name) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping workspace {name}: {e}"),
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }
}

fn private_dir(dir: &Path, follow: bool) -> Result<(), StateError> {
    crate::ensure_private_dir(dir, follow).map_err(|e| StateError::io("securing", dir, e))
}

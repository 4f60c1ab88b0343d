//! Snapshots of a workspace: memory, device state and disk, consistent with
//! each other, kept under `<workspace>/snapshots/<tag>/`.
//!
//! A snapshot is made with the VM paused (the VMM flushes its disks when it
//! stops the vCPUs): the machine writes its device state and memory
//! ([`crate::Machine::save_state`]), the disk is cloned (shared blocks
//! where the file system can, else a sparse copy), and `snapshot.json`
//! records what a restore must match: the kernel's SHA-256, the memory size
//! and vCPUs. It all happens in `.staging-<tag>`, renamed into place at the
//! end, so a failed snapshot (a full disk, say) leaves nothing listed and
//! the workspace runs on.
//!
//! A restore (`start --from-snapshot`) or a fork (a new workspace prepared
//! from another's snapshot, then started from it) gets its own copy of the
//! disk and memory; the guest init notices the new host relay, sets its
//! clock, and reports ready again.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmkit_protocol::{
    ErrorCode, MachineConfig, Outcome, ProtocolError, Request, SnapshotAction, SnapshotInfo,
    SnapshotRef, State,
};
use vmkit_state::{StateStore, WorkspaceRecord};

use crate::lifecycle::{state_err, Lifecycle};

/// The snapshots folder in a workspace.
const SNAPSHOTS: &str = "snapshots";
/// The description of one snapshot.
const META: &str = "snapshot.json";
/// The snapshot's copy of the root disk.
const DISK: &str = "rootfs.ext4";
/// Largest `snapshot.json` read back.
const MAX_META: u64 = 1 << 20;

/// What `snapshot.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotMeta {
    info: SnapshotInfo,
    /// SHA-256 of the kernel the VM was booted with.
    kernel_sha256: String,
    /// The workspace's machine at the time (kernel, memory, vCPUs, disks).
    config: MachineConfig,
}

impl Lifecycle {
    /// The `snapshot` command.
    pub(crate) fn snapshot_command(&self, request: &Request) -> Result<Outcome, ProtocolError> {
        let spec = request
            .snapshot
            .as_ref()
            .ok_or_else(|| ProtocolError::invalid("command snapshot needs snapshot"))?;
        let name = &request.identity.runtime_id;
        let snapshots = self.with_lock(request, |store, lock| {
            let mut record = self.load(store, lock)?;
            match (spec.action, spec.tag.as_deref()) {
                (SnapshotAction::List, tag) => {
                    let all = list(&snapshots_dir(store, name)?)?;
                    Ok(all
                        .into_iter()
                        .filter(|s| tag.is_none_or(|t| t == s.tag))
                        .collect())
                }
                (SnapshotAction::Create, Some(tag)) => {
                    self.reconcile(store, lock, &mut record)?;
                    let info = self.create_snapshot(store, &record, tag, spec.disk_only)?;
                    Ok(vec![info])
                }
                (SnapshotAction::Delete, Some(tag)) => {
                    let dir = snapshots_dir(store, name)?.join(tag);
                    if !dir.join(META).is_file() {
                        return Err(not_found(name, tag));
                    }
                    std::fs::remove_dir_all(&dir).map_err(|e| {
                        internal(format!("removing snapshot {}: {e}", dir.display()))
                    })?;
                    Ok(Vec::new())
                }
                (_, None) => Err(ProtocolError::invalid("snapshot.tag is required")),
            }
        })?;
        Ok(Outcome {
            snapshots: Some(snapshots),
            ..Outcome::default()
        })
    }

    fn create_snapshot(
        &self,
        store: &StateStore,
        record: &WorkspaceRecord,
        tag: &str,
        disk_only: bool,
    ) -> Result<SnapshotInfo, ProtocolError> {
        let name = &record.name;
        let running = match record.state {
            State::Running => true,
            State::Paused => false,
            s if disk_only && !s.has_vm() => false,
            s => {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidState,
                    format!(
                        "cannot snapshot {name:?}: it is {s}; a memory snapshot needs a running or paused workspace (--disk-only works on a stopped one)"
                    ),
                ))
            }
        };
        let with_vm = record.state.has_vm();
        let dir = snapshots_dir(store, name)?;
        let final_dir = dir.join(tag);
        if final_dir.exists() {
            return Err(ProtocolError::new(
                ErrorCode::AlreadyExists,
                format!("workspace {name:?} already has a snapshot {tag:?}; delete it first"),
            ));
        }
        let kernel_sha256 = sha256_file(Path::new(&record.config.kernel_path))?;
        let staging = dir.join(format!(".staging-{tag}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| internal(format!("creating {}: {e}", staging.display())))?;
        let paths = Self::paths(store, name)?;
        if running {
            self.machine().set_paused(&paths, true)?;
        }
        let made = (|| {
            if !disk_only {
                self.machine().save_state(&paths, &staging)?;
            }
            vmkit_rootfs::clone_disk(&paths.disk, &staging.join(DISK))
                .map_err(|e| internal(format!("copying the disk into the snapshot: {e}")))?;
            let info = SnapshotInfo {
                runtime_id: name.clone(),
                tag: tag.to_owned(),
                created_at: Utc::now(),
                disk_only: disk_only || !with_vm,
                memory_mib: record.config.memory_mib,
                size_bytes: 0,
            };
            let meta = SnapshotMeta {
                info,
                kernel_sha256,
                config: record.config.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&meta)
                .map_err(|e| internal(format!("encoding {META}: {e}")))?;
            write_synced(&staging.join(META), &bytes)?;
            std::fs::rename(&staging, &final_dir).map_err(|e| {
                internal(format!(
                    "moving the snapshot into {}: {e}",
                    final_dir.display()
                ))
            })?;
            Ok(meta.info)
        })();
        let resumed = if running {
            self.machine().set_paused(&paths, false)
        } else {
            Ok(())
        };
        match made {
            Ok(mut info) => {
                resumed?;
                info.size_bytes = disk_usage(&final_dir);
                Ok(info)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// For a `prepare` with `fromSnapshot` (a fork): the request's config
    /// becomes the snapshot's machine, its root disk the snapshot's disk
    /// (which `prepare` then copies), keeping the new state folder.
    pub(crate) fn fork_request(&self, request: &Request) -> Result<Request, ProtocolError> {
        let Some(from) = &request.from_snapshot else {
            return Ok(request.clone());
        };
        let store = self.store(request)?;
        let (meta, dir) = read_meta(&store, from)?;
        let mut config = meta.config;
        config.rootfs_path = dir.join(DISK).to_string_lossy().into_owned();
        if let Some(given) = &request.config {
            config.state_dir = given.state_dir.clone();
        }
        config.hostname = None;
        let mut request = request.clone();
        request.config = Some(config);
        Ok(request)
    }

    /// For a `start` with `fromSnapshot`: checks the snapshot fits this
    /// workspace's machine, gives the workspace a copy of the snapshot's
    /// disk, and returns the folder to restore memory from (`None` for a
    /// disk-only snapshot: that start is a fresh boot).
    pub(crate) fn restore_source(
        &self,
        store: &StateStore,
        record: &WorkspaceRecord,
        from: &SnapshotRef,
    ) -> Result<Option<PathBuf>, ProtocolError> {
        let (meta, dir) = read_meta(store, from)?;
        let refuse = |why: String| {
            ProtocolError::invalid(format!(
                "cannot restore snapshot {}:{} into {:?}: {why}; nothing was started",
                from.runtime_id, from.tag, record.name
            ))
        };
        let kernel = &record.config.kernel_path;
        let now = sha256_file(Path::new(kernel)).map_err(|e| refuse(e.message))?;
        if now != meta.kernel_sha256 {
            return Err(refuse(format!(
                "the kernel changed since the snapshot ({kernel} is sha256:{}, the snapshot was made with sha256:{})",
                &now[..12],
                &meta.kernel_sha256[..12.min(meta.kernel_sha256.len())]
            )));
        }
        if record.config.memory_mib != meta.config.memory_mib {
            return Err(refuse(format!(
                "the snapshot has {} MiB of memory, the workspace {} MiB",
                meta.config.memory_mib, record.config.memory_mib
            )));
        }
        if record.config.cpu_count != meta.config.cpu_count {
            return Err(refuse(format!(
                "the snapshot has {} vCPUs, the workspace {}",
                meta.config.cpu_count, record.config.cpu_count
            )));
        }
        let disk = dir.join(DISK);
        if !disk.is_file() {
            return Err(refuse(format!("{} is missing", disk.display())));
        }
        // A fork's prepare copied the snapshot's disk already; a restore
        // into the snapshot's own workspace puts it back now.
        if from.runtime_id == record.name {
            let paths = Self::paths(store, &record.name)?;
            vmkit_rootfs::clone_disk(&disk, &paths.disk)
                .map_err(|e| internal(format!("copying the snapshot's disk: {e}")))?;
        }
        Ok((!meta.info.disk_only).then_some(dir))
    }
}

/// Lists the snapshots under `dir`, oldest first; staging folders and
/// unreadable entries are left out.
fn list(dir: &Path) -> Result<Vec<SnapshotInfo>, ProtocolError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(internal(format!("reading {}: {e}", dir.display()))),
    };
    let mut found: Vec<SnapshotInfo> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let meta = read_meta_file(&e.path()).ok()?;
            let mut info = meta.info;
            info.size_bytes = disk_usage(&e.path());
            Some(info)
        })
        .collect();
    found.sort_by_key(|s| s.created_at);
    Ok(found)
}

fn snapshots_dir(store: &StateStore, name: &str) -> Result<PathBuf, ProtocolError> {
    Ok(store
        .workspace_dir(name)
        .map_err(state_err)?
        .join(SNAPSHOTS))
}

fn read_meta(
    store: &StateStore,
    from: &SnapshotRef,
) -> Result<(SnapshotMeta, PathBuf), ProtocolError> {
    let dir = snapshots_dir(store, &from.runtime_id)?.join(&from.tag);
    if !dir.join(META).is_file() {
        return Err(not_found(&from.runtime_id, &from.tag));
    }
    let meta = read_meta_file(&dir)?;
    Ok((meta, dir))
}

fn read_meta_file(dir: &Path) -> Result<SnapshotMeta, ProtocolError> {
    use std::io::Read;
    let path = dir.join(META);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_META).read_to_end(&mut bytes))
        .map_err(|e| internal(format!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        internal(format!(
            "{} is not a snapshot description: {e}",
            path.display()
        ))
    })
}

fn not_found(name: &str, tag: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NotFound,
        format!(
            "workspace {name:?} has no snapshot {tag:?} (see `microagent snapshot list {name}`)"
        ),
    )
}

fn sha256_file(path: &Path) -> Result<String, ProtocolError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| ProtocolError::invalid(format!("kernel {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| internal(format!("reading {}: {e}", path.display())))?;
    Ok(hex::encode(hasher.finalize()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ProtocolError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)
        .map_err(|e| internal(format!("writing {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| internal(format!("writing {}: {e}", path.display())))
}

/// Bytes the files of `dir` occupy (allocated blocks: sparse files count
/// only what they hold).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

//! Snapshots of a workspace: memory, device state and disk, consistent with
//! each other, kept under `<workspace>/snapshots/<tag>/`.
//!
//! A snapshot is made with the VM paused (the VMM drains and flushes its
//! disks when it stops the vCPUs): the machine writes its device state and
//! memory ([`crate::Machine::save_state`]), the disk is cloned (shared
//! blocks where the file system can, else a sparse copy), and
//! `snapshot.json` records what a restore must match: the kernel's
//! SHA-256, the memory size, the vCPUs and the files the snapshot holds. It
//! all happens in `.staging-<tag>`, renamed into place at the end, so a
//! failed snapshot (a full disk, say) leaves nothing listed and the
//! workspace runs on.
//!
//! A disk-only snapshot of a running workspace is made with the guest's
//! filesystems frozen instead (the guest init's FIFREEZE over the exec
//! channel): flushed and clean, so the copy holds everything the guest
//! wrote, page cache and journal included, and boots without recovery. A
//! paused guest is resumed for the freeze and paused again; a guest that
//! cannot freeze fails the snapshot rather than leave a torn copy; a
//! stopped workspace's disk is copied as it is.
//!
//! A restore (`start --from-snapshot`) or a fork (a new workspace prepared
//! from another's snapshot, then started from it) gets its own copy of the
//! disk and memory; the guest init notices the new host relay, sets its
//! clock, rereads its hostname and reports ready again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmkit_channel::host::ExecClient;
use vmkit_protocol::{
    ErrorCode, MachineConfig, ProtocolError, Request, SnapshotAction, SnapshotInfo, SnapshotRef,
    SnapshotRequest, State,
};
use vmkit_state::StateStore;

use crate::lifecycle::Lifecycle;
use crate::workspace::{guest_err, state_err, Workspace};

/// The snapshots folder in a workspace.
const SNAPSHOTS: &str = "snapshots";
/// The description of one snapshot.
const META: &str = "snapshot.json";
/// The snapshot's copy of the root disk.
const DISK: &str = "rootfs.ext4";
/// Largest `snapshot.json` read back.
const MAX_META: u64 = 1 << 20;
/// The longest the guest keeps its filesystems frozen for a disk copy
/// (it thaws by itself then, and the snapshot fails): room for a sparse
/// copy of a large disk where the host cannot share blocks.
const FREEZE_HOLD: Duration = Duration::from_secs(60);
/// How long the guest may take to freeze (flushing its page cache) or
/// to thaw.
const FREEZE_ANSWER: Duration = Duration::from_secs(30);

/// What `snapshot.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotMeta {
    info: SnapshotInfo,
    /// SHA-256 of the kernel the VM was booted with.
    kernel_sha256: String,
    /// The workspace's machine at the time (kernel, memory, vCPUs, disks).
    config: MachineConfig,
    /// The files the snapshot holds besides this one (a restore needs
    /// every one of them).
    #[serde(default)]
    files: Vec<String>,
}

impl Workspace<'_> {
    /// The `snapshot` command on this workspace: what it made, listed or
    /// (for delete) nothing.
    pub(crate) fn snapshot(
        &mut self,
        spec: &SnapshotRequest,
    ) -> Result<Vec<SnapshotInfo>, ProtocolError> {
        let name = self.record.name.clone();
        let dir = self.paths().dir.join(SNAPSHOTS);
        match (spec.action, spec.tag.as_deref()) {
            (SnapshotAction::List, tag) => Ok(list(&dir)?
                .into_iter()
                .filter(|s| tag.is_none_or(|t| t == s.tag))
                .collect()),
            (SnapshotAction::Create, Some(tag)) => {
                Ok(vec![self.create_snapshot(&dir, tag, spec.disk_only)?])
            }
            (SnapshotAction::Delete, Some(tag)) => {
                let one = dir.join(tag);
                if !one.join(META).is_file() {
                    return Err(not_found(&name, tag));
                }
                std::fs::remove_dir_all(&one)
                    .map_err(|e| internal(format!("removing snapshot {}: {e}", one.display())))?;
                Ok(Vec::new())
            }
            (_, None) => Err(ProtocolError::invalid("snapshot.tag is required")),
        }
    }

    fn create_snapshot(
        &self,
        dir: &Path,
        tag: &str,
        disk_only: bool,
    ) -> Result<SnapshotInfo, ProtocolError> {
        let name = &self.record.name;
        let state = self.record.state;
        let running = match state {
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
        let final_dir = dir.join(tag);
        if final_dir.exists() {
            return Err(ProtocolError::new(
                ErrorCode::AlreadyExists,
                format!("workspace {name:?} already has a snapshot {tag:?}; delete it first"),
            ));
        }
        let config = &self.record.config;
        let kernel_sha256 = sha256_file(Path::new(&config.kernel_path))?;
        let staging = dir.join(format!(".staging-{tag}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| internal(format!("creating {}: {e}", staging.display())))?;
        let machine = self.locked.lifecycle.machine();
        let paths = self.paths();
        let made = if disk_only && state.has_vm() {
            // A disk checkpoint of a live guest: its filesystems frozen
            // while the disk is copied, so the copy is clean.
            self.clone_frozen(&staging.join(DISK), !running)
        } else {
            // Memory and disk with the vCPUs stopped (the VMM drains and
            // flushes its disks when it stops them), or a stopped disk.
            let paused = if running {
                machine.set_paused(paths, true)
            } else {
                Ok(())
            };
            let copied = paused.and_then(|()| {
                if !disk_only {
                    machine.save_state(config, paths, &staging)?;
                }
                clone_disk(&paths.disk, &staging.join(DISK))
            });
            // The workspace runs on whatever happened to the snapshot.
            let resumed = if running {
                machine.set_paused(paths, false)
            } else {
                Ok(())
            };
            then_too(copied, resumed, name).map(|()| false)
        };
        let made = made.and_then(|frozen| {
            let meta = SnapshotMeta {
                info: SnapshotInfo {
                    runtime_id: name.clone(),
                    tag: tag.to_owned(),
                    created_at: Utc::now(),
                    disk_only: disk_only || !state.has_vm(),
                    frozen,
                    memory_mib: config.memory_mib,
                    size_bytes: 0,
                },
                kernel_sha256,
                config: config.clone(),
                files: file_names(&staging)?,
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
        });
        match made {
            Ok(mut info) => {
                info.size_bytes = disk_usage(&final_dir);
                Ok(info)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// Copies the disk of the guest running (or, with `paused`, paused) in
    /// this workspace to `into` with the guest's filesystems frozen: flushed,
    /// clean, and unchanging while copied. A paused guest cannot freeze, so
    /// it runs for that moment and is paused again. The guest thaws on
    /// every path out of here (a failed copy, a full disk); a guest that
    /// cannot freeze (an older init, a broken channel) fails the snapshot
    /// rather than leave an inconsistent copy. Returns true (frozen).
    fn clone_frozen(&self, into: &Path, paused: bool) -> Result<bool, ProtocolError> {
        let name = &self.record.name;
        let machine = self.locked.lifecycle.machine();
        let paths = self.paths();
        if paused {
            machine.set_paused(paths, false)?;
        }
        let client = ExecClient::new(&paths.vsock, self.exec_port());
        let copied = match client.freeze(FREEZE_HOLD, FREEZE_ANSWER) {
            Err(e) => Err(guest_err(format!(
                "cannot freeze the filesystems of {name:?} for a consistent disk snapshot: {e} \
                 (nothing was copied; a guest init older than this microagent cannot freeze: \
                 stop the workspace and snapshot it stopped)"
            ))),
            Ok(frozen) => {
                let copied = clone_disk(&paths.disk, into);
                let thawed = frozen.thaw(FREEZE_ANSWER).map_err(|e| {
                    guest_err(format!(
                        "the freeze of {name:?} did not hold until the disk was copied: {e}"
                    ))
                });
                copied.and(thawed)
            }
        };
        // Paused again whatever happened, as it was asked to be.
        let repaused = if paused {
            machine.set_paused(paths, true)
        } else {
            Ok(())
        };
        then_too(copied, repaused, name).map(|()| true)
    }

    /// For a `start` with `fromSnapshot`: checks the snapshot fits this
    /// workspace's machine and is whole, gives the workspace a copy of the
    /// snapshot's disk, and returns the folder to restore memory from
    /// (`None` for a disk-only snapshot: that start is a fresh boot).
    /// Nothing is changed when it refuses.
    pub(crate) fn restore_source(
        &self,
        from: &SnapshotRef,
    ) -> Result<Option<PathBuf>, ProtocolError> {
        let (meta, dir) = read_meta(&self.locked.store, from)?;
        let config = &self.record.config;
        let refuse = |why: String| {
            ProtocolError::invalid(format!(
                "cannot restore snapshot {}:{} into {:?}: {why}; nothing was started",
                from.runtime_id, from.tag, self.record.name
            ))
        };
        // A disk-only snapshot is a fresh boot from its disk: any kernel
        // and machine will do. Memory must come back to the same ones.
        if !meta.info.disk_only {
            fits(config, &meta).map_err(refuse)?;
        }
        for f in meta.files.iter().map(String::as_str).chain([DISK]) {
            // Names from a file on disk: only plain names count.
            let plain = !f.is_empty() && !f.contains('/') && f != "." && f != "..";
            if !plain || !dir.join(f).is_file() {
                return Err(refuse(format!("{} is missing", dir.join(f).display())));
            }
        }
        // A fork's prepare copied the snapshot's disk already; a restore
        // into the snapshot's own workspace puts it back now.
        if from.runtime_id == self.record.name {
            vmkit_disk_clone::clone_disk(&dir.join(DISK), &self.paths().disk)
                .map_err(|e| internal(format!("copying the snapshot's disk: {e}")))?;
        }
        Ok((!meta.info.disk_only).then_some(dir))
    }
}

impl Lifecycle {
    /// For a `prepare` with `fromSnapshot` (a fork): the request's config
    /// becomes the snapshot's machine, its root disk the snapshot's disk
    /// (which `prepare` then copies), keeping the new state folder. The
    /// fork is another workspace: its own hostname (from its name), and no
    /// published ports (the source holds those host ports).
    pub(crate) fn fork_request(&self, request: &Request) -> Result<Request, ProtocolError> {
        let Some(from) = &request.from_snapshot else {
            return Ok(request.clone());
        };
        let state_dir = request
            .state_dir()
            .ok_or_else(|| ProtocolError::invalid("stateDir is required"))?;
        let store = StateStore::open(Path::new(state_dir)).map_err(state_err)?;
        let (meta, dir) = read_meta(&store, from)?;
        let mut config = meta.config;
        config.rootfs_path = dir.join(DISK).to_string_lossy().into_owned();
        if let Some(given) = &request.config {
            config.state_dir = given.state_dir.clone();
        }
        config.hostname = None;
        config.publish.clear();
        let mut request = request.clone();
        request.config = Some(config);
        Ok(request)
    }
}

/// Whether memory saved from the machine in `meta` can continue in
/// `config`: the same kernel (its SHA-256), memory size and vCPUs.
fn fits(config: &MachineConfig, meta: &SnapshotMeta) -> Result<(), String> {
    let kernel = &config.kernel_path;
    let now = sha256_file(Path::new(kernel)).map_err(|e| e.message)?;
    if now != meta.kernel_sha256 {
        return Err(format!(
            "the kernel changed since the snapshot ({kernel} is sha256:{}, the snapshot was made with sha256:{})",
            &now[..12],
            meta.kernel_sha256.get(..12).unwrap_or(&meta.kernel_sha256)
        ));
    }
    if config.memory_mib != meta.config.memory_mib {
        return Err(format!(
            "the snapshot has {} MiB of memory, the workspace {} MiB",
            meta.config.memory_mib, config.memory_mib
        ));
    }
    if config.cpu_count != meta.config.cpu_count {
        return Err(format!(
            "the snapshot has {} vCPUs, the workspace {}",
            meta.config.cpu_count, config.cpu_count
        ));
    }
    Ok(())
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

fn read_meta(
    store: &StateStore,
    from: &SnapshotRef,
) -> Result<(SnapshotMeta, PathBuf), ProtocolError> {
    let dir = store
        .workspace_dir(&from.runtime_id)
        .map_err(state_err)?
        .join(SNAPSHOTS)
        .join(&from.tag);
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

/// The snapshot's outcome, then the step that puts the workspace back as
/// it was (resume, re-pause): its error counts when the snapshot worked,
/// and is logged when the snapshot's own error is reported instead.
fn then_too(
    made: Result<(), ProtocolError>,
    restored: Result<(), ProtocolError>,
    name: &str,
) -> Result<(), ProtocolError> {
    match (made, restored) {
        (Err(e), Err(r)) => {
            tracing::warn!("{name:?} after a failed snapshot: {}", r.message);
            Err(e)
        }
        (made, restored) => made.and(restored),
    }
}

/// Copies the workspace's disk into a snapshot.
fn clone_disk(disk: &Path, into: &Path) -> Result<(), ProtocolError> {
    vmkit_disk_clone::clone_disk(disk, into)
        .map(|_| ())
        .map_err(|e| internal(format!("copying the disk into the snapshot: {e}")))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ProtocolError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)
        .map_err(|e| internal(format!("writing {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| internal(format!("writing {}: {e}", path.display())))
}

/// The names of the files in `dir`, sorted.
fn file_names(dir: &Path) -> Result<Vec<String>, ProtocolError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| internal(format!("reading {}: {e}", dir.display())))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
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

//! Guest RAM files on tmpfs, and the sweep that frees the ones nothing owns.
//!
//! A VMM that keeps guest RAM in a file (QEMU with the serial transport)
//! gets `/dev/shm/microagent-<uid>/<digest>.ram`, outside the workspace
//! folder (see [`memory_file`]). Beside it, `<digest>.owner` names the
//! workspace folder: written before the VMM starts, removed after the RAM
//! file. A state folder removed by hand leaves the RAM behind, up to the
//! guest's memory size, for as long as the host runs; `gc` then finds it
//! by its owner record ([`remove_orphaned_memory`]).
//!
//! A RAM file is removed only when no live process has it mapped or open
//! (read from `/proc/*/maps` and `/proc/*/fd`, compared by device and
//! inode): a VM whose state folder was deleted under it keeps running, and
//! its RAM stays. `/proc` and not a lock held by the launcher, because a
//! detached VMM outlives the command that launched it, and the VMM itself
//! takes no lock on its memory file.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use vmkit_protocol::{ErrorCode, ProtocolError};

use crate::WorkspacePaths;

const SHM: &str = "/dev/shm";

/// An owner-less RAM file (left by a version that wrote no owner record,
/// or whose record was removed by hand) must be at least this old: a
/// launcher creates the file a moment before the VMM maps it.
const OWNERLESS_MIN_AGE: Duration = Duration::from_secs(10 * 60);

/// An owner record holds one path; anything longer is not one of ours.
const MAX_OWNER_RECORD: u64 = 4096;

/// A RAM file `gc` removed (as `gc --json` prints it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrphanedMemory {
    /// The RAM file.
    pub path: PathBuf,
    /// The workspace folder its owner record named (gone), if it had one.
    pub owner: Option<PathBuf>,
    /// What it held on tmpfs (allocated bytes, not its apparent size).
    pub bytes: u64,
}

impl std::fmt::Display for OrphanedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: removed orphaned guest RAM (", self.path.display())?;
        match &self.owner {
            Some(folder) => write!(f, "{} is gone", folder.display())?,
            None => f.write_str("no owner record")?,
        }
        write!(f, "), {} MiB freed", self.bytes >> 20)
    }
}

/// Where a VM's RAM file lives: in a private folder on tmpfs
/// (`/dev/shm/microagent-<uid>/`), named by a digest of the workspace
/// folder, so every later command finds it. Not in the workspace folder:
/// guest RAM on a disk-backed file system is written back to the disk
/// while the VM runs, which made a short run three tenths of a second
/// slower here and loads the disk for every VM; tmpfs pages are the same
/// shared memory a memfd would give. Hosts without `/dev/shm` keep it in
/// the workspace folder.
pub(crate) fn memory_file(dir: &Path) -> PathBuf {
    let shm = Path::new(SHM);
    if !shm.is_dir() {
        return dir.join("memory.ram");
    }
    memory_dir(shm).join(format!("{}.ram", digest_of(dir)))
}

fn digest_of(dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    hex::encode(digest)[..32].to_owned()
}

fn memory_dir(shm: &Path) -> PathBuf {
    shm.join(format!("microagent-{}", nix::unistd::getuid()))
}

/// The owner record beside a RAM file on tmpfs; `None` for one kept in
/// its workspace folder (it goes with the folder).
fn owner_record(paths: &WorkspacePaths) -> Option<PathBuf> {
    (paths.memory.parent() != Some(paths.dir.as_path()))
        .then(|| paths.memory.with_extension("owner"))
}

/// Makes the folder of [`WorkspacePaths::memory`] if it is on tmpfs:
/// mode 0700 and ours, since guest RAM holds whatever the guest knows. A
/// folder of that name that another user made, or a symlink, is refused.
/// Then writes the RAM file's owner record (the workspace folder), so `gc`
/// can tell the RAM of a deleted state folder: call it before the VMM
/// starts.
pub fn ensure_memory_dir(paths: &WorkspacePaths) -> Result<(), ProtocolError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let (Some(dir), Some(owner)) = (paths.memory.parent(), owner_record(paths)) else {
        return Ok(());
    };
    let refuse = |why: String| {
        ProtocolError::new(
            ErrorCode::Internal,
            format!("the guest RAM folder {}: {why}", dir.display()),
        )
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(e.to_string())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(refuse(
            "it is not a folder of this user's; remove it".into(),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| refuse(e.to_string()))?;
    }
    std::fs::write(&owner, paths.dir.as_os_str().as_encoded_bytes())
        .map_err(|e| refuse(format!("writing {}: {e}", owner.display())))
}

/// Removes a workspace's RAM file, then its owner record (in that order:
/// a RAM file is never left without the record that names its owner).
pub(crate) fn remove_memory_file(paths: &WorkspacePaths) {
    let _ = std::fs::remove_file(&paths.memory);
    if let Some(owner) = owner_record(paths) {
        let _ = std::fs::remove_file(owner);
    }
}

/// Removes this user's guest RAM files whose workspace folder is gone (or
/// that have no owner record and are older than ten minutes), unless a
/// live process has them mapped or open; returns what it removed. Owner
/// records whose folder is gone and that have no RAM file go too.
pub fn remove_orphaned_memory() -> Result<Vec<OrphanedMemory>, ProtocolError> {
    let dir = memory_dir(Path::new(SHM));
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() && meta.uid() == nix::unistd::getuid().as_raw() => {}
        // No RAM folder (or not ours: ensure_memory_dir refuses to use it).
        _ => return Ok(Vec::new()),
    }
    sweep(&dir, OWNERLESS_MIN_AGE)
}

/// A RAM file found in the folder, before deciding.
struct Candidate {
    path: PathBuf,
    owner_record: PathBuf,
    owner: Option<PathBuf>,
    meta: std::fs::Metadata,
}

fn sweep(dir: &Path, ownerless_min_age: Duration) -> Result<Vec<OrphanedMemory>, ProtocolError> {
    let io_err = |e: std::io::Error| {
        ProtocolError::new(
            ErrorCode::Internal,
            format!("reading the guest RAM folder {}: {e}", dir.display()),
        )
    };
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let owner_record = path.with_extension("owner");
        let owner = read_owner(&owner_record, stem);
        match path.extension().and_then(|e| e.to_str()) {
            Some("ram") => {}
            Some("owner") => {
                // A record whose RAM file is gone: the VM stopped between
                // the two removals, or its launch is under way (then its
                // folder exists).
                if owner.as_deref().is_some_and(folder_is_gone)
                    && !path.with_extension("ram").exists()
                {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            _ => continue,
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let orphaned = match &owner {
            Some(folder) => folder_is_gone(folder),
            None => meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age >= ownerless_min_age),
        };
        if orphaned {
            candidates.push(Candidate {
                path,
                owner_record,
                owner,
                meta,
            });
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let in_use = files_in_use().map_err(|e| {
        ProtocolError::new(
            ErrorCode::Internal,
            format!(
                "reading /proc to see which guest RAM files are in use (nothing was removed): {e}"
            ),
        )
    })?;
    let mut removed = Vec::new();
    for c in candidates {
        let id = (c.meta.dev(), c.meta.ino());
        if in_use.contains(&id) {
            let why = match &c.owner {
                Some(folder) => format!("its workspace folder {} is gone", folder.display()),
                None => "it has no owner record".to_owned(),
            };
            tracing::warn!(
                "{}: {why}, but a live process still maps or holds it (a VM running without its state folder?); left in place",
                c.path.display()
            );
            continue;
        }
        // The same file as the one checked, not one a new launch made.
        let same = std::fs::symlink_metadata(&c.path).is_ok_and(|m| (m.dev(), m.ino()) == id);
        if same && std::fs::remove_file(&c.path).is_ok() {
            let _ = std::fs::remove_file(&c.owner_record);
            removed.push(OrphanedMemory {
                path: c.path,
                owner: c.owner,
                bytes: c.meta.blocks() * 512,
            });
        }
    }
    Ok(removed)
}

/// The workspace folder an owner record names, if it is one: a bounded
/// read, and the folder's digest must be the file's name.
fn read_owner(record: &Path, stem: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut bytes = Vec::new();
    std::fs::File::open(record)
        .ok()?
        .take(MAX_OWNER_RECORD + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_OWNER_RECORD {
        return None;
    }
    let folder = PathBuf::from(std::ffi::OsString::from_vec(bytes));
    (folder.is_absolute() && digest_of(&folder) == stem).then_some(folder)
}

/// Gone for sure: a folder we cannot look at is kept.
fn folder_is_gone(folder: &Path) -> bool {
    matches!(std::fs::symlink_metadata(folder), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// The (device, inode) of every file a live process maps or holds open,
/// of the processes we may look at (a file in our 0700 folder is only
/// another user's to open if that user is root).
fn files_in_use() -> std::io::Result<std::collections::HashSet<(u64, u64)>> {
    let mut in_use = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let proc_dir = entry.path();
        if let Ok(maps) = std::fs::read_to_string(proc_dir.join("maps")) {
            in_use.extend(maps.lines().filter_map(mapped_file));
        }
        if let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) {
            for fd in fds.flatten() {
                // Follows the link to the open file itself.
                if let Ok(meta) = std::fs::metadata(fd.path()) {
                    in_use.insert((meta.dev(), meta.ino()));
                }
            }
        }
    }
    Ok(in_use)
}

/// The (device, inode) of one `/proc/PID/maps` line's file, if it maps
/// one: `address perms offset major:minor inode [path]`, numbers in hex
/// but the inode.
fn mapped_file(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_ascii_whitespace().skip(3);
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode: u64 = fields.next()?.parse().ok()?;
    if inode == 0 {
        return None;
    }
    let major = u64::from_str_radix(major, 16).ok()?;
    let minor = u64::from_str_radix(minor, 16).ok()?;
    Some((libc::makedev(major as u32, minor as u32), inode))
}

#[cfg(test)]
#[path = "guest_memory_tests.rs"]
mod tests;

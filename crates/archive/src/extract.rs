//! Applying a hostile tar stream to a folder.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;

use crate::paths::{resolve, split_name, PathError};
use crate::ArchiveError;

/// Who owns what an extraction creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owner {
    /// Whoever runs the extraction (setuid/setgid bits are dropped).
    #[default]
    Extractor,
    /// The uid/gid recorded in the archive (needs root).
    Archive,
    /// This uid:gid for everything (needs root).
    Fixed(u32, u32),
}

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Ownership of created files.
    pub owner: Owner,
    /// At most this many entries.
    pub max_entries: u64,
    /// Longest entry name or link target, in bytes.
    pub max_path_bytes: usize,
    /// Most symlinks followed while resolving one name.
    pub max_symlink_hops: u32,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            owner: Owner::Extractor,
            max_entries: 10_000_000,
            max_path_bytes: 4096,
            max_symlink_hops: 40,
        }
    }
}

/// What an extraction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Entries created.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Entries skipped (device nodes, FIFOs, sockets, unknown kinds): `cp`
    /// moves files, not devices.
    pub skipped: u64,
}

/// Extracts the tar stream `reader` into the existing folder `root`.
///
/// Every name is checked ([`crate::paths`]): absolute names, `..`, names
/// that would resolve outside `root` through a symlink (the archive's own
/// or one already in `root`), and hard links to outside are refused, and
/// nothing is ever written through a symlink: whatever stands at an
/// entry's place is replaced. On error, what was extracted so far stays;
/// callers extract into a fresh folder and rename it into place.
pub fn extract(
    reader: impl Read,
    root: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractStats, ArchiveError> {
    let mut x = Extractor {
        root,
        opts,
        stats: ExtractStats::default(),
        dir_times: Vec::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    let mut seen = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        seen += 1;
        if seen > opts.max_entries {
            return Err(ArchiveError::Limit {
                what: "entries",
                limit: opts.max_entries,
            });
        }
        x.entry(&mut entry)?;
    }
    // Directory times last: filling a directory changes its mtime. Deepest
    // first, so setting a parent's is not undone by a child's.
    x.dir_times
        .sort_by_key(|(p, _)| std::cmp::Reverse(p.iter().count()));
    for (dir, mtime) in std::mem::take(&mut x.dir_times) {
        let _ = set_mtime(&root.join(dir), mtime);
    }
    Ok(x.stats)
}

struct Extractor<'a> {
    root: &'a Path,
    opts: &'a ExtractOptions,
    stats: ExtractStats,
    dir_times: Vec<(PathBuf, i64)>,
}

impl Extractor<'_> {
    fn refuse(raw: &[u8], e: PathError) -> ArchiveError {
        match e {
            PathError::Refused(reason) => ArchiveError::Refused {
                entry: String::from_utf8_lossy(raw).into_owned(),
                reason,
            },
            PathError::Io { context, source } => ArchiveError::Io { context, source },
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let comps =
            split_name(&raw, self.opts.max_path_bytes).map_err(|e| Self::refuse(&raw, e))?;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself: it is the caller's folder; leave it be.
            return Ok(());
        };
        let header = entry.header();
        let bad = |e: io::Error| {
            ArchiveError::Malformed(format!("{:?}: {e}", String::from_utf8_lossy(&raw)))
        };
        let mode = header.mode().map_err(bad)? & 0o7777;
        let mtime = i64::try_from(header.mtime().map_err(bad)?).unwrap_or(0);
        let owner = match self.opts.owner {
            Owner::Extractor => None,
            Owner::Archive => Some((
                u32::try_from(header.uid().map_err(bad)?).unwrap_or(u32::MAX),
                u32::try_from(header.gid().map_err(bad)?).unwrap_or(u32::MAX),
            )),
            Owner::Fixed(u, g) => Some((u, g)),
        };
        let mode = if owner.is_some() { mode } else { mode & 0o1777 };
        if !matches!(
            kind,
            T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link
        ) {
            self.stats.skipped += 1;
            return Ok(());
        }
        let parent_rel = self.make_parent(&raw, parent)?;
        let rel = parent_rel.join(name);
        let path = self.root.join(&rel);
        let existing = fs::symlink_metadata(&path).ok();
        if let Some(m) = &existing {
            if !(m.is_dir() && kind.is_dir()) {
                let removed = if m.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(ArchiveError::io(format!("replacing {}", path.display())))?;
            }
        }
        match kind {
            T::Regular | T::Continuous => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(OFlag::O_NOFOLLOW.bits())
                    .open(&path)
                    .map_err(ArchiveError::io(format!("creating {}", path.display())))?;
                let size = entry.size();
                let n = io::copy(&mut entry.take(size), &mut file)
                    .map_err(ArchiveError::io(format!("writing {}", path.display())))?;
                if n != size {
                    return Err(ArchiveError::Malformed(format!(
                        "{:?} is truncated",
                        String::from_utf8_lossy(&raw)
                    )));
                }
                self.stats.bytes += n;
                drop(file);
                self.set_meta(&path, false, mode, owner, Some(mtime))?;
            }
            T::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&path)
                        .map_err(ArchiveError::io(format!("creating {}", path.display())))?;
                }
                self.set_meta(&path, false, mode, owner, None)?;
                self.dir_times.push((rel, mtime));
            }
            T::Symlink => {
                let target = entry.link_name_bytes().map(|l| l.into_owned());
                let target = target
                    .filter(|t| {
                        !t.is_empty() && !t.contains(&0) && t.len() <= self.opts.max_path_bytes
                    })
                    .ok_or_else(|| ArchiveError::Refused {
                        entry: String::from_utf8_lossy(&raw).into_owned(),
                        reason: "bad symlink target".into(),
                    })?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(
                    ArchiveError::io(format!("creating symlink {}", path.display())),
                )?;
                self.set_meta(&path, true, mode, owner, Some(mtime))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let tcomps = split_name(&target, self.opts.max_path_bytes)
                    .map_err(|e| Self::refuse(&raw, e))?;
                let t = resolve(self.root, &tcomps, false, self.opts.max_symlink_hops)
                    .map_err(|e| Self::refuse(&raw, e))?;
                let tpath = self.root.join(&t.rel);
                let ok = t.exists()
                    && !tcomps.is_empty()
                    && fs::symlink_metadata(&tpath).is_ok_and(|m| !m.is_dir());
                if !ok {
                    return Err(ArchiveError::Refused {
                        entry: String::from_utf8_lossy(&raw).into_owned(),
                        reason: "hard link to something that is not a file in the archive".into(),
                    });
                }
                fs::hard_link(&tpath, &path).map_err(ArchiveError::io(format!(
                    "linking {} to {}",
                    path.display(),
                    tpath.display()
                )))?;
            }
            _ => unreachable!("filtered above"),
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// Resolves the parent inside the root and creates what is missing of it.
    fn make_parent(
        &mut self,
        raw: &[u8],
        parent: &[std::ffi::OsString],
    ) -> Result<PathBuf, ArchiveError> {
        let r = resolve(self.root, parent, true, self.opts.max_symlink_hops)
            .map_err(|e| Self::refuse(raw, e))?;
        let mut cur = self.root.to_path_buf();
        for (i, comp) in r.rel.iter().enumerate() {
            cur.push(comp);
            if i >= r.existing {
                fs::create_dir(&cur)
                    .map_err(ArchiveError::io(format!("creating {}", cur.display())))?;
            } else if !fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
                return Err(ArchiveError::Refused {
                    entry: String::from_utf8_lossy(raw).into_owned(),
                    reason: format!("a parent ({}) is not a directory", cur.display()),
                });
            }
        }
        Ok(r.rel)
    }

    fn set_meta(
        &self,
        path: &Path,
        is_link: bool,
        mode: u32,
        owner: Option<(u32, u32)>,
        mtime: Option<i64>,
    ) -> Result<(), ArchiveError> {
        if let Some((uid, gid)) = owner {
            nix::unistd::fchownat(
                AT_FDCWD,
                path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ArchiveError::Io {
                context: format!("chown {}", path.display()),
                source: e.into(),
            })?;
        }
        if !is_link {
            // After chown, which clears setuid bits.
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(ArchiveError::io(format!("chmod {}", path.display())))?;
        }
        if let Some(t) = mtime {
            set_mtime(path, t)?;
        }
        Ok(())
    }
}

/// Sets `path`'s access and modification times to `mtime` (seconds),
/// without following a symlink there.
pub fn set_mtime(path: &Path, mtime: i64) -> Result<(), ArchiveError> {
    let ts = TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(AT_FDCWD, path, &ts, &ts, UtimensatFlags::NoFollowSymlink).map_err(
        |e| ArchiveError::Io {
            context: format!("setting mtime of {}", path.display()),
            source: e.into(),
        },
    )
}

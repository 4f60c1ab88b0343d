//! Applying image layers into a staging tree, safely.
//!
//! Layers are hostile input. Every entry name is normalised and refused if
//! absolute or if it contains `..`; parent directories are resolved one
//! component at a time, following symlinks *inside* the staging root only
//! (an absolute link target means the image's root, as it would in the
//! guest), and a relative target that climbs above the root is refused. The
//! last component is never followed: whatever sits there is replaced, so no
//! write goes through a symlink. Sizes, entry counts, path lengths, xattr
//! sizes and symlink hops are bounded.
//!
//! When the builder is not root it cannot chown, create device nodes or set
//! privileged xattrs; those are recorded as [`Fixup`]s and written into the
//! ext4 afterwards with `debugfs` (see `ext4.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag};

use crate::error::{IoContext, RootfsError};

mod fsops;
mod inject;

pub(crate) use fsops::debugfs_path;
use fsops::{copy_file, lsetxattr, set_mtime, xattr_bytes};

/// Bounds on what a single image may contain. The defaults are far above
/// any real image and far below what could exhaust a host.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Layers per image.
    pub max_layers: usize,
    /// Archive entries across all layers.
    pub max_entries: u64,
    /// Uncompressed file bytes across all layers.
    pub max_total_bytes: u64,
    /// Size of one blob (compressed layer) as declared by its descriptor.
    pub max_blob_bytes: u64,
    /// Length of an entry name or link target.
    pub max_path_bytes: usize,
    /// Size of one xattr value.
    pub max_xattr_bytes: usize,
    /// Symlinks followed while resolving one name.
    pub max_symlink_hops: u32,
    /// Metadata read before one entry: its headers and GNU long-name,
    /// long-link, PAX and sparse records (bounded while they are read).
    pub max_entry_metadata_bytes: u64,
    /// Metadata kept about one layer's entries while it is applied.
    pub max_layer_metadata_bytes: u64,
    /// Metadata kept for the whole image until the disk is written
    /// (ownership, modes and xattrs to fix up, directory times).
    pub max_image_metadata_bytes: u64,
    /// How long one registry pull may take in all; default 30 minutes, or
    /// `MICROAGENT_PULL_TIMEOUT` seconds.
    pub pull_deadline: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layers: 256,
            max_entries: 4_000_000,
            max_total_bytes: 64 << 30,
            max_blob_bytes: 32 << 30,
            max_path_bytes: 4096,
            max_xattr_bytes: 64 << 10,
            max_symlink_hops: 40,
            max_entry_metadata_bytes: 1 << 20,
            max_layer_metadata_bytes: 512 << 20,
            max_image_metadata_bytes: 1 << 30,
            pull_deadline: std::time::Duration::from_secs(
                std::env::var("MICROAGENT_PULL_TIMEOUT")
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .filter(|&s: &u64| s > 0)
                    .unwrap_or(30 * 60),
            ),
        }
    }
}

/// Ownership and metadata that could not be set on the staging tree and must
/// be written into the ext4 directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fixup {
    pub uid: u64,
    pub gid: u64,
    /// Full `st_mode`, file type bits included.
    pub mode: u32,
    /// `(type 'c' or 'b', major, minor)` for device nodes not creatable here.
    pub device: Option<(char, u32, u32)>,
    /// Modification time, for inodes created by debugfs (device nodes).
    pub mtime: i64,
    /// Extended attributes the staging filesystem refused.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// What an entry's metadata says.
struct Meta {
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A staging tree being filled layer by layer.
pub(crate) struct Staging {
    root: PathBuf,
    privileged: bool,
    limits: Limits,
    layer: usize,
    entries: u64,
    bytes: u64,
    /// Rough size of the content: file bytes rounded to blocks plus a block
    /// per directory; used to size the disk.
    pub content_bytes: u64,
    /// Inodes created (an over-estimate: removals are not subtracted).
    pub inodes: u64,
    /// Staging in memory: the content bytes allowed before giving up with
    /// ENOSPC (the builder then restages on disk).
    pub memory_budget: Option<u64>,
    /// Keyed by path relative to the root.
    pub fixups: BTreeMap<PathBuf, Fixup>,
    dir_times: BTreeMap<PathBuf, i64>,
    this_layer: HashSet<PathBuf>,
    /// Archive parent path -> resolved relative path; valid until a symlink
    /// is created or anything is removed.
    parent_cache: HashMap<Vec<u8>, PathBuf>,
    /// Estimated bytes held in `this_layer` and `parent_cache`.
    layer_metadata: u64,
    /// Estimated bytes held in `fixups` and `dir_times` (never decreased:
    /// an over-estimate, so an image cannot grow them by churn either).
    image_metadata: u64,
}

/// What one kept path costs beyond its bytes (allocation, tree node).
const RECORD_OVERHEAD: u64 = 128;

const BLOCK: u64 = 4096;

impl Staging {
    pub(crate) fn new(root: PathBuf, privileged: bool, limits: Limits) -> Staging {
        Staging {
            root,
            privileged,
            limits,
            layer: 0,
            entries: 0,
            bytes: 0,
            content_bytes: 0,
            inodes: 1,
            memory_budget: None,
            fixups: BTreeMap::new(),
            dir_times: BTreeMap::new(),
            this_layer: HashSet::new(),
            parent_cache: HashMap::new(),
            layer_metadata: 0,
            image_metadata: 0,
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Applies one uncompressed layer tarball.
    pub(crate) fn apply_layer(
        &mut self,
        reader: impl Read,
        layer: usize,
    ) -> Result<(), RootfsError> {
        if layer >= self.limits.max_layers {
            return Err(RootfsError::limit("layer count", self.limits.max_layers));
        }
        self.layer = layer;
        self.this_layer.clear();
        self.parent_cache.clear();
        self.layer_metadata = 0;
        let (reader, meter) = crate::tar_meter::MeteredReader::new(reader);
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive
            .entries()
            .map_err(|e| RootfsError::malformed(format!("layer {layer}"), e))?;
        loop {
            meter.start(self.limits.max_entry_metadata_bytes);
            let next = entries.next();
            meter.stop();
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(|e| {
                if meter.tripped() {
                    RootfsError::limit(
                        format!("metadata of one entry of layer {layer} (long name, long link, PAX or sparse records)"),
                        format!("{} bytes", self.limits.max_entry_metadata_bytes),
                    )
                } else {
                    RootfsError::malformed(format!("layer {layer} archive"), e)
                }
            })?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(RootfsError::limit(
                    "number of layer entries",
                    self.limits.max_entries,
                ));
            }
            self.apply_entry(&mut entry)?;
            // Whatever data the entry has left is read here, unmetered, so
            // that the next metered window holds only metadata.
            io::copy(&mut entry, &mut io::sink())
                .map_err(|e| RootfsError::malformed(format!("layer {layer} archive"), e))?;
        }
        Ok(())
    }

    /// Counts a path kept in a per-layer table against the layer's budget.
    fn keep_for_layer(&mut self, bytes: usize) -> Result<(), RootfsError> {
        self.layer_metadata += bytes as u64 + RECORD_OVERHEAD;
        if self.layer_metadata > self.limits.max_layer_metadata_bytes {
            return Err(RootfsError::limit(
                format!("metadata kept for layer {}", self.layer),
                format!("{} bytes", self.limits.max_layer_metadata_bytes),
            ));
        }
        Ok(())
    }

    /// Counts metadata kept until the disk is written against the image's budget.
    fn keep_for_image(&mut self, bytes: usize) -> Result<(), RootfsError> {
        self.image_metadata += bytes as u64 + RECORD_OVERHEAD;
        if self.image_metadata > self.limits.max_image_metadata_bytes {
            return Err(RootfsError::limit(
                "metadata kept for the image (ownership, modes, xattrs, directory times)",
                format!("{} bytes", self.limits.max_image_metadata_bytes),
            ));
        }
        Ok(())
    }

    fn refuse(&self, entry: &[u8], reason: impl Into<String>) -> RootfsError {
        RootfsError::UnsafeEntry {
            layer: self.layer,
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    /// Splits an archive name into components with the checks every
    /// archive gets ([`vmkit_archive::paths::split_name`]). An empty result
    /// names the root.
    fn components(&self, raw: &[u8]) -> Result<Vec<OsString>, RootfsError> {
        // An over-long name is shown by its start only.
        let shown = if raw.len() > self.limits.max_path_bytes {
            &raw[..64.min(raw.len())]
        } else {
            raw
        };
        vmkit_archive::paths::split_name(raw, self.limits.max_path_bytes)
            .map_err(|e| self.path_error(shown, e))
    }

    /// Resolves `comps` inside the root ([`vmkit_archive::paths::resolve`]),
    /// following symlinks in every component except (unless `follow_last`)
    /// the last. Returns the relative path and how many of its leading
    /// components exist.
    fn resolve(
        &self,
        entry: &[u8],
        comps: &[OsString],
        follow_last: bool,
    ) -> Result<(PathBuf, usize), RootfsError> {
        let r = vmkit_archive::paths::resolve(
            &self.root,
            comps,
            follow_last,
            self.limits.max_symlink_hops,
        )
        .map_err(|e| self.path_error(entry, e))?;
        Ok((r.rel, r.existing))
    }

    fn path_error(&self, entry: &[u8], e: vmkit_archive::paths::PathError) -> RootfsError {
        match e {
            vmkit_archive::paths::PathError::Refused(reason) => self.refuse(entry, reason),
            vmkit_archive::paths::PathError::Io { context, source } => {
                RootfsError::io(context, source)
            }
        }
    }

    /// Resolves and creates the parent directory of `comps`; returns the
    /// entry's relative path.
    fn prepare_parent(&mut self, raw: &[u8], comps: &[OsString]) -> Result<PathBuf, RootfsError> {
        let (parent_comps, name) = comps.split_at(comps.len() - 1);
        let key = parent_comps.iter().fold(Vec::new(), |mut k, c| {
            k.extend_from_slice(c.as_bytes());
            k.push(b'/');
            k
        });
        if let Some(rel) = self.parent_cache.get(&key) {
            return Ok(rel.join(&name[0]));
        }
        let (parent_rel, existing) = self.resolve(raw, parent_comps, true)?;
        // Create missing parents as root-owned 0755 directories.
        let mut cur = PathBuf::new();
        for (i, comp) in parent_rel.iter().enumerate() {
            cur.push(comp);
            if i >= existing {
                self.create_root_dir(&cur, 0o755, 0)?;
            }
        }
        self.keep_for_layer(key.len() + parent_rel.as_os_str().len())?;
        self.parent_cache.insert(key, parent_rel.clone());
        Ok(parent_rel.join(&name[0]))
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), RootfsError> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let comps = self.components(&raw)?;
        let header = entry.header();
        let bad_header = |e: io::Error| RootfsError::UnsafeEntry {
            layer: self.layer,
            entry: String::from_utf8_lossy(&raw).into_owned(),
            reason: format!("bad header: {e}"),
        };
        let mut meta = Meta {
            uid: header.uid().map_err(bad_header)?,
            gid: header.gid().map_err(bad_header)?,
            mode: header.mode().map_err(bad_header)? & 0o7777,
            mtime: i64::try_from(header.mtime().map_err(bad_header)?).unwrap_or(0),
            xattrs: Vec::new(),
        };
        let device = if kind.is_character_special() || kind.is_block_special() {
            (
                header.device_major().map_err(bad_header)?,
                header.device_minor().map_err(bad_header)?,
            )
        } else {
            (None, None)
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| self.refuse(&raw, format!("bad pax header: {e}")))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| self.refuse(&raw, format!("bad pax header: {e}")))?;
                let key = ext.key_bytes();
                let num = || {
                    std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                };
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if ext.value_bytes().len() > self.limits.max_xattr_bytes {
                        return Err(self.refuse(&raw, "xattr value too large"));
                    }
                    meta.xattrs.push((
                        OsStr::from_bytes(name).to_os_string(),
                        ext.value_bytes().to_vec(),
                    ));
                } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                    // bsdtar's spelling: the value is base64, padded or not.
                    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
                    use base64::Engine as _;
                    let lenient = GeneralPurpose::new(
                        &base64::alphabet::STANDARD,
                        GeneralPurposeConfig::new()
                            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
                    );
                    let value = lenient
                        .decode(ext.value_bytes())
                        .map_err(|_| self.refuse(&raw, "bad LIBARCHIVE.xattr value"))?;
                    if value.len() > self.limits.max_xattr_bytes {
                        return Err(self.refuse(&raw, "xattr value too large"));
                    }
                    meta.xattrs
                        .push((OsStr::from_bytes(name).to_os_string(), value));
                } else if key == b"uid" {
                    meta.uid = num()
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or_else(|| self.refuse(&raw, "bad pax uid"))?;
                } else if key == b"gid" {
                    meta.gid = num()
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or_else(|| self.refuse(&raw, "bad pax gid"))?;
                } else if key == b"mtime" {
                    meta.mtime = num().unwrap_or(meta.mtime);
                }
            }
        }
        if meta.uid > u64::from(u32::MAX) || meta.gid > u64::from(u32::MAX) {
            return Err(self.refuse(&raw, "uid or gid above 2^32-1"));
        }
        if comps.is_empty() {
            // The root itself (`./`): only its metadata can change.
            if !kind.is_dir() {
                return Err(self.refuse(&raw, "names the root but is not a directory"));
            }
            let root_rel = PathBuf::new();
            self.keep_for_image(0)?;
            self.dir_times.insert(root_rel.clone(), meta.mtime);
            return self.set_meta(&root_rel, SFlag::S_IFDIR, None, meta);
        }
        let name = comps[comps.len() - 1].as_bytes();
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            return self.whiteout(&raw, &comps, hidden);
        }

        let rel = self.prepare_parent(&raw, &comps)?;
        let host = self.root.join(&rel);
        let existing = fs::symlink_metadata(&host).ok();
        if let Some(m) = &existing {
            if !(m.is_dir() && kind.is_dir()) {
                self.remove(&rel)?;
            }
        }
        self.keep_for_layer(rel.as_os_str().len())?;
        self.this_layer.insert(rel.clone());

        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let size = entry.size();
                self.bytes = self.bytes.saturating_add(size);
                if self.memory_budget.is_some_and(|b| self.bytes > b) {
                    return Err(RootfsError::io(
                        "staging in memory",
                        io::Error::from_raw_os_error(28),
                    ));
                }
                if self.bytes > self.limits.max_total_bytes {
                    return Err(RootfsError::limit(
                        "uncompressed image content",
                        format!("{} bytes", self.limits.max_total_bytes),
                    ));
                }
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&host)
                    .ctx(|| format!("creating {}", host.display()))?;
                copy_file(entry, file, size).ctx(|| format!("writing {}", host.display()))?;
                self.content_bytes += size.div_ceil(BLOCK) * BLOCK;
                self.inodes += 1;
                self.set_meta(&rel, SFlag::S_IFREG, None, meta)
            }
            T::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&host).ctx(|| format!("creating {}", host.display()))?;
                    self.inodes += 1;
                    self.content_bytes += BLOCK;
                }
                self.keep_for_image(rel.as_os_str().len())?;
                self.dir_times.insert(rel.clone(), meta.mtime);
                self.set_meta(&rel, SFlag::S_IFDIR, None, meta)
            }
            T::Symlink => {
                let target = link.ok_or_else(|| self.refuse(&raw, "symlink without a target"))?;
                if target.len() > self.limits.max_path_bytes
                    || target.is_empty()
                    || target.contains(&0)
                {
                    return Err(self.refuse(&raw, "bad symlink target"));
                }
                symlink(OsStr::from_bytes(&target), &host)
                    .ctx(|| format!("creating symlink {}", host.display()))?;
                // A new symlink may change how later names resolve.
                self.parent_cache.clear();
                self.inodes += 1;
                self.set_meta(&rel, SFlag::S_IFLNK, None, meta)
            }
            T::Link => {
                let target = link.ok_or_else(|| self.refuse(&raw, "hard link without a target"))?;
                let tcomps = self.components(&target)?;
                if tcomps.is_empty() {
                    return Err(self.refuse(&raw, "hard link to the root"));
                }
                let (trel, depth) = self.resolve(&raw, &tcomps, false)?;
                let thost = self.root.join(&trel);
                let exists = depth >= trel.iter().count();
                match fs::symlink_metadata(&thost) {
                    Ok(m) if exists && m.is_dir() => {
                        return Err(self.refuse(&raw, "hard link to a directory"))
                    }
                    Ok(_) if exists => {}
                    _ => {
                        return Err(self.refuse(
                            &raw,
                            format!(
                                "hard link target {:?} does not exist in the image",
                                String::from_utf8_lossy(&target)
                            ),
                        ))
                    }
                }
                fs::hard_link(&thost, &host)
                    .ctx(|| format!("linking {} to {}", host.display(), thost.display()))?;
                if let Some(f) = self.fixups.get(&trel).cloned() {
                    let kept = rel.as_os_str().len() + xattr_bytes(&f.xattrs);
                    self.keep_for_image(kept)?;
                    self.fixups.insert(rel, f);
                }
                Ok(())
            }
            T::Char | T::Block | T::Fifo => {
                let (ft, letter) = match kind {
                    T::Char => (SFlag::S_IFCHR, 'c'),
                    T::Block => (SFlag::S_IFBLK, 'b'),
                    _ => (SFlag::S_IFIFO, 'p'),
                };
                let (major, minor) = (device.0.unwrap_or(0), device.1.unwrap_or(0));
                self.inodes += 1;
                if ft == SFlag::S_IFIFO || self.privileged {
                    nix::sys::stat::mknodat(
                        AT_FDCWD,
                        &host,
                        ft,
                        Mode::from_bits_truncate(0o600),
                        nix::sys::stat::makedev(major.into(), minor.into()),
                    )
                    .ctx(|| format!("creating {}", host.display()))?;
                    self.set_meta(&rel, ft, None, meta)
                } else {
                    self.set_meta(&rel, ft, Some((letter, major, minor)), meta)
                }
            }
            other => {
                tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(&raw), kind = ?other, "skipping unsupported entry type");
                Ok(())
            }
        }
    }

    fn whiteout(
        &mut self,
        raw: &[u8],
        comps: &[OsString],
        hidden: &[u8],
    ) -> Result<(), RootfsError> {
        let parent_comps = &comps[..comps.len() - 1];
        let (parent_rel, depth) = self.resolve(raw, parent_comps, true)?;
        if depth < parent_rel.iter().count() {
            return Ok(()); // the parent does not exist: nothing to hide
        }
        let parent_host = self.root.join(&parent_rel);
        if hidden == b".wh..opq" {
            if !parent_host.is_dir() {
                return Ok(());
            }
            let children =
                fs::read_dir(&parent_host).ctx(|| format!("listing {}", parent_host.display()))?;
            for child in children {
                let child = child.ctx(|| format!("listing {}", parent_host.display()))?;
                let rel = parent_rel.join(child.file_name());
                if !self.this_layer.contains(&rel) {
                    self.remove(&rel)?;
                }
            }
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.refuse(raw, "whiteout of nothing"));
        }
        let rel = parent_rel.join(OsStr::from_bytes(hidden));
        if fs::symlink_metadata(self.root.join(&rel)).is_ok() {
            self.remove(&rel)?;
        } else {
            self.forget(&rel);
        }
        Ok(())
    }

    /// Removes `rel` (never following a symlink) and everything recorded
    /// under it.
    fn remove(&mut self, rel: &Path) -> Result<(), RootfsError> {
        let host = self.root.join(rel);
        let m = fs::symlink_metadata(&host).ctx(|| format!("inspecting {}", host.display()))?;
        if m.is_dir() {
            fs::remove_dir_all(&host).ctx(|| format!("removing {}", host.display()))?;
        } else {
            fs::remove_file(&host).ctx(|| format!("removing {}", host.display()))?;
        }
        self.forget(rel);
        Ok(())
    }

    fn forget(&mut self, rel: &Path) {
        self.parent_cache.clear();
        let doomed: Vec<PathBuf> = self
            .fixups
            .range(rel.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.fixups.remove(&k);
        }
        let doomed: Vec<PathBuf> = self
            .dir_times
            .range(rel.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.dir_times.remove(&k);
        }
    }

    /// Sets ownership, mode, xattrs and mtime, directly when privileged and
    /// as a fixup for what the staging tree cannot hold.
    fn set_meta(
        &mut self,
        rel: &Path,
        ft: SFlag,
        device: Option<(char, u32, u32)>,
        meta: Meta,
    ) -> Result<(), RootfsError> {
        let host = self.root.join(rel);
        let is_link = ft == SFlag::S_IFLNK;
        let mut failed_xattrs = Vec::new();
        if device.is_none() {
            if self.privileged {
                nix::unistd::fchownat(
                    AT_FDCWD,
                    &host,
                    Some(nix::unistd::Uid::from_raw(meta.uid as u32)),
                    Some(nix::unistd::Gid::from_raw(meta.gid as u32)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ctx(|| format!("chown {}", host.display()))?;
            }
            if !is_link {
                // Unprivileged: keep the tree readable and writable for
                // us and mke2fs; the real mode goes in as a fixup.
                let staged = if self.privileged {
                    meta.mode
                } else if ft == SFlag::S_IFDIR {
                    (meta.mode & 0o777) | 0o700
                } else {
                    (meta.mode & 0o777) | 0o600
                };
                fs::set_permissions(&host, fs::Permissions::from_mode(staged))
                    .ctx(|| format!("chmod {}", host.display()))?;
            }
            for (name, value) in &meta.xattrs {
                if lsetxattr(&host, name, value).is_err() {
                    failed_xattrs.push((name.clone(), value.clone()));
                }
            }
            if ft != SFlag::S_IFDIR {
                set_mtime(&host, meta.mtime)?;
            }
        }
        if !self.privileged || device.is_some() || !failed_xattrs.is_empty() {
            self.keep_for_image(rel.as_os_str().len() + xattr_bytes(&failed_xattrs))?;
            self.fixups.insert(
                rel.to_path_buf(),
                Fixup {
                    uid: meta.uid,
                    gid: meta.gid,
                    mode: ft.bits() | meta.mode,
                    device,
                    mtime: meta.mtime,
                    xattrs: failed_xattrs,
                },
            );
        }
        Ok(())
    }

    /// Finishes the tree: directory mtimes last, since writing children
    /// changes them.
    pub(crate) fn finish(&mut self) -> Result<(), RootfsError> {
        for (rel, mtime) in std::mem::take(&mut self.dir_times) {
            let host = self.root.join(&rel);
            match set_mtime(&host, mtime) {
                Err(RootfsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                }
                other => other?,
            }
        }
        Ok(())
    }
}

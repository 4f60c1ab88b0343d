//! What the builder itself puts into the staging tree (the guest init, its
//! mount points, the image config, the network's files): root-owned, with
//! the same path resolution and bounds as layer entries.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

use nix::sys::stat::SFlag;

use super::fsops::{copy_file, now};
use super::{Meta, Staging, BLOCK};
use crate::error::{IoContext, RootfsError};

impl Staging {
    /// Makes sure a directory exists at `rel` (a symlink there counts, as the
    /// guest will follow it), root-owned with `mode`.
    pub(crate) fn ensure_dir(&mut self, rel: &str, mode: u32) -> Result<(), RootfsError> {
        let comps = self.components(rel.as_bytes())?;
        let (r, depth) = self.resolve(rel.as_bytes(), &comps, false)?;
        if depth >= r.iter().count() {
            return Ok(());
        }
        let parent = self.prepare_parent(rel.as_bytes(), &comps)?;
        self.create_root_dir(&parent, mode, now())
    }

    /// Creates a root-owned directory at `rel` (whose parent exists),
    /// counted against the bounds like any layer entry.
    pub(super) fn create_root_dir(
        &mut self,
        rel: &Path,
        mode: u32,
        mtime: i64,
    ) -> Result<(), RootfsError> {
        let host = self.root.join(rel);
        fs::create_dir(&host).ctx(|| format!("creating {}", host.display()))?;
        self.inodes += 1;
        self.content_bytes += BLOCK;
        self.set_meta(
            rel,
            SFlag::S_IFDIR,
            None,
            Meta {
                uid: 0,
                gid: 0,
                mode,
                mtime,
                xattrs: Vec::new(),
            },
        )
    }

    /// The text of the regular file at `rel` (symlinked parents resolved
    /// inside the root): `Ok(Some(""))` when nothing is there, `Ok(None)`
    /// when something other than a UTF-8 file of at most `max` bytes is
    /// (a symlink, a folder, a big file).
    pub(crate) fn read_text(&mut self, rel: &str, max: u64) -> Result<Option<String>, RootfsError> {
        let comps = self.components(rel.as_bytes())?;
        let rel = self.prepare_parent(rel.as_bytes(), &comps)?;
        let host = self.root.join(&rel);
        match fs::symlink_metadata(&host) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(String::new())),
            Ok(m) if m.is_file() && m.len() <= max => {}
            _ => return Ok(None),
        }
        let bytes = fs::read(&host).ctx(|| format!("reading {}", host.display()))?;
        Ok(String::from_utf8(bytes).ok())
    }

    /// Writes a root-owned file at `rel` (symlinked parents resolved inside
    /// the root; anything at `rel` itself replaced).
    pub(crate) fn inject_file(
        &mut self,
        rel: &str,
        content: &mut dyn Read,
        size: u64,
        mode: u32,
    ) -> Result<(), RootfsError> {
        let comps = self.components(rel.as_bytes())?;
        let rel = self.prepare_parent(rel.as_bytes(), &comps)?;
        let host = self.root.join(&rel);
        if fs::symlink_metadata(&host).is_ok() {
            self.remove(&rel)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&host)
            .ctx(|| format!("creating {}", host.display()))?;
        copy_file(content, file, size).ctx(|| format!("writing {}", host.display()))?;
        self.content_bytes += size.div_ceil(BLOCK) * BLOCK;
        self.inodes += 1;
        self.set_meta(
            &rel,
            SFlag::S_IFREG,
            None,
            Meta {
                uid: 0,
                gid: 0,
                mode,
                mtime: now(),
                xattrs: Vec::new(),
            },
        )
    }
}

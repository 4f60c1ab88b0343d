//! A private temporary folder beside a copy's destination: the copy is
//! unpacked there and renamed into place only when complete.

use std::path::{Path, PathBuf};

use crate::ArchiveError;

/// A 0700 folder named `.microagent-cp-<pid>-<n>` in its parent, removed
/// with whatever is left in it when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh one in `parent` (same file system, so a rename out
    /// of it is atomic).
    pub fn new_in(parent: &Path) -> Result<TempDir, ArchiveError> {
        use std::os::unix::fs::DirBuilderExt;
        for attempt in 0..100u32 {
            let p = parent.join(format!(".microagent-cp-{}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(ArchiveError::Io {
                        context: format!("creating a temporary folder in {}", parent.display()),
                        source: e,
                    })
                }
            }
        }
        Err(ArchiveError::Io {
            context: format!("finding a free temporary name in {}", parent.display()),
            source: std::io::ErrorKind::AlreadyExists.into(),
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

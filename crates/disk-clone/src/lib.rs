//! Copying a disk image cheaply and atomically: a reflink (FICLONE) where
//! the filesystem shares blocks (btrfs, xfs), else a sparse copy that skips
//! holes; written under a temp name and renamed into place.

//!
//! Both the rootfs builder (`rootfs build --output`) and the lifecycle
//! (each workspace's own disk) use it; it lives alone so the lifecycle does
//! not depend on the image stack.
//!
//! ```no_run
//! let method = vmkit_disk_clone::clone_disk(
//!     "/var/cache/microagent/rootfs/abc.ext4".as_ref(),
//!     "/var/lib/microagent/workspaces/w1/rootfs.ext4".as_ref(),
//! )?;
//! println!("{method:?}");
//! # Ok::<(), vmkit_disk_clone::CloneError>(())
//! ```

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::SeekFrom;

/// A copy that failed: what was being done, and the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct CloneError {
    /// What was being done (`copying /a to /b`).
    pub what: String,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, CloneError> {
    r.map_err(|source| CloneError {
        what: what(),
        source,
    })
}

/// How [`clone_disk`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// Shared blocks (copy-on-write).
    Reflink,
    /// Only the data regions were copied; holes stay holes.
    SparseCopy,
}

/// Gives `dst` its own copy of `src`. `dst` appears complete or not at
/// all; an existing `dst` is replaced.
pub fn clone_disk(src: &Path, dst: &Path) -> Result<CloneMethod, CloneError> {
    let from = ctx(File::open(src), || format!("opening {}", src.display()))?;
    let len = ctx(from.metadata(), || format!("inspecting {}", src.display()))?.len();
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = ctx(
        tempfile::Builder::new()
            .prefix(".microagent-clone-")
            .tempfile_in(dir),
        || format!("creating a file in {}", dir.display()),
    )?;
    let method = if rustix::fs::ioctl_ficlone(tmp.as_file(), &from).is_ok() {
        CloneMethod::Reflink
    } else {
        ctx(sparse_copy(&from, tmp.as_file(), len), || {
            format!("copying {} to {}", src.display(), dst.display())
        })?;
        CloneMethod::SparseCopy
    };
    ctx(tmp.persist(dst).map_err(|e| e.error), || {
        format!("renaming into {}", dst.display())
    })?;
    Ok(method)
}

fn sparse_copy(from: &File, to: &File, len: u64) -> io::Result<()> {
    to.set_len(len)?;
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(from, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(from, SeekFrom::Hole(data))?.min(len);
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            let n =
                rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source shrank while copying",
                ));
            }
        }
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(std::io::SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&[7u8; 10000]).unwrap();
        drop(f);
        let dst = dir.path().join("dst.img");
        std::fs::write(&dst, b"old").unwrap();
        clone_disk(&src, &dst).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(a, b);
        // Far fewer blocks than 64 MiB: the holes stayed holes.
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 1 << 20);
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}

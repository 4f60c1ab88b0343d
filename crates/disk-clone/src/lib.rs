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

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

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
    let method = if reflink(tmp.as_file(), &from) {
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

// FICLONE: _IOW(0x94, 9, int), the source descriptor passed by value.
nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Shares `from`'s blocks with `to` (copy-on-write), where the file system
/// can; returns whether it did.
fn reflink(to: &File, from: &File) -> bool {
    let Ok(source) = u64::try_from(from.as_raw_fd()) else {
        return false;
    };
    // SAFETY: FICLONE reads no memory of ours: its argument is the source
    // descriptor by value, and both descriptors stay open for the call.
    unsafe { ficlone(to.as_raw_fd(), source as nix::sys::ioctl::ioctl_param_type) }.is_ok()
}

fn sparse_copy(from: &File, to: &File, len: u64) -> io::Result<()> {
    to.set_len(len)?;
    let offset = |n: u64| i64::try_from(n).map_err(|_| io::Error::other("offset out of range"));
    let mut pos = 0u64;
    while pos < len {
        let data = match lseek(from, offset(pos)?, Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(from, data, Whence::SeekHole)?.min(offset(len)?);
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            let n = match nix::fcntl::copy_file_range(
                from,
                Some(&mut off_in),
                to,
                Some(&mut off_out),
                want,
            ) {
                Ok(n) => n,
                // Between file systems (guest RAM on tmpfs into a snapshot
                // on disk) the kernel refuses: copy through a buffer.
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    let n = copy_through_buffer(from, off_in, to, want)?;
                    off_in += i64::try_from(n).map_err(|_| io::Error::other("copy too large"))?;
                    off_out = off_in;
                    n
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source shrank while copying",
                ));
            }
        }
        pos = u64::try_from(hole).unwrap_or(len);
    }
    Ok(())
}

/// Copies up to `want` bytes at `offset` from `from` to the same offset of
/// `to` with plain reads and writes; returns how many (0 at end-of-file).
fn copy_through_buffer(from: &File, offset: i64, to: &File, want: usize) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let start = u64::try_from(offset).map_err(|_| io::Error::other("negative offset"))?;
    let mut buf = vec![0u8; want.min(1 << 20)];
    let n = from.read_at(&mut buf, start)?;
    to.write_all_at(&buf[..n], start)?;
    Ok(n)
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

    /// From tmpfs (where guest RAM lives) to a disk file system, where
    /// `copy_file_range` refuses: the copy still works, holes and all.
    #[test]
    fn a_copy_between_file_systems_works() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        // The crate folder: on the disk of the checkout, not tmpfs.
        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let src = shm.path().join("ram");
        let mut f = File::create(&src).unwrap();
        f.set_len(16 << 20).unwrap();
        f.seek(std::io::SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&[9u8; 3 << 20]).unwrap();
        drop(f);
        let dst = disk.path().join("ram");
        clone_disk(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20);
    }
}

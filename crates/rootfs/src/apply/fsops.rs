//! File operations on the staging tree that std lacks or gets wrong for
//! hostile content: no-follow mtimes and xattrs, sparse copies, and names
//! quoted for debugfs.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;

use crate::error::{IoContext, RootfsError};

pub(super) fn xattr_bytes(xattrs: &[(OsString, Vec<u8>)]) -> usize {
    xattrs.iter().map(|(k, v)| k.len() + v.len() + 32).sum()
}

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) fn set_mtime(host: &Path, mtime: i64) -> Result<(), RootfsError> {
    let ts = TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(AT_FDCWD, host, &ts, &ts, UtimensatFlags::NoFollowSymlink)
        .ctx(|| format!("setting mtime of {}", host.display()))
}

/// Sets extended attribute `name` on `path` itself, not on what a symlink
/// there points to. (nix has no xattr calls; this is the one libc call.)
pub(super) fn lsetxattr(path: &Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let name = CString::new(name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `value`
    // is a live slice whose pointer and length are passed together.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies exactly `size` bytes in large chunks; a short entry is an error.
/// Runs of zeros become holes, so a sparse file (say a huge
/// `/var/log/lastlog`) does not balloon the staging tree; mke2fs keeps the
/// holes.
pub(super) fn copy_file(mut from: impl Read, mut to: File, size: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut buf = vec![0u8; (size.min(256 << 10) as usize).max(1)];
    let mut left = size;
    let mut holes = false;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive entry is truncated",
            ));
        }
        if n >= 4096 && buf[..n].iter().all(|&b| b == 0) {
            to.seek(SeekFrom::Current(n as i64))?;
            holes = true;
        } else {
            to.write_all(&buf[..n])?;
        }
        left -= n as u64;
    }
    if holes {
        to.set_len(size)?;
    }
    Ok(())
}

/// Validates a relative path for a debugfs command line (which has no
/// escaping for newlines or quotes).
pub(crate) fn debugfs_path(rel: &Path) -> Result<String, RootfsError> {
    let bytes = rel.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() || c == '"') => Ok(format!("\"/{s}\"")),
        _ => Err(RootfsError::UnsafeEntry {
            layer: 0,
            entry: String::from_utf8_lossy(bytes).into_owned(),
            reason: "name needs a debugfs fix-up (not running as root) but contains characters debugfs cannot quote".into(),
        }),
    }
}

//! Small filesystem helpers: atomic replace and streaming sha256.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::KernelError;

/// Replaces `path` with `bytes` so readers see the old or the new content,
/// never a mix: a sibling temp file, fsync, rename, fsync of the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    let dir = parent(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| KernelError::io("creating a temp file in", dir, e))?;
    // tempfile creates 0600; manifests are as readable as the kernel.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|_| tmp.write_all(bytes))
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| KernelError::io("writing", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| KernelError::io("renaming into place", path, e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Best effort: makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// sha256 of everything `reader` yields, as lower-case hex, and the length.
pub(crate) fn sha256_reader(
    mut reader: impl Read,
    path: &Path,
) -> Result<(String, u64), KernelError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(KernelError::io("reading", path, e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// sha256 of a file, as lower-case hex, and its length.
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), KernelError> {
    let file = File::open(path).map_err(|e| KernelError::io("opening", path, e))?;
    sha256_reader(file, path)
}

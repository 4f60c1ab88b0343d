//! Writing a tree as a tar stream.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

use crate::ArchiveError;

/// What a pack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Entries written.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Writes `src` (a file, a symlink, or a folder and everything under it)
/// to `out` as a tar stream whose entries start with `name`. Symlinks are
/// stored as symlinks, never followed; modes, mtimes and ownership are
/// kept; sockets are left out. Returns what was written.
pub fn pack(src: &Path, name: &OsStr, out: &mut dyn Write) -> Result<PackStats, ArchiveError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut stats = PackStats::default();
    let meta = std::fs::symlink_metadata(src)
        .map_err(ArchiveError::io(format!("reading {}", src.display())))?;
    let mut stack = vec![(src.to_path_buf(), Path::new(name).to_path_buf(), meta)];
    while let Some((path, rel, meta)) = stack.pop() {
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        if ft.is_socket() {
            continue;
        }
        builder
            .append_path_with_name(&path, &rel)
            .map_err(ArchiveError::io(format!("packing {}", path.display())))?;
        stats.entries += 1;
        if ft.is_file() {
            stats.bytes += meta.len();
        }
        if ft.is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(&path)
                .map_err(ArchiveError::io(format!("listing {}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(ArchiveError::io(format!("listing {}", path.display())))?;
            // Reverse order on the stack: entries come out sorted.
            children.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
            for child in children {
                let cpath = child.path();
                let cmeta = std::fs::symlink_metadata(&cpath)
                    .map_err(ArchiveError::io(format!("reading {}", cpath.display())))?;
                stack.push((cpath, rel.join(child.file_name()), cmeta));
            }
        }
    }
    builder
        .into_inner()
        .and_then(|w| w.flush())
        .map_err(ArchiveError::io("finishing the archive"))?;
    Ok(stats)
}

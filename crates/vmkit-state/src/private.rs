//! Private folders: everything under the state folder is the user's alone.
//!
//! Other local users are a threat: in a folder they can write to they can
//! plant a symlink where microagent will write (a config disk pointed at a
//! victim file) or a socket where the guest's connections go; in one they
//! can read they can copy cached disks and their baked-in secrets. So a
//! folder microagent keeps state in must be owned by the user running it
//! and writable by nobody else ([`ensure_private_dir`] refuses it
//! otherwise), and folders are 0700 and files 0600 ([`tighten_tree`] fixes
//! what an older version left wider).

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) as 0700 if needed, then checks it:
/// a real folder (not a symlink, unless `follow` is set, as for a state
/// root the user pointed elsewhere), owned by the effective user, not
/// writable by group or others. Read or search bits for others are
/// removed. The error says which rule failed.
pub fn ensure_private_dir(dir: &Path, follow: bool) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        // A symlink to a missing place, say: reported by the checks below.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = if follow {
        fs::metadata(dir)?
    } else {
        fs::symlink_metadata(dir)?
    };
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} {why}; microagent keeps private state there and refuses it (remove it or choose another state folder)",
                dir.display()
            ),
        ))
    };
    if m.file_type().is_symlink() {
        return refuse("is a symlink".into());
    }
    if !m.is_dir() {
        return refuse("is not a folder".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return refuse(format!(
            "is owned by uid {}, not by you (uid {me})",
            m.uid()
        ));
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(format!("is writable by others (mode {mode:04o})"));
    }
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes every folder under `root` (itself included) 0700 and every file
/// lose its group and other bits, without following symlinks. Entries not
/// owned by the user are left as they are. Folders directly under `root`
/// whose name starts with one of `keep_out` are tightened but not entered:
/// a build's staging tree holds the image's own modes, which must survive.
pub fn tighten_tree(root: &Path, keep_out: &[&str]) -> io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let kept_out = |p: &Path| {
        p.parent() == Some(root)
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| keep_out.iter().any(|k| n.starts_with(k)))
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if m.uid() != me || m.file_type().is_symlink() {
            continue;
        }
        let mode = m.permissions().mode() & 0o7777;
        let wanted = if m.is_dir() { 0o700 } else { mode & 0o700 };
        if (m.is_dir() || m.is_file()) && mode != wanted {
            fs::set_permissions(&path, fs::Permissions::from_mode(wanted))?;
        }
        if m.is_dir() && !kept_out(&path) {
            for e in fs::read_dir(&path)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_or_foreign_folders_are_refused_wide_ones_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b");
        ensure_private_dir(&fresh, false).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );

        let wide = dir.path().join("wide");
        fs::create_dir(&wide).unwrap();
        fs::set_permissions(&wide, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&wide, false).unwrap();
        assert_eq!(
            fs::metadata(&wide).unwrap().permissions().mode() & 0o777,
            0o700
        );

        fs::set_permissions(&wide, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_private_dir(&wide, false).unwrap_err();
        assert!(err.to_string().contains("writable by others"), "{err}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(ensure_private_dir(&link, false)
            .unwrap_err()
            .to_string()
            .contains("symlink"));
        ensure_private_dir(&link, true).unwrap();

        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(ensure_private_dir(&file, false).is_err());
    }

    #[test]
    fn trees_are_tightened_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("sub/f"), b"").unwrap();
        fs::set_permissions(root.join("sub/f"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sub/l")).unwrap();
        fs::create_dir_all(root.join("tmp/stage")).unwrap();
        fs::set_permissions(root.join("tmp/stage"), fs::Permissions::from_mode(0o755)).unwrap();
        tighten_tree(&root, &["tmp"]).unwrap();
        assert_eq!(mode(&root.join("tmp")), 0o700);
        assert_eq!(
            mode(&root.join("tmp/stage")),
            0o755,
            "a staging tree keeps its modes"
        );
        assert_eq!(mode(&root.join("sub")), 0o700);
        assert_eq!(mode(&root.join("sub/f")), 0o700);
        assert_eq!(mode(&outside), 0o644);
    }
}

//! Files in a running workspace, moved through the exec channel with the
//! image's own shell tools (`sh`, `cat`, `wc`, `tail`, `head`, `chmod`), so
//! they work with any image that has a POSIX shell; and the host side of
//! `workspace_cp`, confined to the operator's files folder.

use std::path::{Component, Path, PathBuf};

/// Writes stdin to `$1` (parents created), then sets mode `$2`.
pub const WRITE_SCRIPT: &str =
    r#"umask 022; mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1""#;

/// Prints `$1`'s size on stderr, then up to `$3` bytes from byte `$2` (1-based) on stdout.
pub const READ_SCRIPT: &str = r#"[ -f "$1" ] || { echo "$1: no such regular file" >&2; exit 2; }; wc -c < "$1" >&2 || exit 2; tail -c +"$2" "$1" | head -c "$3""#;

/// Checks a guest path from a client: absolute, no NUL, bounded.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must be absolute"));
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if path.len() > 4096 {
        return Err("path is longer than 4096 bytes".into());
    }
    Ok(())
}

/// Parses an octal mode such as "0644" or "755".
pub fn parse_mode(mode: Option<&str>) -> Result<String, String> {
    let mode = mode.unwrap_or("0644");
    let valid = (3..=4).contains(&mode.len()) && mode.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !valid {
        return Err(format!("mode {mode:?} is not an octal mode like \"0644\""));
    }
    Ok(mode.to_owned())
}

/// The file size `READ_SCRIPT` printed on stderr.
pub fn parse_size(stderr: &str) -> Result<u64, String> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("could not read the file: {}", stderr.trim()))
}

/// Where a client's `hostPath` is on the host: inside `root` (the
/// operator's `--files-dir`), or refused. The path must be relative with no
/// `..`; symlinks on the way are resolved and must stay inside `root` too
/// (a link the guest sent earlier cannot lead out). For a copy to the
/// guest the path must exist; for one from it, its folder must.
pub fn confine(root: &Path, host_path: &str, must_exist: bool) -> Result<PathBuf, String> {
    let refuse = |why: &str| Err(format!("hostPath {host_path:?}: {why}"));
    if host_path.contains('\0') || host_path.len() > 4096 {
        return refuse("not a usable path");
    }
    let rel = Path::new(host_path);
    if rel.is_absolute() {
        return refuse("must be relative to the server's files folder (--files-dir)");
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return refuse("may not contain \"..\"");
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("the server's files folder {}: {e}", root.display()))?;
    let joined = root.join(rel);
    let resolved = match joined.canonicalize() {
        Ok(p) => p,
        Err(_) if !must_exist => {
            let (parent, base) = match (joined.parent(), joined.file_name()) {
                (Some(p), Some(b)) => (p, b),
                _ => return refuse("names no file"),
            };
            match parent.canonicalize() {
                Ok(p) => p.join(base),
                Err(_) => return refuse("its folder does not exist in the files folder"),
            }
        }
        Err(_) => return refuse("does not exist in the server's files folder"),
    };
    if !resolved.starts_with(&root) {
        return refuse("leads out of the server's files folder (through a symlink)");
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_modes_are_checked() {
        assert!(check_path("/root/a").is_ok());
        assert!(check_path("root/a").is_err());
        assert!(check_path("/a\0b").is_err());
        assert_eq!(parse_mode(None).unwrap(), "0644");
        assert_eq!(parse_mode(Some("755")).unwrap(), "755");
        assert!(parse_mode(Some("0999")).is_err());
        assert!(parse_mode(Some("u+x")).is_err());
        assert!(parse_mode(Some("; rm -rf /")).is_err());
    }

    #[test]
    fn sizes_come_from_the_last_number_on_stderr() {
        assert_eq!(parse_size("  42\n").unwrap(), 42);
        assert!(parse_size("/x: no such regular file\n")
            .unwrap_err()
            .contains("no such"));
    }

    #[test]
    fn host_paths_stay_in_the_files_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a"), "a").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("in")).unwrap();
        let root_c = root.canonicalize().unwrap();
        assert_eq!(confine(&root, "sub/a", true).unwrap(), root_c.join("sub/a"));
        assert_eq!(confine(&root, "in/a", true).unwrap(), root_c.join("sub/a"));
        assert_eq!(confine(&root, ".", true).unwrap(), root_c);
        assert_eq!(
            confine(&root, "sub/new", false).unwrap(),
            root_c.join("sub/new")
        );
        for (path, must_exist, why) in [
            ("/etc/passwd", true, "relative"),
            ("../x", false, ".."),
            ("sub/../../x", false, ".."),
            ("out", true, "leads out"),
            ("out/passwd", true, "leads out"),
            ("out/new", false, "leads out"),
            ("missing", true, "does not exist"),
            ("nodir/new", false, "folder does not exist"),
            ("a\0b", false, "usable"),
        ] {
            let e = confine(&root, path, must_exist).unwrap_err();
            assert!(e.contains(why), "{path}: {e}");
        }
    }
}

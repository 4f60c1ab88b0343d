//! Entry names against a root: the checks every archive entry passes, for
//! image layers (the rootfs builder) and for `cp` in both directions.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a name was refused or could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The name is unsafe (the reason says why).
    #[error("{0}")]
    Refused(String),
    /// Inspecting the tree failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being inspected.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn refused(reason: impl Into<String>) -> PathError {
    PathError::Refused(reason.into())
}

/// Splits an archive name into components, refusing absolute names, `..`,
/// NUL bytes, over-long names and components. `.` and empty components
/// vanish; an empty result names the root.
pub fn split_name(raw: &[u8], max_path_bytes: usize) -> Result<Vec<OsString>, PathError> {
    if raw.len() > max_path_bytes {
        return Err(refused(format!("name longer than {max_path_bytes} bytes")));
    }
    if raw.starts_with(b"/") {
        return Err(refused("absolute name"));
    }
    if raw.contains(&0) {
        return Err(refused("NUL byte in name"));
    }
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(refused("'..' component")),
            c if c.len() > 255 => return Err(refused("component longer than 255 bytes")),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// A name resolved inside a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The path relative to the root, symlinks followed.
    pub rel: PathBuf,
    /// How many of its leading components exist.
    pub existing: usize,
}

impl Resolved {
    /// Whether the whole path exists.
    pub fn exists(&self) -> bool {
        self.existing >= self.rel.iter().count()
    }
}

/// Resolves `comps` to a path relative to `root`, following symlinks inside
/// the root in every component except (unless `follow_last`) the last. A
/// symlink's absolute target means the root; a `..` above the root, through
/// a missing directory, or more than `max_hops` links are refused, as is a
/// non-directory in the middle of the path.
pub fn resolve(
    root: &Path,
    comps: &[OsString],
    follow_last: bool,
    max_hops: u32,
) -> Result<Resolved, PathError> {
    let mut stack: Vec<OsString> = Vec::with_capacity(comps.len());
    let mut pending: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut hops = 0u32;
    let mut existing: Option<usize> = None;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            if existing.is_some() {
                // `missing/..`: the kernel says ENOENT, and so do we.
                return Err(refused("goes through a symlink into a missing directory"));
            }
            if stack.pop().is_none() {
                return Err(refused(
                    "goes through a symlink that points outside the root",
                ));
            }
            continue;
        }
        if c.is_empty() || c == "." {
            continue;
        }
        let is_last = pending.is_empty();
        if existing.is_some() {
            stack.push(c);
            continue;
        }
        let mut host = root.to_path_buf();
        host.extend(&stack);
        host.push(&c);
        match std::fs::symlink_metadata(&host) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                existing = Some(stack.len());
                stack.push(c);
            }
            Err(e) => {
                return Err(PathError::Io {
                    context: format!("inspecting {}", host.display()),
                    source: e,
                })
            }
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                hops += 1;
                if hops > max_hops {
                    return Err(refused("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&host).map_err(|e| PathError::Io {
                    context: format!("reading link {}", host.display()),
                    source: e,
                })?;
                let bytes = target.as_os_str().as_bytes();
                if bytes.starts_with(b"/") {
                    // The root's own root, not the host's.
                    stack.clear();
                }
                for part in bytes.rsplit(|&b| b == b'/') {
                    pending.push_front(OsStr::from_bytes(part).to_os_string());
                }
            }
            Ok(m) if !is_last && !m.is_dir() => {
                return Err(refused(format!(
                    "a parent ({}) is not a directory",
                    host.display()
                )));
            }
            Ok(_) => stack.push(c),
        }
    }
    let existing = existing.unwrap_or(stack.len());
    Ok(Resolved {
        rel: stack.iter().collect(),
        existing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        for bad in [&b"/etc/passwd"[..], b"a/../../x", b"..", b"a\0b"] {
            assert!(split_name(bad, 4096).is_err(), "{bad:?}");
        }
        assert_eq!(split_name(b"./a//b/.", 4096).unwrap(), ["a", "b"]);
        assert!(split_name(b"./", 4096).unwrap().is_empty());
        assert!(split_name(&[b'a'; 5000], 4096).is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("d")).unwrap();
        std::os::unix::fs::symlink("/d", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", r.join("d/up")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        let names = |s: &str| split_name(s.as_bytes(), 4096).unwrap();
        let got = resolve(r, &names("abs/f"), false, 40).unwrap();
        assert_eq!(got.rel, Path::new("d/f"));
        assert!(!got.exists());
        assert!(resolve(r, &names("d/up/x"), false, 40).is_err());
        assert!(resolve(r, &names("loop/x"), false, 40).is_err());
        // The last component is not followed unless asked.
        assert_eq!(
            resolve(r, &names("abs"), false, 40).unwrap().rel,
            Path::new("abs")
        );
        assert_eq!(
            resolve(r, &names("abs"), true, 40).unwrap().rel,
            Path::new("d")
        );
    }
}

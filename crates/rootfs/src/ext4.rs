//! Making the ext4: `mke2fs -t ext4 -d STAGE`, then, for what the staging
//! tree could not hold (ownership when not root, device nodes, refused
//! xattrs), one `debugfs -w` pass.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apply::{debugfs_path, Fixup};
use crate::error::{IoContext, RootfsError};

const MIB: u64 = 1 << 20;

/// Free space added to an automatically sized disk, so the workload has
/// room to write. The file is sparse, so unused space costs nothing.
pub const DEFAULT_HEADROOM_MIB: u64 = 1024;

/// Finds an e2fsprogs tool even when `/sbin` is not on PATH (unprivileged
/// users often lack it).
pub(crate) fn tool(name: &str) -> Result<PathBuf, RootfsError> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| RootfsError::Tool {
            tool: name.into(),
            message: "not found (install e2fsprogs)".into(),
        })
}

/// The smallest disk, in MiB, that should hold `content_bytes` in
/// `inodes` inodes (data, inode tables, journal, group metadata).
pub(crate) fn min_size_mib(content_bytes: u64, inodes: u64) -> u64 {
    let bytes = content_bytes + content_bytes / 20 + inodes * 256 + 16 * MIB;
    bytes.div_ceil(MIB).max(8)
}

/// The default size: content plus headroom.
pub(crate) fn auto_size_mib(content_bytes: u64, inodes: u64) -> u64 {
    min_size_mib(content_bytes, inodes) + content_bytes / 4 / MIB + DEFAULT_HEADROOM_MIB
}

/// Runs mke2fs. `requested` is the user's `--size-mib`, for the error.
pub(crate) fn mkfs(
    stage: &Path,
    out: &Path,
    size_mib: u64,
    inodes: u64,
    requested: Option<u64>,
    needed_mib: u64,
) -> Result<(), RootfsError> {
    // Enough inodes for the content plus room to grow, never fewer than
    // mke2fs would pick by itself (one per 16 KiB).
    let by_ratio = size_mib * MIB / 16384;
    let inode_count = (inodes + inodes / 4 + 4096).max(by_ratio);
    let output = Command::new(tool("mke2fs")?)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-m",
            "0",
            "-L",
            "microagent-root",
        ])
        .arg("-N")
        .arg(inode_count.to_string())
        .args([
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
        ])
        .arg("-d")
        .arg(stage)
        .arg(out)
        .arg(format!("{size_mib}M"))
        .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
        .output()
        .ctx(|| "running mke2fs".to_string())?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let message = format!("{stderr} {stdout}");
    let no_space = ["allocate", "No space", "too big", "too small", "Could not"]
        .iter()
        .any(|s| message.contains(s));
    if let (true, Some(requested)) = (no_space, requested) {
        return Err(RootfsError::TooSmall {
            requested,
            needed: needed_mib,
        });
    }
    Err(RootfsError::Tool {
        tool: "mke2fs".into(),
        message: message.trim().to_string(),
    })
}

/// Writes fixups into the ext4 with one `debugfs -w` run. debugfs always
/// exits 0, so anything on stderr beyond its banner is a failure.
pub(crate) fn apply_fixups(
    image: &Path,
    fixups: &BTreeMap<PathBuf, Fixup>,
    scratch: &Path,
) -> Result<(), RootfsError> {
    if fixups.is_empty() {
        return Ok(());
    }
    let mut cmds = String::new();
    let mut xattr_files = 0usize;
    for (rel, f) in fixups {
        let p = debugfs_path(rel)?;
        if let Some((kind, major, minor)) = f.device {
            // debugfs's mknod links the name into the current directory
            // verbatim, so change there first.
            let parent = debugfs_path(rel.parent().unwrap_or(Path::new("")))?;
            let name = rel.file_name().map(PathBuf::from).unwrap_or_default();
            let name = debugfs_path(&name)?;
            let name = name.replacen("\"/", "\"", 1);
            let _ = writeln!(
                cmds,
                "cd {parent}\nmknod {name} {kind} {major} {minor}\ncd \"/\""
            );
        }
        let _ = writeln!(cmds, "sif {p} uid {}", f.uid);
        let _ = writeln!(cmds, "sif {p} gid {}", f.gid);
        let _ = writeln!(cmds, "sif {p} mode 0{:o}", f.mode);
        if f.device.is_some() {
            let _ = writeln!(cmds, "sif {p} mtime {}", f.mtime.max(0));
        }
        for (name, value) in &f.xattrs {
            let name = name
                .to_str()
                .filter(|n| !n.chars().any(|c| c.is_control() || c == '"' || c == ' '));
            let Some(name) = name else {
                return Err(RootfsError::UnsafeEntry {
                    layer: 0,
                    entry: rel.display().to_string(),
                    reason: "xattr name debugfs cannot quote".into(),
                });
            };
            let vf = scratch.join(format!("xattr-{xattr_files}"));
            xattr_files += 1;
            std::fs::write(&vf, value).ctx(|| format!("writing {}", vf.display()))?;
            let _ = writeln!(cmds, "ea_set -f \"{}\" {p} {name}", vf.display());
        }
    }
    let cmd_file = scratch.join("debugfs.cmds");
    std::fs::write(&cmd_file, cmds).ctx(|| format!("writing {}", cmd_file.display()))?;
    let output = Command::new(tool("debugfs")?)
        .arg("-w")
        .arg("-f")
        .arg(&cmd_file)
        .arg(image)
        .output()
        .ctx(|| "running debugfs".to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !output.status.success() || !errors.is_empty() {
        return Err(RootfsError::Tool {
            tool: "debugfs".into(),
            message: errors
                .iter()
                .take(10)
                .copied()
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(())
}

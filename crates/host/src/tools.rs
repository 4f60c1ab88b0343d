use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An external program microagent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// The QEMU backend's VMM.
    Qemu,
    /// The QEMU backend's VMM for arm64 guests (`-M virt`).
    QemuAarch64,
    /// The Firecracker backend's VMM.
    Firecracker,
    /// QEMU's vsock bridge (Firecracker's hybrid-vsock convention).
    VhostDeviceVsock,
    /// QEMU's virtio-fs file server, for host folders as volumes.
    Virtiofsd,
    /// Builds ext4 root disks.
    Mke2fs,
    /// Fixes ownership in ext4 images built without root.
    Debugfs,
}

impl Tool {
    /// The program name looked up in `PATH`.
    pub fn program(self) -> &'static str {
        match self {
            Tool::Qemu => "qemu-system-x86_64",
            Tool::QemuAarch64 => "qemu-system-aarch64",
            Tool::Firecracker => "firecracker",
            Tool::VhostDeviceVsock => "vhost-device-vsock",
            Tool::Virtiofsd => "virtiofsd",
            Tool::Mke2fs => "mke2fs",
            Tool::Debugfs => "debugfs",
        }
    }

    fn version_flag(self) -> &'static str {
        match self {
            Tool::Mke2fs | Tool::Debugfs => "-V",
            _ => "--version",
        }
    }
}

/// Finds a program in `PATH`, plus the sbin folders a non-root `PATH` lacks.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs the tool's version flag and returns the first non-empty line it
/// printed (on stdout or stderr), or `None` if it is not installed.
pub fn tool_version(tool: Tool) -> Option<(PathBuf, String)> {
    let path = find_in_path(tool.program())?;
    let out = Command::new(&path)
        .arg(tool.version_flag())
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("version unknown")
        .chars()
        .take(200)
        .collect();
    Some((path, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mke2fs_with_its_version() {
        let (path, version) =
            tool_version(Tool::Mke2fs).expect("e2fsprogs is installed by scripts/setup");
        assert!(path.ends_with("mke2fs"));
        assert!(version.contains("mke2fs"), "{version}");
    }

    #[test]
    fn missing_program_is_none() {
        assert!(find_in_path("microagent-no-such-tool").is_none());
    }
}

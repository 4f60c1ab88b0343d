use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::network::{validate_published, Network, PublishedPort};
use crate::ProtocolError;

/// Smallest guest memory we accept; below this a standard kernel cannot boot.
const MIN_MEMORY_MIB: u32 = 64;
/// Largest guest memory we accept (1 TiB); a guard against typos.
const MAX_MEMORY_MIB: u32 = 1 << 20;
const MAX_CPUS: u32 = 255;
/// Longest deadline a workload or exec may ask for (30 days): longer is a
/// typo, and every deadline must stay far from `Duration`'s limits.
pub const MAX_TIMEOUT_SECONDS: u64 = 30 * 24 * 3600;
/// virtio-mmio slots left after the root and config disks.
const MAX_DISKS: usize = 16;
/// Host folders per VM (each is a virtio-mmio device and a file server).
const MAX_VOLUMES: usize = 8;

/// Everything needed to build and boot one microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfig {
    /// Absolute path of an uncompressed x86_64 `vmlinux` (PVH-capable).
    pub kernel_path: String,
    /// Absolute path of the ext4 root disk, attached as `/dev/vda`.
    pub rootfs_path: String,
    /// microagent's state folder (`--state-dir`); the workspace lives in
    /// `<stateDir>/workspaces/<runtimeID>`: disks, sockets, logs, event log.
    pub state_dir: String,
    /// Guest memory in MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub cpu_count: u32,
    /// Extra disks, attached in order from `/dev/vdb`.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Host folders shared with the guest (virtio-fs), mounted in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Extra kernel command-line arguments, appended after microagent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    /// Guest hostname; defaults to the runtime ID with `_` and `.` as `-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The guest's architecture; defaults to the host's. `aarch64` on an
    /// x86_64 host is emulated (QEMU `-M virt`), as `x86_64` would be on
    /// an arm64 one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<GuestArch>,
    /// Commands for `run`; absent for plain workspace commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// The guest's network: mode and egress rules (default: `public`).
    #[serde(default, skip_serializing_if = "Network::is_default")]
    pub network: Network,
    /// Host TCP ports forwarded to guest ports (over vsock, so they work
    /// with mode `none` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PublishedPort>,
}

/// A guest CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GuestArch {
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit Arm (Apple silicon, Graviton, ...).
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl GuestArch {
    /// The host's own architecture (x86_64 on anything that is not arm64).
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            GuestArch::Aarch64
        } else {
            GuestArch::X86_64
        }
    }

    /// The wire name, which is also the kernel store's folder name.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "x86_64",
            GuestArch::Aarch64 => "aarch64",
        }
    }
}

impl std::fmt::Display for GuestArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for GuestArch {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" => Ok(GuestArch::X86_64),
            "aarch64" | "arm64" => Ok(GuestArch::Aarch64),
            other => Err(ProtocolError::invalid(format!(
                "unknown architecture {other:?}; expected x86_64 or aarch64"
            ))),
        }
    }
}

impl MachineConfig {
    /// A config with the required fields and every optional one at its
    /// default (no extra disks or volumes, the host's architecture, network
    /// `public`). Callers set what they need on top, so a new optional field
    /// means one change here, not one per caller.
    pub fn new(
        kernel_path: impl Into<String>,
        rootfs_path: impl Into<String>,
        state_dir: impl Into<String>,
        memory_mib: u32,
        cpu_count: u32,
    ) -> Self {
        MachineConfig {
            kernel_path: kernel_path.into(),
            rootfs_path: rootfs_path.into(),
            state_dir: state_dir.into(),
            memory_mib,
            cpu_count,
            disks: Vec::new(),
            volumes: Vec::new(),
            kernel_args: None,
            hostname: None,
            arch: None,
            workload: None,
            network: Network::default(),
            publish: Vec::new(),
        }
    }

    /// The guest architecture, the host's when the config names none.
    pub fn guest_arch(&self) -> GuestArch {
        self.arch.unwrap_or_else(GuestArch::host)
    }
}

/// An extra block device for the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    /// A short name, unique within the request (letters, digits, `-`, `_`).
    pub name: String,
    /// Absolute host path of the disk image.
    pub path: String,
    /// Absolute guest path where the guest init mounts it.
    pub mountpoint: String,
    /// Read-only or read-write.
    pub mode: DiskMode,
}

/// A host folder the guest sees at `guestPath` (virtio-fs on QEMU and
/// Apple VF; Firecracker has none and refuses volumes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    /// Absolute host path of an existing folder.
    pub host_path: String,
    /// Absolute guest path where the guest init mounts it (created if missing).
    pub guest_path: String,
    /// Read-only, enforced by the host side (the file server refuses
    /// writes), not only by the guest's mount options.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskMode {
    /// Read-only: the VMM opens the file read-only and the guest mounts `ro`.
    Ro,
    /// Read-write.
    Rw,
}

/// What `run` executes inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Shell commands run in order before `exec`; the first failure ends the run.
    #[serde(default)]
    pub setup: Vec<String>,
    /// The main shell command; its exit code is the run's exit code.
    pub exec: String,
    /// Extra environment, on top of the image's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; defaults to the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User (`name`, `uid` or `uid:gid`); defaults to the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Whole-run deadline in seconds (setup and exec together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl MachineConfig {
    /// Checks the values serde cannot: ranges, absolute paths, unique names.
    /// Errors name the offending field the way it is spelled on the wire.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        absolute("config.kernelPath", &self.kernel_path)?;
        absolute("config.rootfsPath", &self.rootfs_path)?;
        absolute("config.stateDir", &self.state_dir)?;
        if let Some(h) = &self.hostname {
            crate::validate_hostname(h)
                .map_err(|e| ProtocolError::invalid(format!("config.{}", e.message)))?;
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ProtocolError::invalid(format!(
                "config.memoryMiB must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {}",
                self.memory_mib
            )));
        }
        if !(1..=MAX_CPUS).contains(&self.cpu_count) {
            return Err(ProtocolError::invalid(format!(
                "config.cpuCount must be between 1 and {MAX_CPUS}, got {}",
                self.cpu_count
            )));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ProtocolError::invalid(format!(
                "config.disks has {} entries; at most {MAX_DISKS} are supported",
                self.disks.len()
            )));
        }
        let mut names = HashSet::new();
        let mut mountpoints = HashSet::new();
        for (i, disk) in self.disks.iter().enumerate() {
            disk.validate(i)?;
            if !names.insert(disk.name.as_str()) {
                return Err(ProtocolError::invalid(format!(
                    "disks[{i}].name {:?} is used by an earlier disk",
                    disk.name
                )));
            }
            if !mountpoints.insert(disk.mountpoint.as_str()) {
                return Err(ProtocolError::invalid(format!(
                    "disks[{i}].mountpoint {:?} is used by an earlier disk",
                    disk.mountpoint
                )));
            }
        }
        if self.volumes.len() > MAX_VOLUMES {
            return Err(ProtocolError::invalid(format!(
                "config.volumes has {} entries; at most {MAX_VOLUMES} are supported",
                self.volumes.len()
            )));
        }
        for (i, v) in self.volumes.iter().enumerate() {
            absolute(&format!("volumes[{i}].hostPath"), &v.host_path)?;
            below_root(&format!("volumes[{i}].guestPath"), &v.guest_path)?;
            let normal = v.guest_path.trim_end_matches('/');
            if !mountpoints.insert(normal) {
                return Err(ProtocolError::invalid(format!(
                    "volumes[{i}].guestPath {:?} is already used by another volume or disk",
                    v.guest_path
                )));
            }
        }
        if let Some(args) = &self.kernel_args {
            if args.contains('\n') || args.contains('\0') {
                return Err(ProtocolError::invalid(
                    "config.kernelArgs must be a single line",
                ));
            }
        }
        if let Some(w) = &self.workload {
            w.validate()?;
        }
        self.network.validate()?;
        validate_published(&self.publish)?;
        Ok(())
    }
}

impl Disk {
    fn validate(&self, i: usize) -> Result<(), ProtocolError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(ProtocolError::invalid(format!(
                "disks[{i}].name must be 1-64 letters, digits, '-' or '_', got {:?}",
                self.name
            )));
        }
        absolute(&format!("disks[{i}].path"), &self.path)?;
        below_root(&format!("disks[{i}].mountpoint"), &self.mountpoint)
    }
}

impl Workload {
    fn validate(&self) -> Result<(), ProtocolError> {
        if self.exec.trim().is_empty() {
            return Err(ProtocolError::invalid("workload.exec must not be empty"));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(ProtocolError::invalid(format!(
                    "workload.env key {key:?} must be non-empty without '=' or NUL"
                )));
            }
        }
        if let Some(cwd) = &self.cwd {
            absolute("workload.cwd", cwd)?;
        }
        if let Some(t) = self.timeout_seconds {
            if !(1..=MAX_TIMEOUT_SECONDS).contains(&t) {
                return Err(ProtocolError::invalid(format!(
                    "workload.timeoutSeconds must be between 1 and {MAX_TIMEOUT_SECONDS} (30 days), got {t}"
                )));
            }
        }
        Ok(())
    }
}

/// A guest mount point: absolute, below `/`, without `..`.
fn below_root(field: &str, path: &str) -> Result<(), ProtocolError> {
    absolute(field, path)?;
    if path == "/" || path.split('/').any(|c| c == "..") {
        return Err(ProtocolError::invalid(format!(
            "{field} must be a directory below / without '..', got {path:?}"
        )));
    }
    Ok(())
}

fn absolute(field: &str, path: &str) -> Result<(), ProtocolError> {
    if !path.starts_with('/') {
        return Err(ProtocolError::invalid(format!(
            "{field} must be an absolute path, got {path:?}"
        )));
    }
    if path.contains('\0') {
        return Err(ProtocolError::invalid(format!(
            "{field} must not contain NUL"
        )));
    }
    Ok(())
}

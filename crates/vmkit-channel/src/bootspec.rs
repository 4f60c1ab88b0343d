//! The boot spec: everything the guest init needs that is too large or too
//! structured for the kernel command line. The host writes it to a small raw
//! disk image, attached read-only; the kernel command line only names that
//! device (`microagent.config=/dev/vdX`).
//!
//! Disk layout (no filesystem, so the guest needs no driver beyond virtio-blk):
//!
//! ```text
//! offset 0   magic    b"MAGTCFG1"   (8 bytes)
//! offset 8   length   u32 big-endian, bytes of JSON (<= MAX_CONFIG_LEN)
//! offset 12  JSON     the BootSpec, camelCase
//! ...        zeros    padding to a multiple of 512 bytes (block devices
//!                     have no partial sectors)
//! ```

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::guestnet::{GuestNetwork, PublishSpec};

/// First bytes of a config disk.
pub const CONFIG_MAGIC: &[u8; 8] = b"MAGTCFG1";
/// Largest JSON accepted on a config disk (4 MiB, mostly for placed files).
pub const MAX_CONFIG_LEN: u32 = 4 << 20;
/// Kernel command-line key naming the config device.
pub const CMDLINE_CONFIG_KEY: &str = "microagent.config";
/// Kernel argument with which a backend tells the guest init to end the VM
/// by reboot rather than power-off (Firecracker has no ACPI power-off; its
/// `reboot=k` reset ends the VM).
pub const CMDLINE_EXIT_BY_REBOOT: &str = "microagent.exit=reboot";
const SECTOR: usize = 512;

/// The run spec for one boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootSpec {
    /// Guest hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra disks, mounted in this order (so later mountpoints may nest in earlier ones).
    #[serde(default)]
    pub disks: Vec<DiskMount>,
    /// Host folders (virtio-fs), mounted in this order after the disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Environment on top of the image's `Env`, for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory overriding the image's `WorkingDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User overriding the image's `User` (`name`, `uid`, `uid:gid`, `name:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Files written (as root) after the disks are mounted, before any command.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// What to do once booted.
    pub mode: Mode,
    /// Port on the host (CID 2) the guest connects to at boot.
    #[serde(default = "default_control_port")]
    pub control_port: u32,
    /// Port the guest's exec service listens on.
    #[serde(default = "default_exec_port")]
    pub exec_port: u32,
    /// How to configure the network device; absent: no NIC, only `lo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GuestNetwork>,
    /// Published ports: absent, the guest accepts no forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishSpec>,
}

fn default_control_port() -> u32 {
    crate::DEFAULT_CONTROL_PORT
}
fn default_exec_port() -> u32 {
    crate::DEFAULT_EXEC_PORT
}

impl Default for BootSpec {
    /// A workspace boot with the default ports and nothing else.
    fn default() -> Self {
        BootSpec {
            hostname: None,
            disks: Vec::new(),
            volumes: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            user: None,
            files: Vec::new(),
            mode: Mode::Workspace,
            control_port: crate::DEFAULT_CONTROL_PORT,
            exec_port: crate::DEFAULT_EXEC_PORT,
            network: None,
            publish: None,
        }
    }
}

/// A host folder for the guest init to mount: a virtio-fs device the
/// host exported under `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    /// The virtio-fs tag (the device's name), e.g. `vol0`.
    pub tag: String,
    /// Absolute guest directory; created if missing.
    pub mountpoint: String,
    /// Mount read-only too (the host refuses writes either way).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// An extra disk for the guest init to mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskMount {
    /// Guest block device, e.g. `/dev/vdb`.
    pub device: String,
    /// Absolute guest directory; created if missing.
    pub mountpoint: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Filesystem type; `ext4` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
}

/// A file the guest init writes before running anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute guest path; parent directories are created.
    pub path: String,
    /// UTF-8 contents.
    pub content: String,
    /// Permission bits; 0644 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// What the guest does after booting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Mode {
    /// Run setup then exec, report, power off.
    Run(RunSpec),
    /// Report `ready`, serve exec requests until `shutdown`.
    Workspace,
}

/// The commands of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunSpec {
    /// Shell commands (`/bin/sh -c`) run in order; the first failure stops the run.
    #[serde(default)]
    pub setup: Vec<String>,
    /// The main shell command.
    pub exec: String,
    /// Deadline for setup and exec together, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Why a config disk could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing the disk failed.
    #[error("config disk i/o: {0}")]
    Io(#[from] io::Error),
    /// The disk does not start with [`CONFIG_MAGIC`].
    #[error("not a microagent config disk (bad magic)")]
    BadMagic,
    /// The JSON length exceeds [`MAX_CONFIG_LEN`].
    #[error("config of {0} bytes exceeds the limit of {MAX_CONFIG_LEN} bytes")]
    TooLarge(u64),
    /// The JSON does not parse as a [`BootSpec`].
    #[error("config disk JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The spec parses but a value is unusable.
    #[error("invalid boot spec: {0}")]
    Invalid(String),
}

impl BootSpec {
    /// Checks values serde cannot: absolute paths, sane hostname, ports, env keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(h) = &self.hostname {
            vmkit_protocol::validate_hostname(h).map_err(|e| ConfigError::Invalid(e.message))?;
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !d.device.starts_with("/dev/") || d.device.contains("..") {
                return bad(format!(
                    "disks[{i}].device must be under /dev, got {:?}",
                    d.device
                ));
            }
            absolute_dir(&format!("disks[{i}].mountpoint"), &d.mountpoint)?;
        }
        for (i, v) in self.volumes.iter().enumerate() {
            let tag_ok = !v.tag.is_empty()
                && v.tag.len() <= 36
                && v.tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !tag_ok {
                return bad(format!(
                    "volumes[{i}].tag must be 1-36 letters, digits, '-' or '_', got {:?}",
                    v.tag
                ));
            }
            absolute_dir(&format!("volumes[{i}].mountpoint"), &v.mountpoint)?;
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return bad(format!(
                    "env key {k:?} must be non-empty without '=' or NUL"
                ));
            }
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') {
                return bad(format!("cwd must be an absolute path, got {cwd:?}"));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            absolute_dir(&format!("files[{i}].path"), &f.path)?;
            if f.mode.is_some_and(|m| m > 0o7777) {
                return bad(format!("files[{i}].mode must be at most 0o7777"));
            }
        }
        if self.control_port == 0 || self.exec_port == 0 || self.control_port == self.exec_port {
            return bad("controlPort and execPort must be distinct and non-zero".into());
        }
        if let Some(n) = &self.network {
            n.validate()?;
        }
        if let Some(p) = &self.publish {
            p.validate()?;
            if [self.control_port, self.exec_port].contains(&p.port) {
                return bad("publish.port must differ from controlPort and execPort".into());
            }
        }
        if let Mode::Run(r) = &self.mode {
            if r.exec.trim().is_empty() {
                return bad("mode.exec must not be empty".into());
            }
            if r.timeout_ms == Some(0) {
                return bad("mode.timeoutMs must be at least 1".into());
            }
        }
        let nul = |s: &str| s.contains('\0');
        if self.env.values().any(|v| nul(v))
            || self.files.iter().any(|f| nul(&f.path))
            || matches!(&self.mode, Mode::Run(r) if r.setup.iter().any(|s| nul(s)) || nul(&r.exec))
        {
            return bad("strings must not contain NUL".into());
        }
        Ok(())
    }
}

fn absolute_dir(field: &str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/')
        || path == "/"
        || path.contains('\0')
        || path.split('/').any(|c| c == "..")
    {
        return Err(ConfigError::Invalid(format!(
            "{field} must be an absolute path below / without '..', got {path:?}"
        )));
    }
    Ok(())
}

/// Encodes `spec` as a config disk image (magic, length, JSON, zero padding).
pub fn encode_config(spec: &BootSpec) -> Result<Vec<u8>, ConfigError> {
    spec.validate()?;
    let json = serde_json::to_vec(spec)?;
    if json.len() > MAX_CONFIG_LEN as usize {
        return Err(ConfigError::TooLarge(json.len() as u64));
    }
    let mut buf = Vec::with_capacity(json.len() + 12 + SECTOR);
    buf.extend_from_slice(CONFIG_MAGIC);
    buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    buf.extend_from_slice(&json);
    buf.resize(buf.len().div_ceil(SECTOR) * SECTOR, 0);
    Ok(buf)
}

/// Writes the config disk image for `spec` at `path`, replacing whatever
/// was there (never writing through a symlink planted in its place).
/// Attach it read-only and pass [`kernel_args`] for its guest device.
pub fn write_config_disk(path: impl AsRef<Path>, spec: &BootSpec) -> Result<(), ConfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    let buf = encode_config(spec)?;
    let path = path.as_ref();
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    Ok(())
}

/// Reads a boot spec from the start of a config disk. Reads only as many
/// bytes as the header announces, after checking the bound.
pub fn read_config<R: Read>(mut r: R) -> Result<BootSpec, ConfigError> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head)?;
    if &head[..8] != CONFIG_MAGIC {
        return Err(ConfigError::BadMagic);
    }
    let len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    if len > MAX_CONFIG_LEN {
        return Err(ConfigError::TooLarge(u64::from(len)));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json)?;
    let spec: BootSpec = serde_json::from_slice(&json)?;
    spec.validate()?;
    Ok(spec)
}

/// The kernel command-line argument telling the guest init where its config
/// disk is, e.g. `microagent.config=/dev/vdc`. Append it to the host's own
/// arguments (`root=/dev/vda init=... console=...`).
pub fn kernel_args(config_device: &str) -> String {
    format!("{CMDLINE_CONFIG_KEY}={config_device}")
}

/// Finds the config device named on a kernel command line (`/proc/cmdline`).
pub fn config_device_from_cmdline(cmdline: &str) -> Option<&str> {
    cmdline.split_ascii_whitespace().find_map(|arg| {
        arg.strip_prefix(CMDLINE_CONFIG_KEY)
            .and_then(|rest| rest.strip_prefix('='))
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootSpec {
        BootSpec {
            hostname: Some("ws-1".into()),
            disks: vec![DiskMount {
                device: "/dev/vdb".into(),
                mountpoint: "/data".into(),
                read_only: true,
                fs_type: None,
            }],
            volumes: vec![VolumeMount {
                tag: "vol0".into(),
                mountpoint: "/work".into(),
                read_only: true,
            }],
            env: [("A".to_string(), "1".to_string())].into(),
            cwd: Some("/data".into()),
            user: Some("1000:1000".into()),
            files: vec![FileSpec {
                path: "/etc/motd".into(),
                content: "hi\n".into(),
                mode: Some(0o600),
            }],
            mode: Mode::Run(RunSpec {
                setup: vec!["true".into()],
                exec: "echo hi".into(),
                timeout_ms: Some(1000),
            }),
            control_port: 7,
            exec_port: 8,
            network: Some(GuestNetwork::behind_gateway(
                "10.0.2.15".parse().unwrap(),
                24,
                "10.0.2.2".parse().unwrap(),
                1500,
            )),
            publish: Some(PublishSpec {
                port: 9,
                guest_ports: vec![80],
            }),
        }
    }

    #[test]
    fn config_disk_round_trips_and_is_sector_padded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.img");
        write_config_disk(&path, &sample()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(&bytes[..8], CONFIG_MAGIC);
        assert_eq!(read_config(&bytes[..]).unwrap(), sample());
    }

    #[test]
    fn bad_disks_are_refused() {
        let mut bytes = encode_config(&sample()).unwrap();
        assert!(matches!(
            read_config(&[0u8; 512][..]),
            Err(ConfigError::BadMagic)
        ));
        bytes[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_config(&bytes[..]),
            Err(ConfigError::TooLarge(_))
        ));
        let mut short = encode_config(&sample()).unwrap();
        short.truncate(20);
        assert!(matches!(read_config(&short[..]), Err(ConfigError::Io(_))));
    }

    #[test]
    fn invalid_specs_are_refused() {
        let mut s = sample();
        s.disks[0].mountpoint = "/data/../etc".into();
        assert!(matches!(encode_config(&s), Err(ConfigError::Invalid(_))));
        let mut s = sample();
        s.hostname = Some("bad host".into());
        assert!(s.validate().is_err());
        let mut s = sample();
        s.exec_port = s.control_port;
        assert!(s.validate().is_err());
    }

    #[test]
    fn workspace_json_shape() {
        let json = serde_json::to_value(BootSpec::default()).unwrap();
        assert_eq!(json["mode"], serde_json::json!({"kind": "workspace"}));
        assert_eq!(json["execPort"], 10001);
    }

    #[test]
    fn cmdline_parsing() {
        let line = "console=ttyS0 root=/dev/vda microagent.config=/dev/vdc quiet\n";
        assert_eq!(config_device_from_cmdline(line), Some("/dev/vdc"));
        assert_eq!(config_device_from_cmdline("microagent.configx=1"), None);
        assert_eq!(kernel_args("/dev/vdc"), "microagent.config=/dev/vdc");
    }
}

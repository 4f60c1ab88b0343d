//! `manifest.json`: what an installed kernel is and where it came from.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::KernelError;

/// The manifest format version this code writes.
pub const MANIFEST_SCHEMA: u32 = 1;

/// Manifests are a few hundred bytes; anything far larger is not ours.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Where an installed kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum KernelSource {
    /// Built from Debian's `linux-source-*` package tarball.
    #[serde(rename_all = "camelCase")]
    Debian {
        /// The Debian package name, e.g. `linux-source-6.1`.
        package: String,
        /// The installed package version, e.g. `6.1.192-2`.
        package_version: String,
        /// The tarball the build unpacked.
        tarball: String,
    },
    /// Built from a source tarball or tree given with `--source`.
    #[serde(rename_all = "camelCase")]
    Path {
        /// The tarball or tree.
        path: String,
        /// What identifies this source's content: the tarball's sha256, or
        /// the tree's `make kernelversion` (a tree's edits are not tracked).
        identity: String,
    },
    /// Copied from a user's vmlinux with `kernel install --from`.
    #[serde(rename_all = "camelCase")]
    File {
        /// The file it was copied from.
        path: String,
    },
}

impl KernelSource {
    /// A short human description.
    pub fn describe(&self) -> String {
        match self {
            KernelSource::Debian {
                package,
                package_version,
                ..
            } => format!("built from Debian {package} {package_version}"),
            KernelSource::Path { path, .. } => format!("built from {path}"),
            KernelSource::File { path } => format!("installed from {path}"),
        }
    }
}

/// The record written next to each installed `vmlinux`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Manifest format version ([`MANIFEST_SCHEMA`]).
    pub schema: u32,
    /// Guest architecture, e.g. `x86_64`.
    pub arch: String,
    /// Kernel release (`uname -r` in the guest), when it could be read.
    pub version: Option<String>,
    /// Lower-case hex sha256 of the installed `vmlinux`.
    pub sha256: String,
    /// Size of the installed `vmlinux` in bytes.
    pub size: u64,
    /// sha256 of the config fragment it was built with; `None` for kernels
    /// installed from a file.
    pub config_fragment_sha256: Option<String>,
    /// Where it came from.
    pub source: KernelSource,
    /// When it was built or installed.
    pub installed_at: DateTime<Utc>,
    /// How long the build took, for builds.
    pub build_seconds: Option<f64>,
}

impl Manifest {
    /// Reads and parses a manifest, bounding its size (it may have been
    /// edited by hand or replaced by something else).
    pub fn load(path: &Path) -> Result<Manifest, KernelError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| KernelError::io("opening", path, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| KernelError::io("reading", path, e))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(KernelError::BadManifest {
                path: path.to_path_buf(),
                reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| KernelError::BadManifest {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if manifest.schema != MANIFEST_SCHEMA {
            return Err(KernelError::BadManifest {
                path: path.to_path_buf(),
                reason: format!(
                    "schema {} is not the supported {MANIFEST_SCHEMA}",
                    manifest.schema
                ),
            });
        }
        if manifest.sha256.len() != 64 || !manifest.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KernelError::BadManifest {
                path: path.to_path_buf(),
                reason: "sha256 is not 64 hex digits".into(),
            });
        }
        Ok(manifest)
    }

    /// Writes the manifest atomically (temp file + rename).
    pub fn store(&self, path: &Path) -> Result<(), KernelError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        bytes.push(b'\n');
        crate::fsutil::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            arch: "x86_64".into(),
            version: Some("6.1.192-microagent".into()),
            sha256: "ab".repeat(32),
            size: 1234,
            config_fragment_sha256: Some("cd".repeat(32)),
            source: KernelSource::Debian {
                package: "linux-source-6.1".into(),
                package_version: "6.1.192-2".into(),
                tarball: "/usr/src/linux-source-6.1.tar.xz".into(),
            },
            installed_at: Utc::now(),
            build_seconds: Some(271.5),
        }
    }

    #[test]
    fn round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let m = sample();
        m.store(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), m);

        let file = Manifest {
            source: KernelSource::File {
                path: "/tmp/vmlinux".into(),
            },
            config_fragment_sha256: None,
            build_seconds: None,
            version: None,
            ..sample()
        };
        file.store(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), file);
        // Only the manifest is left: the temp file was renamed away.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn uses_camel_case_keys() {
        let v = serde_json::to_value(sample()).unwrap();
        assert!(v.get("configFragmentSha256").is_some());
        assert_eq!(v["source"]["kind"], "debian");
        assert_eq!(v["source"]["packageVersion"], "6.1.192-2");
    }

    #[test]
    fn rejects_garbage_oversize_and_bad_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            Manifest::load(&path),
            Err(KernelError::BadManifest { .. })
        ));
        std::fs::write(&path, vec![b' '; 100 * 1024]).unwrap();
        let err = Manifest::load(&path).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["sha256"] = "xyz".into();
        std::fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(
            Manifest::load(&path),
            Err(KernelError::BadManifest { .. })
        ));
    }
}

//! The parts of the OCI image spec the builder reads, parsed defensively,
//! plus platforms and digests.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::RootfsError;
use crate::reference::validate_digest;

pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest, index or config accepted (hostile input is bounded).
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// Validates digest syntax and a sane size.
    pub(crate) fn check(&self, what: &str, max_size: u64) -> Result<u64, RootfsError> {
        validate_digest(&self.digest).map_err(|r| RootfsError::malformed(what, r))?;
        let size = u64::try_from(self.size)
            .map_err(|_| RootfsError::malformed(what, format!("negative size {}", self.size)))?;
        if size > max_size {
            return Err(RootfsError::limit(
                format!("{what} ({} bytes)", size),
                format!("{max_size} bytes"),
            ));
        }
        Ok(size)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct PlatformJson {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest or index, whichever the bytes hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestOrIndex {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

impl ManifestOrIndex {
    pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<Self, RootfsError> {
        serde_json::from_slice(bytes).map_err(|e| RootfsError::malformed(what, e))
    }

    pub(crate) fn is_index(&self) -> bool {
        self.manifests.is_some()
            || matches!(
                self.media_type.as_deref(),
                Some(MT_OCI_INDEX | MT_DOCKER_LIST)
            )
    }

    /// Picks the manifest for `platform` from an index.
    pub(crate) fn select(
        &self,
        platform: &Platform,
        reference: &str,
    ) -> Result<Descriptor, RootfsError> {
        let manifests = self.manifests.as_deref().unwrap_or_default();
        let candidates: Vec<&Descriptor> = manifests
            .iter()
            .filter(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    p.os == platform.os
                        && p.architecture == platform.architecture
                        && (platform.variant.is_none()
                            || p.variant.is_none()
                            || p.variant == platform.variant)
                })
            })
            .collect();
        // Prefer an exact variant match when several qualify.
        let chosen = candidates
            .iter()
            .find(|d| d.platform.as_ref().and_then(|p| p.variant.clone()) == platform.variant)
            .or(candidates.first());
        match chosen {
            Some(d) => Ok((*d).clone()),
            None => Err(RootfsError::NoMatchingPlatform {
                reference: reference.to_string(),
                platform: platform.to_string(),
                available: manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The config and layers of an image manifest.
    pub(crate) fn image_parts(
        &self,
        what: &str,
    ) -> Result<(Descriptor, Vec<Descriptor>), RootfsError> {
        match (&self.config, &self.layers) {
            (Some(c), Some(l)) => Ok((c.clone(), l.clone())),
            _ => Err(RootfsError::malformed(
                what,
                "not an image manifest (no config or layers)",
            )),
        }
    }
}

/// The image config blob (only the parts used here).
#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub config: Option<ImageConfig>,
    #[serde(default)]
    pub rootfs: Option<RootfsJson>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct RootfsJson {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// How the image wants its process run, as recorded for the guest init at
/// `/etc/microagent/image-config.json`. Field names follow the OCI image
/// config; absent fields are omitted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `NAME=value` pairs.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Program and leading arguments.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or command when there is no entrypoint).
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// `user[:group]`, names or ids.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The signal that stops the process (e.g. `SIGTERM`).
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// Drops empty strings so "absent" has one spelling.
    pub(crate) fn normalised(mut self) -> Self {
        for s in [&mut self.working_dir, &mut self.user, &mut self.stop_signal] {
            if s.as_deref() == Some("") {
                *s = None;
            }
        }
        self
    }
}

/// An OS/architecture pair, e.g. `linux/amd64` or `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ...
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, RootfsError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(RootfsError::InvalidPlatform(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks `bytes` against a descriptor's digest and size.
pub(crate) fn verify_bytes(
    bytes: &[u8],
    digest: &str,
    size: Option<u64>,
    what: &str,
) -> Result<(), RootfsError> {
    if let Some(size) = size {
        if bytes.len() as u64 != size {
            return Err(RootfsError::DigestMismatch {
                what: what.to_string(),
                expected: format!("{size} bytes"),
                actual: format!("{} bytes", bytes.len()),
            });
        }
    }
    let actual = sha256_digest(bytes);
    if actual != digest {
        return Err(RootfsError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Reads all of `r`, refusing more than `max` bytes.
pub(crate) fn read_bounded(mut r: impl Read, max: u64, what: &str) -> Result<Vec<u8>, RootfsError> {
    let mut buf = Vec::new();
    (&mut r)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| RootfsError::io(format!("reading {what}"), e))?;
    if buf.len() as u64 > max {
        return Err(RootfsError::limit(what, format!("{max} bytes")));
    }
    Ok(buf)
}

/// A reader that hashes and counts what passes through it, and refuses to
/// deliver more than the expected size. [`VerifyingReader::finish`] drains
/// the rest and checks digest and size.
pub(crate) struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected_size: Option<u64>,
    expected_digest: Option<String>,
    what: String,
}

/// What may follow the end of a layer's tar stream (padding) before it is
/// treated as hostile.
const MAX_TRAILING_BYTES: u64 = 64 << 20;

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(
        inner: R,
        expected_digest: &str,
        expected_size: Option<u64>,
        what: String,
    ) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected_size,
            expected_digest: Some(expected_digest.to_string()),
            what,
        }
    }

    /// Counts but checks nothing (trusted or identity-less sources).
    pub(crate) fn unchecked(inner: R, what: String) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected_size: None,
            expected_digest: None,
            what,
        }
    }

    pub(crate) fn finish(mut self) -> Result<(), RootfsError> {
        let what = self.what.clone();
        let trailing = io::copy(
            &mut (&mut self).take(MAX_TRAILING_BYTES + 1),
            &mut io::sink(),
        )
        .map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                RootfsError::DigestMismatch {
                    what: self.what.clone(),
                    expected: format!("{} bytes", self.expected_size.unwrap_or(0)),
                    actual: "more".into(),
                }
            } else {
                RootfsError::io(format!("reading {what}"), e)
            }
        })?;
        if trailing > MAX_TRAILING_BYTES {
            return Err(RootfsError::limit(
                format!("data after the end of {}", self.what),
                format!("{MAX_TRAILING_BYTES} bytes"),
            ));
        }
        if let Some(size) = self.expected_size {
            if self.read != size {
                return Err(RootfsError::DigestMismatch {
                    what: self.what,
                    expected: format!("{size} bytes"),
                    actual: format!("{} bytes", self.read),
                });
            }
        }
        let Some(expected) = self.expected_digest else {
            return Ok(());
        };
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if actual != expected {
            return Err(RootfsError::DigestMismatch {
                what: self.what,
                expected,
                actual,
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.expected_size.is_some_and(|s| self.read > s) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is longer than its descriptor says", self.what),
            ));
        }
        if self.expected_digest.is_some() {
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/arm64/v8")
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/../x").is_err());
    }

    #[test]
    fn image_config_json_shape() {
        let c = ImageConfig {
            env: Some(vec!["A=1".into()]),
            cmd: Some(vec!["/bin/sh".into()]),
            working_dir: Some("".into()),
            ..Default::default()
        }
        .normalised();
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"Env":["A=1"],"Cmd":["/bin/sh"]}"#
        );
    }

    #[test]
    fn verifying_reader_catches_tampering() {
        let data = b"hello";
        let d = sha256_digest(data);
        let mut r = VerifyingReader::new(&data[..], &d, Some(5), "blob".into());
        io::copy(&mut r, &mut io::sink()).unwrap();
        r.finish().unwrap();
        let r = VerifyingReader::new(&b"hellO"[..], &d, Some(5), "blob".into());
        assert!(matches!(
            r.finish(),
            Err(RootfsError::DigestMismatch { .. })
        ));
        let r = VerifyingReader::new(&b"hello!"[..], &d, Some(5), "blob".into());
        assert!(matches!(
            r.finish(),
            Err(RootfsError::DigestMismatch { .. })
        ));
    }
}

//! Image references: registry names with docker's normalisation, and the
//! local transports (`oci-layout:`, `docker-archive:`, `rootfs-tar:`).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::RootfsError;

/// The registry that short names such as `alpine` refer to.
pub const DOCKER_HUB: &str = "docker.io";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An image in a registry.
    Registry(RegistryRef),
    /// An OCI image layout folder, optionally naming one of its tags
    /// (`org.opencontainers.image.ref.name`).
    OciLayout {
        /// The layout folder (holds `oci-layout`, `index.json`, `blobs/`).
        dir: PathBuf,
        /// The tag to pick; `None` means the layout's only manifest.
        tag: Option<String>,
    },
    /// A `docker save` tarball.
    DockerArchive {
        /// The tarball.
        file: PathBuf,
    },
    /// A plain root filesystem tarball (uncompressed, gzip or zstd).
    RootfsTar {
        /// The tarball.
        file: PathBuf,
    },
}

/// A fully normalised registry reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/alpine`).
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<hex>` when pinned by digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference as users write it.
    ///
    /// ```
    /// use vmkit_rootfs::ImageRef;
    /// let r = ImageRef::parse("alpine").unwrap();
    /// assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
    /// let r = ImageRef::parse("127.0.0.1:5000/team/app:v1").unwrap();
    /// assert_eq!(r.to_string(), "127.0.0.1:5000/team/app:v1");
    /// ```
    pub fn parse(input: &str) -> Result<ImageRef, RootfsError> {
        let bad = |reason: &str| RootfsError::InvalidReference {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(rest) = input.strip_prefix("oci-layout:") {
            if rest.is_empty() {
                return Err(bad("oci-layout: needs a folder"));
            }
            // A colon may belong to the folder name; only split off a tag
            // when the whole string is not itself an existing folder.
            if std::path::Path::new(rest).is_dir() {
                return Ok(ImageRef::OciLayout {
                    dir: rest.into(),
                    tag: None,
                });
            }
            if let Some((dir, tag)) = rest.rsplit_once(':') {
                if !dir.is_empty() && !tag.contains('/') {
                    if !valid_tag(tag) {
                        return Err(bad("invalid tag after the layout folder"));
                    }
                    return Ok(ImageRef::OciLayout {
                        dir: dir.into(),
                        tag: Some(tag.to_string()),
                    });
                }
            }
            return Ok(ImageRef::OciLayout {
                dir: rest.into(),
                tag: None,
            });
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(bad("docker-archive: needs a file"));
            }
            return Ok(ImageRef::DockerArchive { file: rest.into() });
        }
        if let Some(rest) = input.strip_prefix("rootfs-tar:") {
            if rest.is_empty() {
                return Err(bad("rootfs-tar: needs a file"));
            }
            return Ok(ImageRef::RootfsTar { file: rest.into() });
        }
        if let Some(rest) = input.strip_prefix("docker://") {
            return Self::parse(rest);
        }
        RegistryRef::parse(input).map(ImageRef::Registry)
    }

    /// The registry reference, if this is one.
    pub fn as_registry(&self) -> Option<&RegistryRef> {
        match self {
            ImageRef::Registry(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::OciLayout { dir, tag: None } => write!(f, "oci-layout:{}", dir.display()),
            ImageRef::OciLayout { dir, tag: Some(t) } => {
                write!(f, "oci-layout:{}:{t}", dir.display())
            }
            ImageRef::DockerArchive { file } => write!(f, "docker-archive:{}", file.display()),
            ImageRef::RootfsTar { file } => write!(f, "rootfs-tar:{}", file.display()),
        }
    }
}

impl std::str::FromStr for ImageRef {
    type Err = RootfsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl RegistryRef {
    /// Parses `[host[:port]/]repo[:tag][@sha256:hex]` with the
    /// distribution grammar and docker's normalisation, as
    /// [`oci_client::Reference`] implements them: the first path component
    /// is a host only if it contains `.` or `:` or is `localhost`; Docker
    /// Hub names without a `/` live under `library/`. On top of that grammar
    /// a bracketed IPv6 host (`[::1]:5000/app`) is accepted, and only
    /// `sha256:` digests in lowercase hex and ASCII tags are: both end up
    /// in file names of the image store.
    pub fn parse(input: &str) -> Result<RegistryRef, RootfsError> {
        let bad = |reason: &str| RootfsError::InvalidReference {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.len() > 4096 {
            return Err(bad("longer than 4096 bytes"));
        }
        // The grammar has no IPv6 hosts: parse with a stand-in host, then
        // put the real one back.
        const STAND_IN: &str = "ipv6-host.invalid";
        let (ipv6_host, parsed) = match input.strip_prefix('[') {
            Some(rest) => {
                let (addr, after) = rest
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed '[' in the registry host"))?;
                if addr.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(bad("invalid IPv6 registry host"));
                }
                let (port, path) = match after.strip_prefix(':') {
                    Some(p) => p.split_once('/').map(|(port, path)| (Some(port), path)),
                    None => after.strip_prefix('/').map(|path| (None, path)),
                }
                .ok_or_else(|| bad("a registry host must be followed by /repository"))?;
                let host = match port {
                    Some(port) => format!("[{addr}]:{port}"),
                    None => format!("[{addr}]"),
                };
                let stand_in = match port {
                    Some(port) => format!("{STAND_IN}:{port}/{path}"),
                    None => format!("{STAND_IN}/{path}"),
                };
                (
                    Some(host),
                    oci_client::Reference::try_from(stand_in.as_str()),
                )
            }
            None => (None, oci_client::Reference::try_from(input)),
        };
        let parsed = parsed.map_err(|e| bad(&e.to_string()))?;
        if let Some(d) = parsed.digest() {
            validate_digest(d).map_err(|r| bad(&r))?;
        }
        if let Some(t) = parsed.tag() {
            if !valid_tag(t) {
                return Err(bad(
                    "invalid tag (ASCII letters, digits, '_', '.', '-'; at most 128)",
                ));
            }
        }
        let registry = match ipv6_host {
            Some(host) => host,
            None => parsed.registry().to_string(),
        };
        Ok(RegistryRef {
            registry,
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_owned),
            digest: parsed.digest().map(str::to_owned),
        })
    }

    /// True for registries on this machine, which are spoken to over plain
    /// HTTP (as docker does for loopback).
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The same image pinned to `digest`, keeping the tag for display.
    pub fn with_digest(&self, digest: &str) -> RegistryRef {
        RegistryRef {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The host part of `host[:port]` (IPv6 brackets removed).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks `sha256:<64 lowercase hex>`, the only algorithm accepted.
pub(crate) fn validate_digest(d: &str) -> Result<(), String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!(
            "unsupported digest {d:?} (only sha256:<hex> is accepted)"
        ));
    };
    if hex.len() != 64
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(format!("malformed digest {d:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match ImageRef::parse(s).unwrap() {
            ImageRef::Registry(r) => r,
            other => panic!("not a registry ref: {other:?}"),
        }
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(reg("alpine").to_string(), "docker.io/library/alpine:latest");
        assert_eq!(
            reg("alpine:3.19").to_string(),
            "docker.io/library/alpine:3.19"
        );
        assert_eq!(reg("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(
            reg("index.docker.io/user/app").to_string(),
            "docker.io/user/app:latest"
        );
        assert_eq!(reg("ghcr.io/o/r/x:1").registry, "ghcr.io");
        assert_eq!(reg("localhost/app").registry, "localhost");
        let r = reg("127.0.0.1:5000/team/app:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "team/app")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_loopback());
        assert!(reg("localhost:5000/a").is_loopback());
        assert!(reg("[::1]:5000/a").is_loopback());
        assert!(!reg("ghcr.io/a").is_loopback());
        assert!(!reg("alpine").is_loopback());
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = reg(&format!("127.0.0.1:5000/app@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        let r = reg(&format!("app:v2@{d}"));
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert!(ImageRef::parse("app@sha256:xyz").is_err());
        assert!(ImageRef::parse(&format!("app@md5:{}", "a".repeat(32))).is_err());
    }

    #[test]
    fn rejects_bad_names() {
        let long_digest = format!("app@sha512:{}", "a".repeat(128));
        let upper_digest = format!("app@sha256:{}", "A".repeat(64));
        for s in [
            "",
            "UPPER",
            "a//b",
            "a:b:c",
            "-a",
            "a:",
            "a b",
            "app:-x",
            "app:t\u{e9}g",
            "[::1/app",
            "[nothost]:5000/app",
            "[::1]:5000",
            &long_digest,
            &upper_digest,
        ] {
            assert!(ImageRef::parse(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn local_transports() {
        assert_eq!(
            ImageRef::parse("oci-layout:/no/such/dir:v1").unwrap(),
            ImageRef::OciLayout {
                dir: "/no/such/dir".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci-layout:/no/such/dir").unwrap(),
            ImageRef::OciLayout {
                dir: "/no/such/dir".into(),
                tag: None
            }
        );
        let tmp = tempfile::tempdir().unwrap();
        let odd = tmp.path().join("with:colon");
        std::fs::create_dir(&odd).unwrap();
        assert_eq!(
            ImageRef::parse(&format!("oci-layout:{}", odd.display())).unwrap(),
            ImageRef::OciLayout {
                dir: odd,
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:/x.tar").unwrap(),
            ImageRef::DockerArchive {
                file: "/x.tar".into()
            }
        );
        assert_eq!(
            ImageRef::parse("rootfs-tar:/x.tar.zst").unwrap(),
            ImageRef::RootfsTar {
                file: "/x.tar.zst".into()
            }
        );
    }
}

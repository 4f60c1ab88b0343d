//! Registry credentials: docker's `config.json` shape, read from
//! `REGISTRY_AUTH_FILE` or `~/.microagent/auth.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::RootfsError;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The auth file in effect: `$REGISTRY_AUTH_FILE`, else
/// `~/.microagent/auth.json`.
pub fn auth_file_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".microagent").join("auth.json"))
}

/// Looks up credentials for `registry` (`host[:port]`). A missing file
/// means anonymous access; a malformed one is an error.
pub fn credentials_for(registry: &str) -> Result<Option<Credentials>, RootfsError> {
    match auth_file_path() {
        Some(path) => credentials_from_file(&path, registry),
        None => Ok(None),
    }
}

pub(crate) fn credentials_from_file(
    path: &std::path::Path,
    registry: &str,
) -> Result<Option<Credentials>, RootfsError> {
    let path = path.to_path_buf();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RootfsError::AuthFile {
                path,
                reason: e.to_string(),
            })
        }
    };
    let bad = |reason: String| RootfsError::AuthFile {
        path: path.clone(),
        reason,
    };
    if bytes.len() > 1 << 20 {
        return Err(bad("larger than 1 MiB".into()));
    }
    let file: AuthFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == crate::reference::DOCKER_HUB {
        keys.extend([
            "index.docker.io".to_string(),
            "https://index.docker.io/v1/".to_string(),
        ]);
    }
    let entry = file.auths.iter().find(|(k, _)| {
        let k = k.trim_end_matches('/');
        keys.iter().any(|want| {
            k == want
                || k.strip_suffix("/v1").is_some_and(|s| s == want)
                || k.strip_suffix("/v2").is_some_and(|s| s == want)
        })
    });
    let Some((_, entry)) = entry else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("auth for {registry} is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("auth for {registry} is not UTF-8")))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("auth for {registry} is not user:password")))?;
        return Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_style_auth_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(&f, format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{b64}"}},"https://ghcr.io":{{"username":"bob","password":"pw"}}}}}}"#)).unwrap();
        let c = credentials_from_file(&f, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cret")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = credentials_from_file(&f, "ghcr.io").unwrap().unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(credentials_from_file(&f, "other.io").unwrap(), None);
        assert_eq!(
            credentials_from_file(&dir.path().join("missing"), "x").unwrap(),
            None
        );
        std::fs::write(&f, "{not json").unwrap();
        assert!(matches!(
            credentials_from_file(&f, "x"),
            Err(RootfsError::AuthFile { .. })
        ));
    }
}

//! What commands run with: the image's config (written by the rootfs builder
//! at [`IMAGE_CONFIG_PATH`]), the boot spec's overrides, the request's
//! overrides, and user names resolved against the guest's `/etc/passwd`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Where the rootfs builder leaves the image's OCI config.
pub const IMAGE_CONFIG_PATH: &str = "/etc/microagent/image-config.json";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Refuse config and account files larger than this: they are read whole.
const MAX_FILE: u64 = 4 << 20;

/// The part of an OCI image config the guest uses. Every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `KEY=value` strings.
    #[serde(default, rename = "Env")]
    pub env: Option<Vec<String>>,
    /// Entrypoint (not used by `--exec`, kept for callers).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default command (not used by `--exec`, kept for callers).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Default working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Default user.
    #[serde(default)]
    pub user: Option<String>,
    /// Signal for a polite stop (e.g. `SIGTERM`).
    #[serde(default)]
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// Reads the image config; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<ImageConfig, String> {
        match read_small(path) {
            Ok(None) => Ok(ImageConfig::default()),
            Ok(Some(text)) => {
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) => Err(e),
        }
    }
}

fn read_small(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = String::new();
    f.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} bytes", path.display()));
    }
    Ok(Some(text))
}

/// Environment, working directory and user every command starts from: the
/// image's values overridden by the boot spec's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// User spec.
    pub user: Option<String>,
    /// Where `/etc/passwd` and `/etc/group` live (`/` in the guest; tests
    /// point elsewhere).
    pub root: std::path::PathBuf,
}

impl Defaults {
    /// Layers the boot spec's env/cwd/user over the image's.
    pub fn new(
        image: &ImageConfig,
        env: &BTreeMap<String, String>,
        cwd: Option<&str>,
        user: Option<&str>,
    ) -> Defaults {
        let mut merged = BTreeMap::new();
        merged.insert("PATH".to_string(), DEFAULT_PATH.to_string());
        for kv in image.env.iter().flatten() {
            if let Some((k, v)) = kv.split_once('=') {
                if !k.is_empty() && !kv.contains('\0') {
                    merged.insert(k.to_string(), v.to_string());
                }
            }
        }
        merged.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        Defaults {
            env: merged,
            cwd: cwd
                .map(str::to_string)
                .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty())),
            user: user
                .map(str::to_string)
                .or_else(|| image.user.clone().filter(|u| !u.is_empty())),
            root: "/".into(),
        }
    }
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<u32>,
    /// Home directory from `/etc/passwd`, if the user is listed.
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    let text = read_small(&root.join("etc/passwd"))
        .ok()
        .flatten()
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then_some(())?;
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// (name, gid, members)
fn groups(root: &Path) -> Vec<(String, u32, Vec<String>)> {
    let text = read_small(&root.join("etc/group"))
        .ok()
        .flatten()
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then_some(())?;
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves `user`, `uid`, `user:group`, `uid:gid` (Docker's forms) against
/// `<root>/etc/passwd` and `<root>/etc/group`. A numeric uid need not exist.
pub fn resolve_user(spec: &str, root: &Path) -> Result<Creds, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("user {spec:?}: empty user name"));
    }
    let users = passwd(root);
    let entry = match user.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            users
                .iter()
                .find(|e| e.name == user)
                .ok_or_else(|| format!("user {user:?} not found in /etc/passwd"))?,
        ),
    };
    let uid = match entry {
        Some(e) => e.uid,
        None => user.parse::<u32>().map_err(|e| e.to_string())?,
    };
    let all_groups = groups(root);
    let gid = match group {
        Some(g) if !g.is_empty() => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|(name, _, _)| name == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| format!("group {g:?} not found in /etc/group"))?,
        },
        _ => entry.map_or(0, |e| e.gid),
    };
    let mut groups = vec![gid];
    if let Some(e) = entry {
        for (_, g, members) in &all_groups {
            if members.contains(&e.name) && !groups.contains(g) {
                groups.push(*g);
            }
        }
    }
    Ok(Creds {
        uid,
        gid,
        groups,
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_parses_with_missing_fields() {
        let c: ImageConfig =
            serde_json::from_str(r#"{"Env":["A=1","B=x=y"],"WorkingDir":"/w","Extra":1}"#).unwrap();
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        let d = Defaults::new(&c, &[("A".into(), "2".into())].into(), None, None);
        assert_eq!(d.env["A"], "2");
        assert_eq!(d.env["B"], "x=y");
        assert!(d.env["PATH"].contains("/bin"));
        assert_eq!(d.cwd.as_deref(), Some("/w"));
        assert_eq!(
            ImageConfig::load(Path::new("/nonexistent")).unwrap(),
            ImageConfig::default()
        );
    }

    #[test]
    fn users_resolve_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1001::/home/agent:/bin/sh\nbroken\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nagent:x:1001:\nwheel:x:10:agent\n",
        )
        .unwrap();
        let r = dir.path();
        let a = resolve_user("agent", r).unwrap();
        assert_eq!(
            (a.uid, a.gid, a.groups.clone()),
            (1000, 1001, vec![1001, 10])
        );
        assert_eq!(a.home.as_deref(), Some("/home/agent"));
        assert_eq!(resolve_user("1000:wheel", r).unwrap().gid, 10);
        let n = resolve_user("4242:7", r).unwrap();
        assert_eq!((n.uid, n.gid, n.home), (4242, 7, None));
        assert!(resolve_user("nobody-here", r).is_err());
        assert!(resolve_user("agent:nogroup", r).is_err());
    }
}

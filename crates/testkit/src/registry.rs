//! A real OCI registry on loopback: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1 with a free port and its storage in
//! a temp folder, stopped when dropped.
//!
//! ```no_run
//! let reg = vmkit_testkit::registry::Registry::start();
//! reg.push_oci_layout("/tmp/layout".as_ref(), "latest", "demo/busybox:latest");
//! println!("{}/demo/busybox:latest", reg.addr());
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry binary installed by `scripts/setup`.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; killed on drop.
pub struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry without authentication.
    ///
    /// # Panics
    ///
    /// When `docker-registry` is missing or does not answer within 30 s:
    /// tests never skip, `scripts/setup` installs it.
    pub fn start() -> Registry {
        Self::start_with(None)
    }

    /// Starts a registry that requires HTTP basic auth, with `htpasswd`
    /// the contents of an htpasswd file (bcrypt entries).
    pub fn start_with_htpasswd(htpasswd: &str) -> Registry {
        Self::start_with(Some(htpasswd))
    }

    fn start_with(htpasswd: Option<&str>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: run scripts/setup (installs Debian's docker-registry)"
        );
        let mut last_err = String::new();
        // A free port can be taken between probing and binding; retry.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("microagent-registry-")
                .tempdir()
                .expect("temp dir");
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let storage = dir.path().join("storage");
            std::fs::create_dir(&storage).expect("storage dir");
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            );
            if let Some(h) = htpasswd {
                let hf = dir.path().join("htpasswd");
                std::fs::write(&hf, h).expect("htpasswd file");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: microagent-test\n    path: {}\n",
                    hf.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {REGISTRY_BIN}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!(
                        "exited with {status}: {}",
                        std::fs::read_to_string(dir.path().join("registry.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if let Some(code) = http_status(&addr, "/v2/") {
                    if code == 200 || code == 401 {
                        return Registry { child, addr, dir };
                    }
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("docker-registry did not answer on {addr} within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("docker-registry would not start: {last_err}");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The registry's storage folder (tests may corrupt blobs in it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Pushes the image tagged `tag` in an OCI layout to `repo_tag`
    /// (`repo:tag`) with skopeo, as a user would. Returns the pushed
    /// manifest digest.
    pub fn push_oci_layout(&self, layout: &Path, tag: &str, repo_tag: &str) -> String {
        self.push_oci_layout_as(layout, tag, repo_tag, None)
    }

    /// [`Registry::push_oci_layout`] with `user:password` credentials.
    pub fn push_oci_layout_as(
        &self,
        layout: &Path,
        tag: &str,
        repo_tag: &str,
        creds: Option<&str>,
    ) -> String {
        let digest_file = self.dir.path().join("pushed.digest");
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--all",
            "--quiet",
            "--insecure-policy",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ])
        .arg("--digestfile")
        .arg(&digest_file);
        if let Some(c) = creds {
            cmd.arg("--dest-creds").arg(c);
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()
            .expect("running skopeo (installed by scripts/setup)");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&digest_file)
            .expect("skopeo digest file")
            .trim()
            .to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An htpasswd line (bcrypt, as the registry requires) made with
/// apache2-utils' `htpasswd`.
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbB", user, password])
        .output()
        .expect("running htpasswd (apache2-utils, installed by scripts/setup)");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string() + "\n"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
}

/// The HTTP status of `GET path`, or `None` if nothing answers.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

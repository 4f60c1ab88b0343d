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
    /// For token auth: the token server's address.
    token_server: Option<String>,
}

/// How clients must authenticate.
enum Auth<'a> {
    None,
    Htpasswd(&'a str),
    /// Bearer tokens from a token server that grants pull and push on these
    /// repositories to anyone (Docker Hub's anonymous flow).
    Token(&'a [&'a str]),
}

impl Registry {
    /// Starts a registry without authentication.
    ///
    /// # Panics
    ///
    /// When `docker-registry` is missing or does not answer within 30 s:
    /// tests never skip, `scripts/setup` installs it.
    pub fn start() -> Registry {
        Self::start_with(Auth::None)
    }

    /// Starts a registry that requires HTTP basic auth, with `htpasswd`
    /// the contents of an htpasswd file (bcrypt entries).
    pub fn start_with_htpasswd(htpasswd: &str) -> Registry {
        Self::start_with(Auth::Htpasswd(htpasswd))
    }

    /// Starts a registry that requires bearer tokens, and a token server
    /// handing out tokens (RS256 JWTs signed by a throwaway key) for
    /// `repositories` to anonymous clients: the flow Docker Hub uses.
    pub fn start_with_token_auth(repositories: &[&str]) -> Registry {
        Self::start_with(Auth::Token(repositories))
    }

    /// The token server's address, for registries started with token auth.
    pub fn token_server(&self) -> Option<&str> {
        self.token_server.as_deref()
    }

    fn start_with(auth: Auth<'_>) -> Registry {
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
            let mut token_server = None;
            match &auth {
                Auth::None => {}
                Auth::Htpasswd(h) => {
                    let hf = dir.path().join("htpasswd");
                    std::fs::write(&hf, h).expect("htpasswd file");
                    config.push_str(&format!(
                        "auth:\n  htpasswd:\n    realm: microagent-test\n    path: {}\n",
                        hf.display()
                    ));
                }
                Auth::Token(repos) => {
                    let (addr, cert) = token::serve(dir.path(), repos);
                    config.push_str(&format!(
                        "auth:\n  token:\n    realm: http://{addr}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                        token::SERVICE,
                        token::ISSUER,
                        cert.display()
                    ));
                    token_server = Some(addr);
                }
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
                        return Registry {
                            child,
                            addr,
                            dir,
                            token_server,
                        };
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

    /// Requests the token server answered (request lines), oldest first.
    pub fn token_requests(&self) -> Vec<String> {
        token::requests(self.dir.path())
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

/// A minimal token server for the registry's token auth.
mod token {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;

    pub const SERVICE: &str = "microagent-test-registry";
    pub const ISSUER: &str = "microagent-test-issuer";

    fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Starts the server; returns its address and the certificate the
    /// registry must trust.
    pub fn serve(dir: &Path, repos: &[&str]) -> (String, PathBuf) {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.crt",
                "-days",
                "2",
                "-subj",
                "/CN=microagent-test-token",
            ],
            dir,
        );
        let der = openssl(&["x509", "-in", "token.crt", "-outform", "DER"], dir);
        let header =
            serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [STANDARD.encode(der)]});
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let access: Vec<serde_json::Value> = repos
            .iter()
            .map(|r| serde_json::json!({"type": "repository", "name": r, "actions": ["pull", "push"]}))
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "", "aud": SERVICE,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": "microagent-test",
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        std::fs::write(dir.join("token.input"), &signing_input).expect("token input");
        let sig = openssl(
            &["dgst", "-sha256", "-sign", "token.key", "token.input"],
            dir,
        );
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig));
        let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 3600})
            .to_string();

        let listener = TcpListener::bind("127.0.0.1:0").expect("token server port");
        let addr = listener.local_addr().expect("addr").to_string();
        let log = dir.join("token-requests.log");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                // Drain the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                {
                    let _ = f.write_all(request_line.as_bytes());
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (addr, dir.join("token.crt"))
    }

    /// The request lines the token server has answered.
    pub fn requests(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("token-requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

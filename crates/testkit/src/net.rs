//! The network tests' stand-in for the internet: a test host in a network
//! namespace this harness creates, and the servers it runs.
//!
//! - Namespace `ma-testhost`, joined to the host by the veth pair
//!   `ma-th0` (host, 198.51.100.1/30) - `ma-th1` (namespace,
//!   198.51.100.2/30). The namespace also holds 203.0.113.10 (the test
//!   host, outside every refused range), 10.0.0.1 and 169.254.169.254 (the
//!   addresses that must be refused), each a /32 routed into it from the
//!   host, so even a policy bug sends nothing off this machine.
//! - Names in the host's `/etc/hosts` (marked, replaced idempotently):
//!   `pkg.test` and `other.test` -> 203.0.113.10, `private.test` ->
//!   10.0.0.1, `rebind.test` -> 127.0.0.1.
//! - Servers in the namespace, on all its addresses: Python's HTTP server
//!   on port 80 over a folder holding `x` and a PEP 503 package index
//!   (`/simple/`) with one small wheel built here (`magtest`), and
//!   `openssl s_server` on 443 with a self-signed certificate.
//!
//! Needs root (it is the CI's user). Set up once per test process, under a
//! machine-wide lock held until the process exits; the servers die with
//! it (PR_SET_PDEATHSIG from a thread that lives as long as the process).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// The namespace.
pub const NETNS: &str = "ma-testhost";
/// The test host's address: outside every refused range.
pub const TEST_HOST_IP: &str = "203.0.113.10";
/// A private address routed into the namespace (must be refused).
pub const PRIVATE_IP: &str = "10.0.0.1";
/// The cloud metadata address, routed into the namespace (must be refused).
pub const METADATA_IP: &str = "169.254.169.254";
/// The test host's allowed name.
pub const PKG_NAME: &str = "pkg.test";
/// Another name of the same host.
pub const OTHER_NAME: &str = "other.test";
/// A name whose `/etc/hosts` entry is a private address.
pub const PRIVATE_NAME: &str = "private.test";
/// A name whose `/etc/hosts` entry is 127.0.0.1 (DNS rebinding).
pub const REBIND_NAME: &str = "rebind.test";
/// The wheel in the package index, and what its module holds.
pub const WHEEL_PACKAGE: &str = "magtest";
/// `magtest.VALUE`.
pub const WHEEL_VALUE: &str = "from-the-test-host";
/// The body of `http://<test host>/x`.
pub const FILE_BODY: &str = "hello from the test host\n";

const HOSTS_MARKER: &str = "# microagent-testhost";
const HOST_VETH: &str = "ma-th0";
const NS_VETH: &str = "ma-th1";

/// The running test host.
pub struct TestHost {
    /// The folder the HTTP servers serve (holds `x` and `simple/`).
    pub www: PathBuf,
    _lock: File,
}

/// The test host, set up on first use in this process.
pub fn test_host() -> &'static TestHost {
    static HOST: OnceLock<TestHost> = OnceLock::new();
    HOST.get_or_init(setup)
}

/// `microagent-net`, built by cargo on first use in this process (a test
/// of the CLI does not build another package's binaries by itself).
pub fn helper_binary() -> PathBuf {
    crate::process::cargo_binary("vmkit-net", "microagent-net")
}

/// A server on the host's own loopback (for `host:PORT` rules): Python's
/// HTTP server on 127.0.0.1 at a free port over `www`. Killed on drop.
pub struct LoopbackServer {
    /// Its port.
    pub port: u16,
    child: Child,
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LoopbackServer {
    /// Starts it and returns once it listens (it prints its port then).
    pub fn start(www: &Path) -> LoopbackServer {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(www)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server said {line:?}"));
        LoopbackServer { port, child }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn in_ns(args: &[&str]) {
    run(Command::new("ip").args(["netns", "exec", NETNS]).args(args));
}

fn setup() -> TestHost {
    // One test host per machine at a time: another test process waits.
    let lock = File::create("/tmp/microagent-testhost.lock").unwrap();
    // SAFETY: flock(2) on a descriptor this function owns.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(
        locked,
        0,
        "locking the test host: {}",
        std::io::Error::last_os_error()
    );
    tear_down_leftovers();
    ip(&["netns", "add", NETNS]);
    ip(&[
        "link", "add", HOST_VETH, "type", "veth", "peer", "name", NS_VETH,
    ]);
    ip(&["link", "set", NS_VETH, "netns", NETNS]);
    ip(&["addr", "add", "198.51.100.1/30", "dev", HOST_VETH]);
    ip(&["link", "set", HOST_VETH, "up"]);
    in_ns(&["ip", "link", "set", "lo", "up"]);
    in_ns(&["ip", "addr", "add", "198.51.100.2/30", "dev", NS_VETH]);
    for addr in [TEST_HOST_IP, PRIVATE_IP, METADATA_IP] {
        in_ns(&["ip", "addr", "add", &format!("{addr}/32"), "dev", NS_VETH]);
        // Routes on the veth vanish with it: nothing to clean up by hand.
        ip(&[
            "route",
            "replace",
            &format!("{addr}/32"),
            "via",
            "198.51.100.2",
        ]);
    }
    in_ns(&["ip", "link", "set", NS_VETH, "up"]);
    in_ns(&["ip", "route", "add", "default", "via", "198.51.100.1"]);
    write_hosts_entries();

    let www = std::env::temp_dir().join(format!("microagent-testhost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&www);
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("x"), FILE_BODY).unwrap();
    build_index(&www);
    make_certificate(&www);
    start_servers(&www);
    TestHost { www, _lock: lock }
}

/// A namespace from an earlier process: its servers killed, it removed.
fn tear_down_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", NETNS]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) with a pid from `ip netns pids`.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    let _ = Command::new("ip").args(["link", "del", HOST_VETH]).output();
}

/// Replaces this harness's `/etc/hosts` lines (written in place: the file
/// may be a bind mount that a rename could not replace).
fn write_hosts_entries() {
    let old = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| !l.ends_with(HOSTS_MARKER))
        .flat_map(|l| [l, "\n"])
        .collect();
    for (addr, names) in [
        (TEST_HOST_IP, format!("{PKG_NAME} {OTHER_NAME}")),
        (PRIVATE_IP, PRIVATE_NAME.to_string()),
        ("127.0.0.1", REBIND_NAME.to_string()),
    ] {
        text.push_str(&format!("{addr}\t{names}\t{HOSTS_MARKER}\n"));
    }
    if text != old {
        std::fs::write("/etc/hosts", text).unwrap();
    }
}

/// A PEP 503 index with one pure-Python wheel, built with Python's zipfile
/// (a wheel is a zip with METADATA, WHEEL and RECORD).
fn build_index(www: &Path) {
    let script = format!(
        r#"
import base64, hashlib, os, sys, zipfile
www, pkg, value = sys.argv[1], "{WHEEL_PACKAGE}", "{WHEEL_VALUE}"
name = f"{{pkg}}-1.0-py3-none-any.whl"
files = {{
    f"{{pkg}}/__init__.py": f"VALUE = {{value!r}}\n",
    f"{{pkg}}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {{pkg}}\nVersion: 1.0\n",
    f"{{pkg}}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: microagent-testkit\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}}
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{{p}},{{digest(c.encode())}},{{len(c.encode())}}\n" for p, c in files.items())
record += f"{{pkg}}-1.0.dist-info/RECORD,,\n"
os.makedirs(f"{{www}}/files", exist_ok=True)
os.makedirs(f"{{www}}/simple/{{pkg}}", exist_ok=True)
with zipfile.ZipFile(f"{{www}}/files/{{name}}", "w") as z:
    for p, c in files.items():
        z.writestr(p, c)
    z.writestr(f"{{pkg}}-1.0.dist-info/RECORD", record)
sha = hashlib.sha256(open(f"{{www}}/files/{{name}}", "rb").read()).hexdigest()
open(f"{{www}}/simple/index.html", "w").write(f'<html><body><a href="{{pkg}}/">{{pkg}}</a></body></html>\n')
open(f"{{www}}/simple/{{pkg}}/index.html", "w").write(
    f'<html><body><a href="../../files/{{name}}#sha256={{sha}}">{{name}}</a></body></html>\n')
"#
    );
    run(Command::new("python3").arg("-c").arg(script).arg(www));
}

fn make_certificate(www: &Path) {
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN={PKG_NAME}")])
        .arg("-keyout")
        .arg(www.join("key.pem"))
        .arg("-out")
        .arg(www.join("cert.pem"))
        .stdout(Stdio::null()));
}

/// Starts the servers from a thread that never ends, so that their
/// PR_SET_PDEATHSIG (tied to the spawning thread) fires only when this
/// process exits; returns once both accept connections.
fn start_servers(www: &Path) {
    let (tx, rx) = mpsc::channel();
    let www = www.to_owned();
    std::thread::spawn(move || {
        let http = spawn_in_ns(
            Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    "80",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                ])
                .arg(&www),
        );
        let tls = spawn_in_ns(
            Command::new("openssl")
                .args(["s_server", "-quiet", "-www", "-accept", "443"])
                .arg("-cert")
                .arg(www.join("cert.pem"))
                .arg("-key")
                .arg(www.join("key.pem")),
        );
        tx.send(()).unwrap();
        let _keep = (http, tls);
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap();
    for port in [80, 443] {
        wait_listening(format!("{TEST_HOST_IP}:{port}").parse().unwrap());
    }
}

fn spawn_in_ns(cmd: &mut Command) -> Child {
    let mut ns = Command::new("ip");
    ns.args(["netns", "exec", NETNS])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it runs in the child before exec.
    unsafe {
        ns.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    ns.spawn().unwrap_or_else(|e| panic!("{ns:?}: {e}"))
}

/// Connects until the server answers: its readiness is the event.
fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "test host server {addr} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Debian image of the agent chore (python3, pip, curl), made once by
/// `scripts/debian-agent-image` and cached; returns its `--image` value.
pub fn debian_agent_image() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/debian-agent-image"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/debian-agent-image");
    assert!(out.status.success(), "scripts/debian-agent-image failed");
    let path = String::from_utf8(out.stdout).unwrap();
    format!("rootfs-tar:{}", path.trim())
}

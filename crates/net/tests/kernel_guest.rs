//! The helper binary with a real Linux TCP/IP stack as the guest: the
//! helper opens a TAP device, the test moves it into a network namespace
//! it creates and configures it as the guest's eth0 (10.0.2.15/24, default
//! route via 10.0.2.2, resolv.conf -> 10.0.2.2). That namespace has no other
//! way out, so every packet the "guest" sends, including those to refused
//! addresses, goes to the stack; allowed flows reach only loopback servers
//! of this test. Needs root (CI runs as root), iproute2 and curl.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command};

use common::{start_helper, terminate};

struct Guest {
    ns: String,
    helper: Child,
    dir: tempfile::TempDir,
}

impl Guest {
    /// Starts the helper with `policy` (JSON) and builds the namespace.
    fn start(policy: &str) -> Guest {
        let id = std::process::id() % 100_000;
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 1000;
        let ns = format!("mnet{id}-{unique}");
        let tap = format!("mt{id}{unique}");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("net.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"frontend":{{"kind":"tap","name":"{tap}"}},"auditPath":{:?},"policy":{policy}}}"#,
                dir.path().join("egress.jsonl").to_str().unwrap()
            ),
        )
        .unwrap();
        let helper = start_helper(&config);
        run(&["ip", "netns", "add", &ns]);
        let netns_etc = format!("/etc/netns/{ns}");
        std::fs::create_dir_all(&netns_etc).unwrap();
        std::fs::write(format!("{netns_etc}/resolv.conf"), "nameserver 10.0.2.2\n").unwrap();
        run(&["ip", "link", "set", &tap, "netns", &ns]);
        let guest = Guest { ns, helper, dir };
        guest.exec(&["ip", "link", "set", "lo", "up"]);
        guest.exec(&["ip", "link", "set", &tap, "address", "52:54:00:12:34:56"]);
        guest.exec(&["ip", "addr", "add", "10.0.2.15/24", "dev", &tap]);
        guest.exec(&["ip", "link", "set", &tap, "up"]);
        guest.exec(&["ip", "route", "add", "default", "via", "10.0.2.2"]);
        guest
    }

    fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.ns];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Runs in the namespace; returns (success, stdout).
    fn try_exec(&self, argv: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(argv)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("egress.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.ns));
        terminate(&self.helper);
        let _ = self.helper.wait();
    }
}

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback HTTP server answering every request with `size` bytes.
fn http_server(size: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n");
                let chunk = vec![b'x'; 64 << 10];
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if conn.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    port
}

#[test]
fn a_linux_guest_reaches_allowed_host_services_and_nothing_else() {
    let size = 8 << 20;
    let port = http_server(size);
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let guest = Guest::start(&format!(r#"{{"allow":["host:{port}"]}}"#));

    // DNS: the gateway's own name.
    let hosts = guest.exec(&["getent", "ahostsv4", "host.microagent.internal"]);
    assert!(hosts.starts_with("10.0.2.2"), "{hosts}");

    // The allowed host service, through the name.
    let url = format!("http://host.microagent.internal:{port}/x");
    let got = guest.exec(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &url,
    ]);
    assert_eq!(got, size.to_string());

    // Refused: another host port, the host's loopback, private and metadata
    // addresses (all routed into the namespace, answered by the stack).
    let host_ip = vmkit_net::policy::host_addresses()
        .into_iter()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .expect("the host has an address");
    for url in [
        format!("http://10.0.2.2:{closed}/"),
        format!("http://{host_ip}:{port}/"),
        "http://10.0.0.1/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let (ok, _) = guest.try_exec(&["curl", "-sS", "--max-time", "10", &url]);
        assert!(!ok, "{url} must fail");
    }
    let audit = guest.audit();
    let allowed = audit
        .iter()
        .find(|r| r["decision"] == "allow" && r["proto"] == "tcp")
        .expect("allow record");
    assert_eq!(allowed["dst"], format!("10.0.2.2:{port}"));
    assert!(allowed["bytesIn"].as_u64().unwrap() >= size as u64);
    let host_dst = format!("{host_ip}:{port}");
    for dst in ["10.0.0.1:80", "169.254.169.254:80", &host_dst] {
        assert!(
            audit
                .iter()
                .any(|r| r["decision"] == "deny" && r["dst"] == dst),
            "no deny for {dst}: {audit:?}"
        );
    }
}

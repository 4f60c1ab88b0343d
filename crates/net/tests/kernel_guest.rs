//! The helper binary with Firecracker's TAP and a real Linux TCP/IP stack
//! as the guest. The helper creates the TAP; the test then opens it the
//! way Firecracker does (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, a 12-byte vnet header, checksum offload on) and plays
//! Firecracker's virtio-net device: it copies frames between that fd and a
//! second TAP, the guest's eth0, in a network namespace it creates
//! (10.0.2.15/24, default route via 10.0.2.2, resolv.conf -> 10.0.2.2).
//! The same guest also runs behind Apple VF's link: a datagram socket
//! bound to its own path and connected to the helper's datagram frontend,
//! as the Swift driver gives `VZFileHandleNetworkDeviceAttachment`.
//! That namespace has no other way out, so every packet the "guest" sends,
//! including those to refused addresses, goes to the stack; allowed flows
//! reach only loopback servers of this test. Needs root (CI runs as root),
//! iproute2, nftables, curl and socat.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command};

use common::{start_helper, terminate};

/// Firecracker's vnet header: `struct virtio_net_hdr_v1`.
const FC_VNET_HDR: usize = 12;

struct Guest {
    ns: String,
    tap: String,
    helper: Child,
    dir: tempfile::TempDir,
    pump: Option<(OwnedFd, std::thread::JoinHandle<()>)>,
}

/// Opens `/dev/net/tun` and attaches to TAP `name` with `flags`.
fn open_tap(name: &str, flags: libc::c_int) -> File {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut req = IfReq {
        name: [0; 16],
        flags: flags as libc::c_short,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads/writes a 40-byte `struct ifreq`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), 0x4004_54ca, &mut req) };
    assert!(
        rc == 0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}

/// Opens the helper's TAP as Firecracker's `Tap::open_named` and its
/// device activation do.
fn open_like_firecracker(name: &str) -> File {
    let tap = open_tap(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    let size: libc::c_int = FC_VNET_HDR as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int; TUNSETOFFLOAD takes flags by value.
    unsafe {
        assert_eq!(libc::ioctl(tap.as_raw_fd(), 0x4004_54d8, &size), 0);
        // TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6: what a guest that acked
        // GUEST_CSUM and GUEST_TSO gets.
        assert_eq!(
            libc::ioctl(tap.as_raw_fd(), 0x4004_54d0, 0x1 | 0x2 | 0x4),
            0
        );
    }
    tap
}

/// The VMM's end of the link, as the test plays it.
enum VmmEnd {
    /// Firecracker's TAP fd: a 12-byte vnet header before each frame.
    Firecracker(File),
    /// Apple VF's `VZFileHandleNetworkDeviceAttachment` socket: a datagram
    /// socket bound to its own path and connected to the helper's.
    AppleVf(UnixDatagram),
}

impl VmmEnd {
    fn fd(&self) -> i32 {
        match self {
            VmmEnd::Firecracker(f) => f.as_raw_fd(),
            VmmEnd::AppleVf(s) => s.as_raw_fd(),
        }
    }

    /// One frame from the stack, into `buf`; returns its length.
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        match self {
            VmmEnd::Firecracker(f) => {
                let n = f.read(buf).unwrap();
                assert!(n >= FC_VNET_HDR, "a frame without its vnet header");
                assert_eq!(buf[0] & 1, 0, "the stack sends full checksums");
                buf.copy_within(FC_VNET_HDR..n, 0);
                n - FC_VNET_HDR
            }
            VmmEnd::AppleVf(s) => s.recv(buf).unwrap(),
        }
    }

    /// One frame to the stack.
    fn send(&mut self, frame: &[u8]) {
        match self {
            VmmEnd::Firecracker(f) => {
                let mut out = vec![0u8; FC_VNET_HDR];
                out.extend_from_slice(frame);
                let _ = f.write(&out);
            }
            VmmEnd::AppleVf(s) => {
                let _ = s.send(frame);
            }
        }
    }
}

/// Copies frames between the VMM's end and the guest's eth0 TAP, as the
/// VMM's virtio-net device does, until `stop` is written.
fn pump(vmm: VmmEnd, guest: File) -> (OwnedFd, std::thread::JoinHandle<()>) {
    let (stop_rx, stop_tx) = std::os::unix::net::UnixStream::pair().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut vmm, mut guest) = (vmm, guest);
        let mut buf = vec![0u8; 65536 + FC_VNET_HDR];
        loop {
            let mut fds =
                [vmm.fd(), guest.as_raw_fd(), stop_rx.as_raw_fd()].map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            // SAFETY: three initialised pollfds.
            if unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) } < 0 {
                continue;
            }
            if fds[2].revents != 0 {
                return;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let n = vmm.recv(&mut buf);
                let _ = guest.write(&buf[..n]);
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let n = guest.read(&mut buf).unwrap();
                vmm.send(&buf[..n]);
            }
        }
    });
    (stop_tx.into(), thread)
}

/// Which VMM's link the guest is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Firecracker,
    AppleVf,
}

impl Guest {
    /// Starts the helper with `policy` (JSON) behind Firecracker's TAP and
    /// builds the namespace.
    fn start(policy: &str) -> Guest {
        Guest::behind(Link::Firecracker, policy)
    }

    /// The same behind `link`.
    fn behind(link: Link, policy: &str) -> Guest {
        let id = std::process::id() % 100_000;
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 1000;
        let ns = format!("mnet{id}-{unique}");
        let tap = format!("mt{id}{unique}");
        let eth0 = format!("mg{id}{unique}");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("net.json");
        let stack_socket = dir.path().join("n.sock");
        let frontend = match link {
            Link::Firecracker => format!(r#"{{"kind":"tap","name":"{tap}"}}"#),
            Link::AppleVf => format!(
                r#"{{"kind":"datagram","path":{:?}}}"#,
                stack_socket.to_str().unwrap()
            ),
        };
        std::fs::write(
            &config,
            format!(
                r#"{{"frontend":{frontend},"auditPath":{:?},"policy":{policy}}}"#,
                dir.path().join("egress.jsonl").to_str().unwrap()
            ),
        )
        .unwrap();
        let helper = start_helper(&config);
        let vmm = match link {
            // Firecracker opens the TAP after the helper is ready; it must
            // succeed, not fail with EBUSY.
            Link::Firecracker => VmmEnd::Firecracker(open_like_firecracker(&tap)),
            // What the Swift driver's connectedDatagramSocket makes.
            Link::AppleVf => {
                let end = UnixDatagram::bind(dir.path().join("nv.sock")).unwrap();
                end.connect(&stack_socket).unwrap();
                VmmEnd::AppleVf(end)
            }
        };
        let guest_tap = open_tap(&eth0, libc::IFF_TAP | libc::IFF_NO_PI);
        run(&["ip", "netns", "add", &ns]);
        let netns_etc = format!("/etc/netns/{ns}");
        std::fs::create_dir_all(&netns_etc).unwrap();
        std::fs::write(format!("{netns_etc}/resolv.conf"), "nameserver 10.0.2.2\n").unwrap();
        run(&["ip", "link", "set", &eth0, "netns", &ns]);
        let guest = Guest {
            ns,
            tap,
            helper,
            dir,
            pump: Some(pump(vmm, guest_tap)),
        };
        guest.exec(&["ip", "link", "set", "lo", "up"]);
        guest.exec(&["ip", "link", "set", &eth0, "address", "52:54:00:12:34:56"]);
        guest.exec(&["ip", "addr", "add", "10.0.2.15/24", "dev", &eth0]);
        guest.exec(&["ip", "link", "set", &eth0, "up"]);
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
        if let Some((stop, thread)) = self.pump.take() {
            let _ = File::from(stop).write_all(b"x");
            let _ = thread.join();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.ns));
        // SIGTERM, so the helper removes its TAP (it may be gone already).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.helper.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
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
    reaches_allowed_host_services_and_nothing_else(Link::Firecracker);
}

/// Apple VF's link, with a real guest stack: the datagram frontend as the
/// Swift driver's socket reaches it.
#[test]
fn behind_the_apple_vf_datagram_link_too() {
    reaches_allowed_host_services_and_nothing_else(Link::AppleVf);
}

fn reaches_allowed_host_services_and_nothing_else(link: Link) {
    // 10.0.0.1 and 169.254.169.254 must be refused; the test host routes
    // them into its namespace, so even a policy bug sends nothing off
    // this machine.
    vmkit_testkit::net::test_host();
    let size = 8 << 20;
    let port = http_server(size);
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let guest = Guest::behind(link, &format!(r#"{{"allow":["host:{port}"]}}"#));

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

/// Packets the ingress chain of the helper's TAP dropped.
fn dropped_by_ingress_chain(tap: &str) -> u64 {
    let out = run(&[
        "nft",
        "list",
        "table",
        "netdev",
        &format!("microagent-{tap}"),
    ]);
    let at = out.find("counter packets ").expect("a counter") + "counter packets ".len();
    out[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_host_kernel_never_acts_on_the_guests_frames_and_the_tap_goes_with_the_helper() {
    let guest = Guest::start(r#"{}"#);
    let tap = guest.tap.clone();
    // The host side: up, no ARP, no address of any family.
    let flags = std::fs::read_to_string(format!("/sys/class/net/{tap}/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 0x1, 0x1, "up");
    assert_eq!(flags & 0x80, 0x80, "IFF_NOARP");
    assert_eq!(run(&["ip", "-o", "addr", "show", "dev", &tap]), "");

    // A host UDP service on every address: a broadcast and an all-hosts
    // multicast from the guest would reach it if the host kernel took the
    // guest's frames in.
    let service = UdpSocket::bind("0.0.0.0:0").unwrap();
    service.set_nonblocking(true).unwrap();
    let port = service.local_addr().unwrap().port();
    for dst in ["255.255.255.255", "224.0.0.1"] {
        guest.exec(&[
            "sh",
            "-c",
            &format!("echo leak | socat - UDP-DATAGRAM:{dst}:{port},broadcast"),
        ]);
    }
    // Something the stack answers, after them on the same path.
    let hosts = guest.exec(&["getent", "ahostsv4", "host.microagent.internal"]);
    assert!(hosts.starts_with("10.0.2.2"), "{hosts}");
    let mut buf = [0u8; 64];
    let got = service.recv_from(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host kernel delivered a guest datagram: {got:?}"
    );
    assert!(
        dropped_by_ingress_chain(&tap) >= 2,
        "the chain saw the frames"
    );

    // The helper ends (SIGTERM, as every stop path sends) while
    // "Firecracker" still holds the TAP: the device and its chain go.
    terminate(&guest.helper);
    let mut guest = guest;
    assert!(guest.helper.wait().unwrap().success());
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{tap}")).exists(),
        "the TAP is gone"
    );
    let tables = run(&["nft", "list", "tables"]);
    assert!(!tables.contains(&format!("microagent-{tap}")), "{tables}");
}

#[test]
fn a_tap_left_by_a_killed_helper_is_removed_by_the_cleanup_path() {
    let tap = format!("mk{}", std::process::id() % 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("net.json");
    std::fs::write(
        &config,
        format!(r#"{{"frontend":{{"kind":"tap","name":"{tap}"}}}}"#),
    )
    .unwrap();
    let mut helper = start_helper(&config);
    helper.kill().unwrap();
    helper.wait().unwrap();
    let device = format!("/sys/class/net/{tap}");
    assert!(std::path::Path::new(&device).exists(), "SIGKILL left it");
    // A new helper for the same workspace takes the stale device over.
    let mut again = start_helper(&config);
    terminate(&again);
    assert!(again.wait().unwrap().success());
    assert!(!std::path::Path::new(&device).exists());
    // And what stop and gc run after killing helpers removes it.
    let mut helper = start_helper(&config);
    helper.kill().unwrap();
    helper.wait().unwrap();
    vmkit_net::tap::remove_leftover(&tap);
    assert!(!std::path::Path::new(&device).exists());
    let tables = run(&["nft", "list", "tables"]);
    assert!(!tables.contains(&format!("microagent-{tap}")), "{tables}");
}

//! A test rig: the stack wired to a guest that is itself a smoltcp
//! interface (a real TCP implementation at 10.0.2.15), plus helpers that
//! build raw frames. Host sockets are real, on loopback only; destinations
//! outside loopback are redirected to loopback servers, never contacted.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use super::{Reporter, Stack, StackOptions, VecSink, GATEWAY_MAC};
use crate::audit::{AuditLog, AuditRecord};
use crate::config::{Frontend, NetConfig};
use crate::policy::Rule;
use crate::resolver::{Answer, Resolver};

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The test host's address (never contacted: redirected to loopback).
pub const TEST_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// The names the rig's resolver knows.
pub fn names() -> HashMap<&'static str, Vec<Ipv4Addr>> {
    HashMap::from([
        ("pkg.test", vec![TEST_HOST]),
        ("other.test", vec![TEST_HOST]),
        ("rebind.test", vec![Ipv4Addr::LOCALHOST]),
        ("private.test", vec![Ipv4Addr::new(10, 0, 0, 1)]),
        ("a.example.com", vec![Ipv4Addr::new(203, 0, 113, 20)]),
    ])
}

/// The guest: a smoltcp interface with its own frames queue.
pub struct Guest {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
    next_port: u16,
}

struct GuestDev<'a> {
    rx: &'a mut VecDeque<Vec<u8>>,
    tx: &'a mut Vec<Vec<u8>>,
}
pub struct GuestRx(Vec<u8>);
pub struct GuestTx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for GuestRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for GuestTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push(frame);
        r
    }
}
impl phy::Device for GuestDev<'_> {
    type RxToken<'b>
        = GuestRx
    where
        Self: 'b;
    type TxToken<'b>
        = GuestTx<'b>
    where
        Self: 'b;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(GuestRx, GuestTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((GuestRx(frame), GuestTx(self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<GuestTx<'_>> {
        Some(GuestTx(self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

impl Guest {
    fn new() -> Guest {
        let mut rx = VecDeque::new();
        let mut tx = Vec::new();
        let mut dev = GuestDev {
            rx: &mut rx,
            tx: &mut tx,
        };
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(GUEST_IP.into(), 24));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
        Guest {
            iface,
            sockets: SocketSet::new(Vec::new()),
            rx,
            tx,
            next_port: 40000,
        }
    }

    fn poll(&mut self, now: smoltcp::time::Instant) {
        let mut dev = GuestDev {
            rx: &mut self.rx,
            tx: &mut self.tx,
        };
        self.iface.poll(now, &mut dev, &mut self.sockets);
    }
}

/// The stack, the guest and the audit log, stepped together.
pub struct Rig {
    pub stack: Stack,
    pub guest: Guest,
    pub out: VecSink,
    pub audit_dir: tempfile::TempDir,
    pub redirects: Arc<AtomicUsize>,
    /// Destination -> loopback server the rig's redirect sends it to.
    pub routes: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
    /// Every frame the guest sent, when `capturing` (a mutation corpus).
    pub captured: Vec<Vec<u8>>,
    pub capturing: bool,
    epoch: Instant,
}

impl Rig {
    /// A rig whose config `adjust` may change (policy, limits).
    pub fn new(adjust: impl FnOnce(&mut NetConfig)) -> Rig {
        Rig::with_lookup(
            adjust,
            Arc::new(|name: &str| match names().get(name) {
                Some(addrs) => Answer::Addrs(addrs.clone()),
                None => Answer::NoName,
            }),
        )
    }

    pub fn with_lookup(
        adjust: impl FnOnce(&mut NetConfig),
        lookup: crate::resolver::LookupFn,
    ) -> Rig {
        let mut config = NetConfig::new(Frontend::Stream {
            path: "/unused".into(),
        });
        adjust(&mut config);
        let audit_dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&audit_dir.path().join("egress.jsonl"), 1 << 20).unwrap();
        let redirects = Arc::new(AtomicUsize::new(0));
        let routes: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>> = Arc::default();
        let (count, table) = (Arc::clone(&redirects), Arc::clone(&routes));
        let options = StackOptions {
            resolver: Resolver::with(lookup).unwrap(),
            host_addrs: vec!["192.0.2.99".parse().unwrap()],
            redirect: Some(Arc::new(move |to: SocketAddr| {
                count.fetch_add(1, Ordering::SeqCst);
                if to.ip().is_loopback() {
                    return to;
                }
                // Anything else must have a loopback server; an unknown
                // destination goes to a closed loopback port, never out.
                table
                    .lock()
                    .unwrap()
                    .get(&to)
                    .copied()
                    .unwrap_or("127.0.0.1:9".parse().unwrap())
            })),
            warn: false,
        };
        let stack = Stack::new(&config, options, Reporter::new(Some(log), false));
        Rig {
            stack,
            guest: Guest::new(),
            out: VecSink::default(),
            audit_dir,
            redirects,
            routes,
            captured: Vec::new(),
            capturing: false,
            epoch: Instant::now(),
        }
    }

    pub fn policy(
        mode: crate::policy::Mode,
        allow: &[&str],
        deny: &[&str],
    ) -> impl FnOnce(&mut NetConfig) {
        let allow: Vec<Rule> = allow.iter().map(|r| Rule::parse(r).unwrap()).collect();
        let deny: Vec<Rule> = deny.iter().map(|r| Rule::parse(r).unwrap()).collect();
        move |c: &mut NetConfig| {
            c.policy.mode = mode;
            c.policy.allow = allow;
            c.policy.deny = deny;
        }
    }

    /// Routes a (never contacted) destination to a loopback server.
    pub fn route(&self, dst: SocketAddr, server: SocketAddr) {
        self.routes.lock().unwrap().insert(dst, server);
    }

    /// One round: host readiness, guest output to the stack, stack output
    /// to the guest. `wait` bounds how long host sockets may be waited for.
    pub fn step(&mut self, wait: Duration) {
        let now = Instant::now();
        let smol_now =
            smoltcp::time::Instant::from_micros(now.duration_since(self.epoch).as_micros() as i64);
        self.guest.poll(smol_now);
        for frame in std::mem::take(&mut self.guest.tx) {
            self.stack.handle_frame(&frame, now, &mut self.out);
            if self.capturing {
                self.captured.push(frame);
            }
        }
        let mut fds = Vec::new();
        let mut tokens = Vec::new();
        self.stack.poll_fds(&mut fds, &mut tokens);
        let timeout = if self.out.frames.is_empty() {
            wait.as_millis() as i32
        } else {
            0
        };
        // SAFETY: `fds` is a live array of `fds.len()` initialised pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        for (fd, token) in fds.iter().zip(&tokens) {
            if fd.revents != 0 {
                self.stack.mark_ready(*token, fd.revents);
            }
        }
        self.stack.poll(Instant::now(), &mut self.out);
        self.guest.rx.extend(self.out.frames.drain(..));
        self.guest.poll(smol_now);
    }

    /// Waits for host fds (and the resolver) and polls the stack, without
    /// moving frames to the guest.
    pub fn wait_host(&mut self, wait: Duration) {
        let mut fds = Vec::new();
        let mut tokens = Vec::new();
        self.stack.poll_fds(&mut fds, &mut tokens);
        // SAFETY: `fds` is a live array of `fds.len()` initialised pollfds.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis() as i32,
            )
        };
        for (fd, token) in fds.iter().zip(&tokens) {
            if fd.revents != 0 {
                self.stack.mark_ready(*token, fd.revents);
            }
        }
        self.stack.poll(Instant::now(), &mut self.out);
    }

    /// Steps until `done` holds; panics after 10 s (a failure bound, not a
    /// wait: every step returns as soon as something is ready).
    pub fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Rig) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            self.step(Duration::from_millis(5));
        }
    }

    /// Opens a guest TCP connection to `dst`.
    pub fn connect(&mut self, dst: SocketAddrV4) -> SocketHandle {
        self.connect_sized(dst, 256 << 10)
    }

    /// Opens a guest TCP connection with `buffer`-byte buffers.
    pub fn connect_sized(&mut self, dst: SocketAddrV4, buffer: usize) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; buffer]);
        let tx = tcp::SocketBuffer::new(vec![0; buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_nagle_enabled(false);
        self.guest.next_port += 1;
        let local = self.guest.next_port;
        socket
            .connect(self.guest.iface.context(), (*dst.ip(), dst.port()), local)
            .unwrap();
        self.guest.sockets.add(socket)
    }

    pub fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.guest.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Waits until the guest's connection is established or refused;
    /// `true` if established.
    pub fn established(&mut self, handle: SocketHandle) -> bool {
        self.run_until("handshake outcome", |rig| {
            !matches!(
                rig.socket(handle).state(),
                tcp::State::SynSent | tcp::State::SynReceived
            )
        });
        self.socket(handle).state() == tcp::State::Established
    }

    /// Sends from the guest over an established connection, then reads
    /// until `want` bytes came back.
    pub fn exchange(&mut self, handle: SocketHandle, send: &[u8], want: usize) -> Vec<u8> {
        let mut sent = 0;
        let mut got = Vec::new();
        self.run_until("exchange", |rig| {
            let s = rig.socket(handle);
            if sent < send.len() && s.can_send() {
                sent += s.send_slice(&send[sent..]).unwrap_or(0);
            }
            while s.can_recv() {
                let _ = s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                });
            }
            sent == send.len() && got.len() >= want
        });
        got
    }

    /// Sends a raw frame from the guest and returns what the stack answered
    /// right away (after one poll).
    pub fn raw(&mut self, frame: &[u8]) -> Vec<Vec<u8>> {
        let now = Instant::now();
        self.stack.handle_frame(frame, now, &mut self.out);
        self.stack.poll(now, &mut self.out);
        std::mem::take(&mut self.out.frames)
    }

    /// The audit records so far.
    pub fn audit(&self) -> Vec<AuditRecord> {
        let text =
            std::fs::read_to_string(self.audit_dir.path().join("egress.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Resolves `name` through the stack's DNS like the guest does; returns
/// the rcode and A addresses.
pub fn resolve(rig: &mut Rig, name: &str) -> (u8, Vec<Ipv4Addr>) {
    let frame = udp_frame(
        5353,
        SocketAddrV4::new(GATEWAY, 53),
        &dns_query(77, name, 1),
    );
    rig.stack.handle_frame(&frame, Instant::now(), &mut rig.out);
    let mut answer = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while answer.is_none() {
        assert!(Instant::now() < deadline, "no DNS answer for {name}");
        for f in std::mem::take(&mut rig.out.frames) {
            if let Some((from, 5353, payload)) = udp_payload(&f) {
                if from == SocketAddrV4::new(GATEWAY, 53) {
                    answer = Some(payload);
                }
            }
        }
        if answer.is_none() {
            rig.wait_host(Duration::from_millis(10));
        }
    }
    let msg = answer.unwrap();
    let rcode = msg[3] & 0xf;
    let count = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    let addrs = (0..count)
        .map(|i| {
            let end = msg.len() - (count - 1 - i) * 16;
            Ipv4Addr::new(msg[end - 4], msg[end - 3], msg[end - 2], msg[end - 1])
        })
        .collect();
    (rcode, addrs)
}

/// A loopback TCP server that echoes what it reads; returns its address.
pub fn echo_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut conn);
            });
        }
    });
    addr
}

mod frames;
pub use frames::*;

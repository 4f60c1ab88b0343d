//! TCP flows: a guest connection terminated in smoltcp, relayed to a host
//! socket that exists only once the policy allowed it.
//!
//! A flow's life:
//! - decided on the SYN alone: the host connection is started first and the
//!   SYN is held; the guest sees SYN-ACK only once the host accepted
//!   (connection refused on the host = reset in the guest, as with slirp);
//! - decided by SNI/Host (name rules on 443/80): the guest's handshake is
//!   completed, its first bytes are peeked (not consumed), then the policy
//!   answers and the host connection is made, or the guest gets a reset;
//! - DNS over TCP to the gateway: answered by the stack.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpListenEndpoint, TcpPacket};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{FlowKey, FrameSink, Stack, Traffic};
use crate::audit::{NameSource, Proto};
use crate::policy::{Check, Peeked, Verdict};
use crate::sniff::{http_host, tls_sni, Sniffed, MAX_PEEK};

/// Per-direction buffer of a relayed connection: the window the guest sees
/// and what may be in flight towards it.
const RELAY_BUFFER: usize = 256 << 10;
const DNS_BUFFER: usize = 8 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const PEEK_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_ALIVE: Duration = Duration::from_secs(60);
const DEAD_PEER: Duration = Duration::from_secs(300);

pub(super) enum Phase {
    /// The host connect is in progress; the guest's SYN waits here.
    Connecting { syn: Vec<u8> },
    /// Handshake with the guest; waiting for its first bytes.
    Peeking,
    /// Name checked; the host connect is in progress.
    Dialing,
    /// Both ends connected: bytes move.
    Relaying,
    /// DNS over TCP, answered by the stack.
    Dns { buf: Vec<u8>, in_flight: usize },
    /// Refused after the handshake: waiting for smoltcp to send the reset.
    Closing,
}

pub(super) struct TcpFlow {
    pub phase: Phase,
    pub handle: Option<SocketHandle>,
    pub host: Option<Socket>,
    pub verdict: Option<Verdict>,
    pub started: Instant,
    pub deadline: Instant,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// poll said readable (or erred); cleared on EWOULDBLOCK.
    pub readable: bool,
    /// A write hit EWOULDBLOCK; cleared when poll says writable.
    pub write_blocked: bool,
    /// poll said the connecting socket is done (either way).
    pub connect_ready: bool,
    pub host_eof: bool,
    pub host_write_shut: bool,
    pub failure: Option<String>,
}

impl TcpFlow {
    fn new(phase: Phase, now: Instant, timeout: Duration) -> TcpFlow {
        TcpFlow {
            phase,
            handle: None,
            host: None,
            verdict: None,
            started: now,
            deadline: now + timeout,
            bytes_out: 0,
            bytes_in: 0,
            readable: false,
            write_blocked: false,
            connect_ready: false,
            host_eof: false,
            host_write_shut: false,
            failure: None,
        }
    }

    /// The host fd and the poll events this flow waits for.
    pub fn interest(&self, sockets: &SocketSet<'_>) -> Option<(RawFd, i16)> {
        let host = self.host.as_ref()?;
        let events = match self.phase {
            Phase::Connecting { .. } | Phase::Dialing => libc::POLLOUT,
            Phase::Relaying => {
                let socket = sockets.get::<tcp::Socket>(self.handle?);
                let mut events = 0;
                if !self.host_eof && !self.readable && socket.can_send() {
                    events |= libc::POLLIN;
                }
                if self.write_blocked {
                    events |= libc::POLLOUT;
                }
                events
            }
            _ => 0,
        };
        (events != 0).then(|| (host.as_raw_fd(), events))
    }

    pub fn mark(&mut self, revents: i16) {
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.readable = true;
        }
        if revents & (libc::POLLOUT | libc::POLLHUP | libc::POLLERR) != 0 {
            self.write_blocked = false;
            self.connect_ready = true;
        }
    }
}

/// A non-blocking connect to `to`.
fn start_connect(to: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(to),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&SockAddr::from(to)) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) => Err(e),
    }
}

/// `Ok(true)` connected, `Ok(false)` still connecting.
fn connect_result(socket: &Socket) -> io::Result<bool> {
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the guest's handshake is still under way.
fn handshaking(socket: &tcp::Socket) -> bool {
    matches!(socket.state(), tcp::State::Listen | tcp::State::SynReceived)
}

/// Whether smoltcp is done with a socket (reset sent, or closed).
fn socket_done(socket: &tcp::Socket) -> bool {
    match socket.state() {
        tcp::State::TimeWait => true,
        tcp::State::Closed => socket.remote_endpoint().is_none(),
        _ => false,
    }
}

impl Stack {
    fn new_socket(&mut self, key: FlowKey, buffer: usize) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; buffer]);
        let tx = tcp::SocketBuffer::new(vec![0; buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(KEEP_ALIVE.into()));
        socket.set_timeout(Some(DEAD_PEER.into()));
        let endpoint = IpListenEndpoint {
            addr: Some((*key.dst.ip()).into()),
            port: key.dst.port(),
        };
        // The port is never 0 (checked on the frame), so listen cannot fail.
        let _ = socket.listen(endpoint);
        self.sockets.add(socket)
    }

    pub(super) fn handle_tcp<S: FrameSink>(
        &mut self,
        frame: &[u8],
        tcp: &TcpPacket<&[u8]>,
        dst: std::net::Ipv4Addr,
        now: Instant,
        sink: &mut S,
    ) {
        let key = FlowKey {
            guest_port: tcp.src_port(),
            dst: std::net::SocketAddrV4::new(dst, tcp.dst_port()),
        };
        if let Some(flow) = self.tcp.get(&key) {
            if !matches!(flow.phase, Phase::Connecting { .. }) {
                self.ingress(frame, now, sink);
            }
            return;
        }
        if !tcp.syn() || tcp.ack() || tcp.rst() {
            // Not ours: smoltcp answers with a reset.
            self.ingress(frame, now, sink);
            return;
        }
        let target = SocketAddr::V4(key.dst);
        let check = {
            let names = self.memory.names_for(dst);
            self.egress
                .check_flow(Proto::Tcp, target, &names, Peeked::NotYet)
        };
        let dns = dst == self.gateway_ip && key.dst.port() == 53;
        // The policy first (a refused address says why), then the limit.
        let refused = matches!(&check, Check::Done(v) if !v.allow) && !dns;
        if !refused && self.refused_by_limit(Proto::Tcp, target, now) {
            self.ingress(frame, now, sink);
            return;
        }
        if dns {
            let handle = self.new_socket(key, DNS_BUFFER);
            let mut flow = TcpFlow::new(
                Phase::Dns {
                    buf: Vec::new(),
                    in_flight: 0,
                },
                now,
                PEEK_TIMEOUT,
            );
            flow.handle = Some(handle);
            self.tcp.insert(key, flow);
            self.ingress(frame, now, sink);
            return;
        }
        match check {
            Check::Done(verdict) if !verdict.allow => {
                self.reporter
                    .report(Proto::Tcp, target, &verdict, Traffic::default(), now);
                self.ingress(frame, now, sink);
            }
            Check::Done(verdict) => {
                let to = self.connect_target(verdict.connect_to.unwrap_or(target));
                match start_connect(to) {
                    Ok(host) => {
                        let mut flow = TcpFlow::new(
                            Phase::Connecting {
                                syn: frame.to_vec(),
                            },
                            now,
                            CONNECT_TIMEOUT,
                        );
                        flow.host = Some(host);
                        flow.verdict = Some(verdict);
                        // Loopback and nearby hosts often accept before
                        // connect() returns: look at once, not after a poll.
                        flow.connect_ready = true;
                        self.tcp.insert(key, flow);
                    }
                    Err(e) => {
                        let verdict = verdict.failed(&format!("connect failed: {e}"));
                        self.reporter
                            .report(Proto::Tcp, target, &verdict, Traffic::default(), now);
                        self.ingress(frame, now, sink);
                    }
                }
            }
            Check::NeedsName => {
                let handle = self.new_socket(key, RELAY_BUFFER);
                let mut flow = TcpFlow::new(Phase::Peeking, now, PEEK_TIMEOUT);
                flow.handle = Some(handle);
                self.tcp.insert(key, flow);
                self.ingress(frame, now, sink);
            }
        }
    }

    pub(super) fn pump_tcp<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        let over_limit = self.total_bytes >= self.limits.max_total_bytes;
        let keys: Vec<FlowKey> = self.tcp.keys().copied().collect();
        let mut queries = Vec::new();
        for key in keys {
            let Some(mut flow) = self.tcp.remove(&key) else {
                continue;
            };
            if over_limit && matches!(flow.phase, Phase::Relaying) && flow.failure.is_none() {
                flow.failure = Some("cut: traffic limit reached".to_string());
                if let Some(h) = flow.handle {
                    self.sockets.get_mut::<tcp::Socket>(h).abort();
                }
            }
            let keep = match flow.phase {
                Phase::Connecting { .. } => self.step_connecting(key, &mut flow, now, sink),
                Phase::Peeking => self.step_peeking(key, &mut flow, now),
                Phase::Dialing => self.step_dialing(key, &mut flow, now),
                Phase::Relaying => self.step_relaying(&mut flow),
                Phase::Dns { .. } => self.step_dns(key, &mut flow, now, &mut queries),
                Phase::Closing => !flow
                    .handle
                    .is_some_and(|h| socket_done(self.sockets.get::<tcp::Socket>(h))),
            };
            self.tcp.insert(key, flow);
            if !keep {
                self.finish_tcp(key, now);
            }
        }
        for (key, query) in queries {
            self.dns_query(&query, super::udp::ReplyTo::Tcp(key), now, sink);
        }
    }

    /// Removes a flow, writing its audit record if it was allowed.
    pub(super) fn finish_tcp(&mut self, key: FlowKey, now: Instant) {
        let Some(flow) = self.tcp.remove(&key) else {
            return;
        };
        if let Some(h) = flow.handle {
            self.sockets.remove(h);
        }
        if let (Some(verdict), Phase::Relaying) = (&flow.verdict, &flow.phase) {
            let verdict = match &flow.failure {
                Some(f) => verdict.failed(f),
                None => verdict.clone(),
            };
            let traffic = Traffic {
                bytes_out: flow.bytes_out,
                bytes_in: flow.bytes_in,
                duration: now.duration_since(flow.started),
            };
            self.reporter
                .report(Proto::Tcp, SocketAddr::V4(key.dst), &verdict, traffic, now);
        }
    }

    fn step_connecting<S: FrameSink>(
        &mut self,
        key: FlowKey,
        flow: &mut TcpFlow,
        now: Instant,
        sink: &mut S,
    ) -> bool {
        if !flow.connect_ready && now < flow.deadline {
            return true;
        }
        let result = flow.host.as_ref().map_or(Ok(false), connect_result);
        let syn = match &mut flow.phase {
            Phase::Connecting { syn } => std::mem::take(syn),
            _ => return false,
        };
        match result {
            Ok(true) => {
                let handle = self.new_socket(key, RELAY_BUFFER);
                flow.handle = Some(handle);
                flow.phase = Phase::Relaying;
                self.ingress(&syn, now, sink);
                true
            }
            Ok(false) if now < flow.deadline => {
                flow.connect_ready = false;
                flow.phase = Phase::Connecting { syn };
                true
            }
            outcome => {
                let why = match outcome {
                    Err(e) => format!("connect failed: {e}"),
                    _ => "connect timed out".to_string(),
                };
                if let Some(v) = &flow.verdict {
                    let verdict = v.failed(&why);
                    self.reporter.report(
                        Proto::Tcp,
                        SocketAddr::V4(key.dst),
                        &verdict,
                        Traffic::default(),
                        now,
                    );
                }
                flow.verdict = None;
                flow.host = None;
                // No socket listens: smoltcp resets the guest's SYN.
                self.ingress(&syn, now, sink);
                false
            }
        }
    }

    fn step_peeking(&mut self, key: FlowKey, flow: &mut TcpFlow, now: Instant) -> bool {
        let Some(handle) = flow.handle else {
            return false;
        };
        let port = key.dst.port();
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if socket_done(socket) || (handshaking(socket) && now >= flow.deadline) {
            return false;
        }
        if handshaking(socket) {
            return true;
        }
        let mut sniffed = Sniffed::Incomplete;
        if socket.recv_queue() > 0 {
            if let Ok(first) = socket.peek(MAX_PEEK) {
                sniffed = if port == 443 {
                    tls_sni(first)
                } else {
                    http_host(first)
                };
            }
        }
        if sniffed == Sniffed::Incomplete {
            if socket.may_recv() && now < flow.deadline {
                return true;
            }
            sniffed = Sniffed::NoName;
        }
        let source = if port == 443 {
            NameSource::Sni
        } else {
            NameSource::Host
        };
        let target = SocketAddr::V4(key.dst);
        let check = {
            let names = self.memory.names_for(*key.dst.ip());
            let peeked = match &sniffed {
                Sniffed::Name(name) => Peeked::Name(name, source),
                _ => Peeked::NoName,
            };
            self.egress.check_flow(Proto::Tcp, target, &names, peeked)
        };
        let verdict = match check {
            Check::Done(v) => v,
            Check::NeedsName => Verdict::denied("no name to decide by".to_string()),
        };
        if !verdict.allow {
            self.reporter
                .report(Proto::Tcp, target, &verdict, Traffic::default(), now);
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            flow.phase = Phase::Closing;
            return true;
        }
        let to = self.connect_target(verdict.connect_to.unwrap_or(target));
        match start_connect(to) {
            Ok(host) => {
                flow.host = Some(host);
                flow.verdict = Some(verdict);
                flow.phase = Phase::Dialing;
                flow.deadline = now + CONNECT_TIMEOUT;
                flow.connect_ready = true;
            }
            Err(e) => {
                let verdict = verdict.failed(&format!("connect failed: {e}"));
                self.reporter
                    .report(Proto::Tcp, target, &verdict, Traffic::default(), now);
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
                flow.phase = Phase::Closing;
            }
        }
        true
    }

    fn step_dialing(&mut self, key: FlowKey, flow: &mut TcpFlow, now: Instant) -> bool {
        if !flow.connect_ready && now < flow.deadline {
            return true;
        }
        let result = flow.host.as_ref().map_or(Ok(false), connect_result);
        let why = match result {
            Ok(true) => {
                flow.phase = Phase::Relaying;
                return self.step_relaying(flow);
            }
            Ok(false) if now < flow.deadline => {
                flow.connect_ready = false;
                return true;
            }
            Ok(false) => "connect timed out".to_string(),
            Err(e) => format!("connect failed: {e}"),
        };
        if let Some(v) = flow.verdict.take() {
            self.reporter.report(
                Proto::Tcp,
                SocketAddr::V4(key.dst),
                &v.failed(&why),
                Traffic::default(),
                now,
            );
        }
        flow.host = None;
        if let Some(h) = flow.handle {
            self.sockets.get_mut::<tcp::Socket>(h).abort();
        }
        flow.phase = Phase::Closing;
        true
    }
}

mod dns;
mod relay;

//! UDP without smoltcp: each guest (source port, destination) pair the
//! policy allows gets one connected host socket; answers come back as
//! frames built here. DNS to the gateway is answered by the stack.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet,
    Ipv4Repr, UdpPacket, UdpRepr,
};

use super::frames::{write_ipv4, HEADERS};
use super::{FlowKey, FrameSink, Stack, Traffic, GATEWAY_MAC};
use crate::audit::Proto;
use crate::dns::{build_error, build_response, parse_query, Query, QueryError, Rcode, TYPE_A};
use crate::policy::{Check, Peeked, Verdict};
use crate::resolver::Answer;

/// A UDP flow with no traffic for this long is closed.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// TTL of the stack's DNS answers.
const DNS_TTL: u32 = 60;
/// The name of the gateway as the host's services.
pub const HOST_NAME: &str = "host.microagent.internal";

pub(super) struct UdpFlow {
    pub socket: UdpSocket,
    pub verdict: Verdict,
    pub started: Instant,
    pub last_active: Instant,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub readable: bool,
}

/// Where a DNS answer goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReplyTo {
    /// A datagram to this guest port.
    Udp { guest_port: u16 },
    /// The DNS-over-TCP flow.
    Tcp(FlowKey),
}

/// A query waiting for the resolver.
pub(super) struct PendingQuery {
    query: Query,
    name: String,
    reply: ReplyTo,
}

impl Stack {
    /// Handles one datagram; `false` when the policy refused it (the
    /// caller tells the guest with an ICMP "administratively prohibited").
    pub(super) fn handle_udp<S: FrameSink>(
        &mut self,
        guest_port: u16,
        dst: SocketAddrV4,
        payload: &[u8],
        now: Instant,
        sink: &mut S,
    ) -> bool {
        if *dst.ip() == self.gateway_ip && dst.port() == 53 {
            self.dns_query(payload, ReplyTo::Udp { guest_port }, now, sink);
            return true;
        }
        if dst.ip().is_broadcast() || dst.ip().is_multicast() || dst.port() == 0 || guest_port == 0
        {
            // DHCP, mDNS and the like: nobody to talk to.
            self.stats.dropped_frames += 1;
            return true;
        }
        let key = FlowKey { guest_port, dst };
        if let Some(flow) = self.udp.get_mut(&key) {
            flow.last_active = now;
            if flow.socket.send(payload).is_ok() {
                flow.bytes_out += payload.len() as u64;
                self.total_bytes += payload.len() as u64;
            }
            return true;
        }
        let target = SocketAddr::V4(dst);
        let check = {
            let names = self.memory.names_for(*dst.ip());
            self.egress
                .check_flow(Proto::Udp, target, &names, Peeked::NotYet)
        };
        let verdict = match check {
            Check::Done(v) => v,
            Check::NeedsName => Verdict::denied("no name to decide by".to_string()),
        };
        if !verdict.allow {
            self.reporter
                .report(Proto::Udp, target, &verdict, Traffic::default(), now);
            return false;
        }
        if self.refused_by_limit(Proto::Udp, target, now) {
            return false;
        }
        let to = self.connect_target(verdict.connect_to.unwrap_or(target));
        match open_udp(to) {
            Ok(socket) => {
                let sent = socket.send(payload).map_or(0, |_| payload.len() as u64);
                self.total_bytes += sent;
                self.udp.insert(
                    key,
                    UdpFlow {
                        socket,
                        verdict,
                        started: now,
                        last_active: now,
                        bytes_out: sent,
                        bytes_in: 0,
                        readable: false,
                    },
                );
            }
            Err(e) => {
                let v = verdict.failed(&format!("host socket: {e}"));
                self.reporter
                    .report(Proto::Udp, target, &v, Traffic::default(), now);
            }
        }
        true
    }

    pub(super) fn pump_udp<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        let over_limit = self.total_bytes >= self.limits.max_total_bytes;
        let mut finished = Vec::new();
        let mut buf = [0u8; 65536];
        for (key, flow) in &mut self.udp {
            while flow.readable && sink.can_send() {
                match flow.socket.recv(&mut buf) {
                    Ok(n) => {
                        flow.last_active = now;
                        flow.bytes_in += n as u64;
                        self.total_bytes += n as u64;
                        let max = self.mtu - 28;
                        if n <= max {
                            emit_udp(
                                sink,
                                self.guest_mac,
                                self.guest_ip,
                                key.dst,
                                key.guest_port,
                                &buf[..n],
                            );
                        } else {
                            // Would need IP fragmentation towards the guest.
                            self.stats.dropped_frames += 1;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => flow.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // ICMP errors from the far side surface here; keep going.
                    Err(_) => flow.readable = false,
                }
            }
            if over_limit || now.duration_since(flow.last_active) >= UDP_IDLE {
                finished.push(*key);
            }
        }
        for key in finished {
            self.finish_udp(key, now);
        }
    }

    pub(super) fn finish_udp(&mut self, key: FlowKey, now: Instant) {
        if let Some(flow) = self.udp.remove(&key) {
            let traffic = Traffic {
                bytes_out: flow.bytes_out,
                bytes_in: flow.bytes_in,
                duration: now.duration_since(flow.started),
            };
            self.reporter.report(
                Proto::Udp,
                SocketAddr::V4(key.dst),
                &flow.verdict,
                traffic,
                now,
            );
        }
    }

    /// Answers (or starts answering) one DNS query from the guest.
    pub(super) fn dns_query<S: FrameSink>(
        &mut self,
        message: &[u8],
        reply: ReplyTo,
        now: Instant,
        sink: &mut S,
    ) {
        let query = match parse_query(message) {
            Ok(q) => q,
            Err(QueryError::Garbage) => {
                self.stats.dropped_frames += 1;
                return;
            }
            Err(QueryError::Answerable { id, rcode }) => {
                self.dns_reply(reply, &build_error(id, rcode), sink);
                return;
            }
        };
        let Some(name) = query.name.clone() else {
            self.dns_reply(
                reply,
                &build_response(&query, Rcode::NxDomain, &[], DNS_TTL),
                sink,
            );
            return;
        };
        let dns_dst = SocketAddr::V4(SocketAddrV4::new(self.gateway_ip, 53));
        if name == HOST_NAME {
            let answer = build_response(&query, Rcode::NoError, &[self.gateway_ip], DNS_TTL);
            self.dns_reply(reply, &answer, sink);
            return;
        }
        let verdict = self.egress.check_dns(&name);
        self.reporter
            .report(Proto::Dns, dns_dst, &verdict, Traffic::default(), now);
        if !verdict.allow {
            self.dns_reply(
                reply,
                &build_response(&query, Rcode::Refused, &[], DNS_TTL),
                sink,
            );
            return;
        }
        if query.qtype != TYPE_A {
            // The guest link is IPv4 only: AAAA (and other types) get an
            // empty answer, so clients fall back to A.
            self.dns_reply(
                reply,
                &build_response(&query, Rcode::NoError, &[], DNS_TTL),
                sink,
            );
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let pending = PendingQuery { query, name, reply };
        match self.resolver.lookup(&pending.name, token, now) {
            Some(answer) => self.answer_query(pending, answer, sink),
            None => {
                self.pending_dns.insert(token, pending);
            }
        }
    }

    /// Answers the queries whose lookups finished.
    pub(super) fn deliver_dns<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        // Only when the wake-up pipe said so: no syscall per loop round.
        if !std::mem::take(&mut self.resolver_woke) {
            return;
        }
        for done in self.resolver.take_done(now) {
            if let Some(pending) = self.pending_dns.remove(&done.token) {
                self.answer_query(pending, done.answer, sink);
            }
        }
    }

    fn answer_query<S: FrameSink>(&mut self, pending: PendingQuery, answer: Answer, sink: &mut S) {
        let message = match answer {
            Answer::Addrs(addrs) => {
                self.memory.remember(&pending.name, &addrs);
                build_response(&pending.query, Rcode::NoError, &addrs, DNS_TTL)
            }
            Answer::NoName => build_response(&pending.query, Rcode::NxDomain, &[], DNS_TTL),
            Answer::Failed => build_response(&pending.query, Rcode::ServFail, &[], DNS_TTL),
        };
        self.stats.dns_answers += 1;
        self.dns_reply(pending.reply, &message, sink);
    }

    fn dns_reply<S: FrameSink>(&mut self, reply: ReplyTo, message: &[u8], sink: &mut S) {
        match reply {
            ReplyTo::Udp { guest_port } => {
                let from = SocketAddrV4::new(self.gateway_ip, 53);
                emit_udp(
                    sink,
                    self.guest_mac,
                    self.guest_ip,
                    from,
                    guest_port,
                    message,
                );
            }
            ReplyTo::Tcp(key) => self.reply_tcp(key, message),
        }
    }
}

fn open_udp(to: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(to)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Queues a UDP datagram from `from` to the guest's `guest_port`.
pub(super) fn emit_udp<S: FrameSink>(
    sink: &mut S,
    guest_mac: EthernetAddress,
    guest_ip: Ipv4Addr,
    from: SocketAddrV4,
    guest_port: u16,
    payload: &[u8],
) {
    let ip_repr = Ipv4Repr {
        src_addr: *from.ip(),
        dst_addr: guest_ip,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let udp_repr = UdpRepr {
        src_port: from.port(),
        dst_port: guest_port,
    };
    let checksums = ChecksumCapabilities::default();
    sink.queue_frame(HEADERS + 8 + payload.len(), |frame| {
        let gateway = EthernetAddress(GATEWAY_MAC);
        let udp = write_ipv4(frame, gateway, guest_mac, &ip_repr);
        udp_repr.emit(
            &mut UdpPacket::new_unchecked(udp),
            &(*from.ip()).into(),
            &guest_ip.into(),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &checksums,
        );
    });
}

/// Queues an ICMP "communication administratively prohibited" from the
/// gateway about the guest's IPv4 `packet`, so a refused datagram fails at
/// once instead of timing out.
pub(super) fn emit_prohibited<S: FrameSink>(
    sink: &mut S,
    guest_mac: EthernetAddress,
    gateway: Ipv4Addr,
    packet: &[u8],
) {
    let checksums = ChecksumCapabilities::default();
    let Ok(original) = Ipv4Packet::new_checked(packet) else {
        return;
    };
    let Ok(header) = Ipv4Repr::parse(&original, &checksums) else {
        return;
    };
    let data = &original.payload()[..original.payload().len().min(8)];
    let icmp = Icmpv4Repr::DstUnreachable {
        reason: Icmpv4DstUnreachable::CommProhibited,
        header,
        data,
    };
    let ip_repr = Ipv4Repr {
        src_addr: gateway,
        dst_addr: header.src_addr,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    sink.queue_frame(HEADERS + icmp.buffer_len(), |frame| {
        let gateway_mac = EthernetAddress(GATEWAY_MAC);
        let payload = write_ipv4(frame, gateway_mac, guest_mac, &ip_repr);
        icmp.emit(&mut Icmpv4Packet::new_unchecked(payload), &checksums);
    });
}

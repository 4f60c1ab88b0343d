//! The stack of one VM as a state machine: frames in ([`Stack::handle_frame`]),
//! host socket readiness in ([`Stack::mark_ready`]), then [`Stack::poll`]
//! moves data and emits frames into a [`FrameSink`]. Nothing happens behind
//! the caller's back, so tests drive it frame by frame.
//!
//! Every frame from the guest is inspected before smoltcp sees it: only ARP
//! for the gateway, ICMP to the gateway and TCP segments of flows the stack
//! tracks reach the interface (smoltcp answers a SYN it has no socket for
//! with a reset, which is how refused connections are refused). smoltcp has
//! no wildcard listen, so a new connection's SYN gets its own listening
//! socket (`any_ip`), created just before the SYN is fed in, one frame at a
//! time. UDP and DNS are answered without smoltcp.

mod device;
mod frames;
mod report;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress,
    IpCidr, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

pub use device::{FrameSink, VecSink};
pub use report::{Reporter, Traffic, REPEAT_WINDOW};

use crate::audit::Proto;
use crate::config::NetConfig;
use crate::dns::DnsMemory;
use crate::policy::{host_addresses, Egress};
use crate::resolver::Resolver;
use device::Device;
use tcp::TcpFlow;
use udp::{PendingQuery, UdpFlow};

/// The MAC address the gateway answers with (QEMU slirp's, so guests that
/// know slirp see nothing new).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// Addresses remembered from DNS answers per VM.
const DNS_MEMORY: usize = 8192;

/// Where a host socket really connects, given the destination the policy
/// judged. The identity in production; tests send 203.0.113.10:443 to a
/// loopback server so that no packet leaves the machine.
pub type Redirect = Arc<dyn Fn(SocketAddr) -> SocketAddr + Send + Sync>;

/// What a stack needs besides its config.
pub struct StackOptions {
    /// The lookup service (the host's resolver in production).
    pub resolver: Resolver,
    /// The host's own addresses, refused in every mode.
    pub host_addrs: Vec<IpAddr>,
    /// Where connections really go (see [`Redirect`]).
    pub redirect: Option<Redirect>,
    /// Print a warning on stderr for each deny.
    pub warn: bool,
}

impl StackOptions {
    /// The production options: the host resolver, the host's addresses.
    pub fn host() -> std::io::Result<StackOptions> {
        Ok(StackOptions {
            resolver: Resolver::host()?,
            host_addrs: host_addresses(),
            redirect: None,
            warn: true,
        })
    }
}

/// A flow of the guest: its source port and the destination it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The guest's source port.
    pub guest_port: u16,
    /// The destination.
    pub dst: SocketAddrV4,
}

/// What a poll fd belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The resolver's wake-up pipe.
    Resolver,
    /// A TCP flow's host socket.
    Tcp(FlowKey),
    /// A UDP flow's host socket.
    Udp(FlowKey),
}

/// Counters, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames that were malformed, spoofed or not for us.
    pub dropped_frames: u64,
    /// Connection attempts refused by a limit.
    pub limit_refusals: u64,
    /// DNS queries answered.
    pub dns_answers: u64,
}

/// The network stack of one VM.
pub struct Stack {
    guest_ip: std::net::Ipv4Addr,
    gateway_ip: std::net::Ipv4Addr,
    guest_mac: EthernetAddress,
    mtu: usize,
    egress: Egress,
    limits: crate::policy::Limits,
    iface: Interface,
    sockets: SocketSet<'static>,
    tcp: HashMap<FlowKey, TcpFlow>,
    udp: HashMap<FlowKey, UdpFlow>,
    memory: DnsMemory,
    resolver: Resolver,
    pending_dns: HashMap<u64, PendingQuery>,
    /// The resolver's wake-up pipe was readable: finished lookups wait.
    resolver_woke: bool,
    next_token: u64,
    reporter: Reporter,
    redirect: Option<Redirect>,
    total_bytes: u64,
    epoch: Instant,
    stats: Stats,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("tcp", &self.tcp.len())
            .field("udp", &self.udp.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Stack {
    /// A stack for `config`, reporting to `reporter`.
    pub fn new(config: &NetConfig, options: StackOptions, reporter: Reporter) -> Stack {
        let gateway_mac = EthernetAddress(GATEWAY_MAC);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(gateway_mac));
        iface_config.random_seed = seed();
        let mut dev = Device {
            rx: None,
            sink: &mut VecSink::default(),
            mtu: config.mtu.into(),
        };
        let epoch = Instant::now();
        let mut iface = Interface::new(iface_config, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(config.gateway_ip.into(), config.prefix_len));
        });
        // Every destination is "routed" through our own address, which is
        // what lets smoltcp accept segments for any IP (any_ip).
        let _ = iface.routes_mut().add_default_ipv4_route(config.gateway_ip);
        iface.set_any_ip(true);
        let egress = Egress::new(
            config.policy.clone(),
            config.gateway_ip,
            config.allowed_host_ports(),
            options.host_addrs,
        );
        Stack {
            guest_ip: config.guest_ip,
            gateway_ip: config.gateway_ip,
            guest_mac: EthernetAddress(config.guest_mac.0),
            mtu: config.mtu.into(),
            egress,
            limits: config.policy.limits,
            iface,
            sockets: SocketSet::new(Vec::new()),
            tcp: HashMap::new(),
            udp: HashMap::new(),
            memory: DnsMemory::new(DNS_MEMORY),
            resolver: options.resolver,
            pending_dns: HashMap::new(),
            resolver_woke: false,
            next_token: 1,
            reporter,
            redirect: options.redirect,
            total_bytes: 0,
            epoch,
            stats: Stats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Open TCP connections and UDP flows.
    pub fn flow_count(&self) -> usize {
        self.tcp.len() + self.udp.len()
    }

    /// The reporter (records written, suppressed).
    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(now.duration_since(self.epoch).as_micros() as i64)
    }

    fn at_limit(&self) -> Option<String> {
        if self.flow_count() >= self.limits.max_connections as usize {
            return Some(format!(
                "connection limit reached ({} open)",
                self.limits.max_connections
            ));
        }
        if self.total_bytes >= self.limits.max_total_bytes {
            return Some(format!(
                "traffic limit reached ({} bytes)",
                self.limits.max_total_bytes
            ));
        }
        None
    }

    /// Refuses (and reports) a new flow when a limit is reached.
    fn refused_by_limit(&mut self, proto: Proto, target: SocketAddr, now: Instant) -> bool {
        let Some(reason) = self.at_limit() else {
            return false;
        };
        self.stats.limit_refusals += 1;
        let verdict = crate::policy::Verdict::denied(reason);
        self.reporter
            .report(proto, target, &verdict, Traffic::default(), now);
        true
    }

    fn connect_target(&self, to: SocketAddr) -> SocketAddr {
        match &self.redirect {
            Some(redirect) => redirect(to),
            None => to,
        }
    }

    /// Feeds one frame from the guest.
    pub fn handle_frame<S: FrameSink>(&mut self, frame: &[u8], now: Instant, sink: &mut S) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.stats.dropped_frames += 1;
            return;
        };
        if eth.src_addr() != self.guest_mac {
            self.stats.dropped_frames += 1;
            return;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                // Requests for the gateway, and the guest's replies to the
                // gateway's own requests (smoltcp re-asks when its neighbor
                // entry expires). Nothing else: with any_ip smoltcp would
                // claim every address, even the guest's own.
                let for_gateway = ArpPacket::new_checked(eth.payload()).is_ok_and(|arp| {
                    matches!(arp.operation(), ArpOperation::Request | ArpOperation::Reply)
                        && arp.target_protocol_addr() == self.gateway_ip.octets()
                        && arp.source_protocol_addr() == self.guest_ip.octets()
                });
                if for_gateway {
                    self.ingress(frame, now, sink);
                } else {
                    self.stats.dropped_frames += 1;
                }
            }
            EthernetProtocol::Ipv4 => self.handle_ipv4(frame, eth.payload(), now, sink),
            _ => self.stats.dropped_frames += 1,
        }
    }

    fn handle_ipv4<S: FrameSink>(
        &mut self,
        frame: &[u8],
        packet: &[u8],
        now: Instant,
        sink: &mut S,
    ) {
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            self.stats.dropped_frames += 1;
            return;
        };
        let fragment = ip.more_frags() || ip.frag_offset() != 0;
        if ip.src_addr() != self.guest_ip || fragment || !ip.verify_checksum() {
            // Spoofed sources go nowhere; fragments (only an oversized
            // datagram makes them) are not reassembled.
            self.stats.dropped_frames += 1;
            return;
        }
        let dst = ip.dst_addr();
        match ip.next_header() {
            IpProtocol::Icmp if dst == self.gateway_ip => self.ingress(frame, now, sink),
            IpProtocol::Tcp => match TcpPacket::new_checked(ip.payload()) {
                Ok(tcp)
                    if tcp.dst_port() != 0
                        && !dst.is_broadcast()
                        && !dst.is_multicast()
                        && !dst.is_unspecified() =>
                {
                    self.handle_tcp(frame, &tcp, dst, now, sink)
                }
                _ => self.stats.dropped_frames += 1,
            },
            IpProtocol::Udp => match UdpPacket::new_checked(ip.payload()) {
                Ok(udp) => {
                    let (src_port, dst_port) = (udp.src_port(), udp.dst_port());
                    let to = SocketAddrV4::new(dst, dst_port);
                    if !self.handle_udp(src_port, to, udp.payload(), now, sink) && sink.can_send() {
                        udp::emit_prohibited(sink, self.guest_mac, self.gateway_ip, packet);
                    }
                }
                Err(_) => self.stats.dropped_frames += 1,
            },
            _ => self.stats.dropped_frames += 1,
        }
    }

    /// Hands one frame to smoltcp (which may answer it at once).
    fn ingress<S: FrameSink>(&mut self, frame: &[u8], now: Instant, sink: &mut S) {
        let smol_now = self.smol_now(now);
        let mut dev = Device {
            rx: Some(frame),
            sink,
            mtu: self.mtu,
        };
        self.iface
            .poll_ingress_single(smol_now, &mut dev, &mut self.sockets);
    }

    /// Collects the fds to poll, with what each waits for.
    pub fn poll_fds(&self, fds: &mut Vec<libc::pollfd>, tokens: &mut Vec<Token>) {
        use std::os::fd::AsRawFd;
        fds.push(libc::pollfd {
            fd: self.resolver.wake_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        tokens.push(Token::Resolver);
        for (key, flow) in &self.tcp {
            if let Some((fd, events)) = flow.interest(&self.sockets) {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                tokens.push(Token::Tcp(*key));
            }
        }
        for (key, flow) in &self.udp {
            fds.push(libc::pollfd {
                fd: flow.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            tokens.push(Token::Udp(*key));
        }
    }

    /// Records what poll said about a token's fd.
    pub fn mark_ready(&mut self, token: Token, revents: i16) {
        match token {
            Token::Resolver => self.resolver_woke = true,
            Token::Tcp(key) => {
                if let Some(flow) = self.tcp.get_mut(&key) {
                    flow.mark(revents);
                }
            }
            Token::Udp(key) => {
                if let Some(flow) = self.udp.get_mut(&key) {
                    flow.readable = true;
                }
            }
        }
    }

    /// Moves data between host sockets and smoltcp, answers finished DNS
    /// lookups, runs timers and emits what smoltcp has to send.
    pub fn poll<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        self.deliver_dns(now, sink);
        self.pump_udp(now, sink);
        self.pump_tcp(now, sink);
        self.egress(now, sink);
        // Data relayed during egress (ACKs freeing buffer space) is picked
        // up on the next round; smoltcp's own timers via poll_delay.
    }

    fn egress<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        let smol_now = self.smol_now(now);
        // smoltcp sends one segment per socket per call: call until idle.
        for _ in 0..4096 {
            if !sink.can_send() {
                break;
            }
            let mut dev = Device {
                rx: None,
                sink: &mut *sink,
                mtu: self.mtu,
            };
            if self
                .iface
                .poll_egress(smol_now, &mut dev, &mut self.sockets)
                == smoltcp::iface::PollResult::None
            {
                break;
            }
        }
    }

    /// How long the caller may sleep before the next [`Stack::poll`] if no
    /// fd becomes ready.
    pub fn poll_delay(&mut self, now: Instant) -> Duration {
        let smol_now = self.smol_now(now);
        let smol = self
            .iface
            .poll_delay(smol_now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_secs(1));
        // Our own timers (connect/peek deadlines, UDP idle) are coarse.
        smol.min(Duration::from_millis(500))
    }

    /// Ends every flow, writing its audit record (on SIGTERM or hang-up).
    pub fn shutdown(&mut self, now: Instant) {
        let tcp: Vec<FlowKey> = self.tcp.keys().copied().collect();
        for key in tcp {
            self.finish_tcp(key, now);
        }
        let udp: Vec<FlowKey> = self.udp.keys().copied().collect();
        for key in udp {
            self.finish_udp(key, now);
        }
    }
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        bytes = (std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod rig;
#[cfg(test)]
mod tests;

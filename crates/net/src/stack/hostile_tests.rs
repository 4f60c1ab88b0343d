//! The guest as an attacker: mutated frames, floods of SYNs, connections
//! and DNS queries, oversized and fragmented UDP. The stack must stay up,
//! keep its state bounded, enforce its limits, and still serve afterwards.
//! Every host socket goes to loopback (the rig redirects anything else to a
//! closed loopback port), so no mutation can send a packet off the machine.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetFrame, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};

use super::rig::*;
use crate::policy::Mode;
use crate::resolver::{Answer, MAX_IN_FLIGHT};

/// xorshift64*: a small deterministic generator, so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Frames a guest really sends: captured from a connection with data, a
/// DNS query, UDP, plus hand-made ones.
fn corpus() -> Vec<Vec<u8>> {
    let server = echo_server();
    let mut rig = Rig::new(Rig::policy(Mode::Public, &["127.0.0.1"], &[]));
    rig.capturing = true;
    let conn = rig.connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, server.port()));
    assert!(rig.established(conn));
    rig.exchange(conn, b"GET / HTTP/1.1\r\nHost: pkg.test\r\n\r\n", 10);
    rig.socket(conn).close();
    rig.run_until("closed", |rig| rig.stack.flow_count() == 0);
    let mut frames = std::mem::take(&mut rig.captured);
    frames.push(udp_frame(
        5353,
        SocketAddrV4::new(GATEWAY, 53),
        &dns_query(1, "pkg.test", 1),
    ));
    frames.push(udp_frame(
        6000,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9),
        b"datagram",
    ));
    frames.push(udp_frame(
        6001,
        SocketAddrV4::new(TEST_HOST, 443),
        &[0u8; 1200],
    ));
    frames.push(arp_request_frame(GATEWAY));
    assert!(frames.len() >= 6, "corpus has {} frames", frames.len());
    frames
}

/// Recomputes the IPv4 and TCP/UDP checksums so mutations get past them.
fn fix_checksums(frame: &mut [u8]) {
    let Ok(mut eth) = EthernetFrame::new_checked(&mut frame[..]) else {
        return;
    };
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
    match ip.next_header() {
        IpProtocol::Tcp => {
            if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
                tcp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut udp) = UdpPacket::new_checked(ip.payload_mut()) {
                udp.fill_checksum(&src, &dst);
            }
        }
        _ => {}
    }
}

#[test]
fn mutated_frames_never_panic_and_the_stack_still_serves() {
    let corpus = corpus();
    let mut rig = Rig::new(Rig::policy(Mode::Public, &["127.0.0.1"], &[]));
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let interesting = [0u8, 1, 2, 0x7f, 0x80, 0xff, 0x45, 0x06, 0x11, 0x02, 0x12];
    for round in 0..20_000 {
        let mut frame = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            if frame.is_empty() {
                break;
            }
            match rng.below(6) {
                0 | 1 => {
                    let at = rng.below(frame.len());
                    frame[at] ^= 1 << rng.below(8);
                }
                2 => {
                    let at = rng.below(frame.len());
                    frame[at] = interesting[rng.below(interesting.len())];
                }
                3 => frame.truncate(rng.below(frame.len() + 1)),
                4 => {
                    let extra = rng.below(64);
                    frame.extend((0..extra).map(|_| rng.next() as u8));
                }
                _ => {
                    // A length or offset field: IP total length, TCP data offset.
                    for at in [16usize, 17, 46] {
                        if at < frame.len() && rng.below(2) == 0 {
                            frame[at] = rng.next() as u8;
                        }
                    }
                }
            }
        }
        if round % 2 == 0 {
            fix_checksums(&mut frame);
        }
        rig.stack.handle_frame(&frame, Instant::now(), &mut rig.out);
        if round % 64 == 0 {
            rig.wait_host(std::time::Duration::ZERO);
            rig.out.frames.clear();
        }
    }
    assert!(
        rig.stack.stats().dropped_frames > 1000,
        "most mutants are dropped"
    );
    assert!(rig.stack.flow_count() <= 256);
    assert_eq!(
        resolve(&mut rig, "pkg.test"),
        (0, vec![TEST_HOST]),
        "still answers DNS"
    );
}

#[test]
fn a_syn_flood_is_bounded_by_the_connection_limit() {
    // A loopback listener that never accepts: connects complete only up to
    // its backlog, the rest stay pending, as against a slow server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut rig = Rig::new(|c| {
        c.policy.allow = vec![crate::policy::Rule::parse("127.0.0.1").unwrap()];
        c.policy.limits.max_connections = 256;
    });
    let template = syn_frame(40000, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let refused = syn_frame(40000, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80));
    for n in 0..10_000u16 {
        for base in [&template, &refused] {
            let mut frame = base.clone();
            frame[34..36].copy_from_slice(&(10_000 + n).to_be_bytes());
            fix_checksums(&mut frame);
            rig.stack.handle_frame(&frame, Instant::now(), &mut rig.out);
        }
        if n % 500 == 0 {
            rig.wait_host(std::time::Duration::ZERO);
            rig.out.frames.clear();
        }
    }
    assert!(
        rig.stack.flow_count() <= 256,
        "{} flows",
        rig.stack.flow_count()
    );
    assert!(rig.stack.sockets.iter().count() <= 256);
    assert!(rig.stack.stats().limit_refusals >= 10_000 - 256);
    // Identical denies are written once per window, not 20,000 times.
    let lines = rig.audit().len();
    assert!(lines < 100, "{lines} audit lines");
    assert!(rig.stack.reporter().suppressed > 10_000);
    assert_eq!(resolve(&mut rig, "pkg.test").0, 0, "still serving");
    drop(listener);
}

#[test]
fn many_real_connections_beyond_the_limit_are_reset_and_the_rest_work() {
    let server = echo_server();
    let mut rig = Rig::new(|c| {
        c.policy.allow = vec![crate::policy::Rule::parse("127.0.0.1").unwrap()];
        c.policy.limits.max_connections = 64;
    });
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, server.port());
    let conns: Vec<_> = (0..300).map(|_| rig.connect_sized(dst, 4096)).collect();
    rig.run_until("every handshake decided", |rig| {
        conns.iter().all(|c| {
            !matches!(
                rig.socket(*c).state(),
                tcp::State::SynSent | tcp::State::SynReceived
            )
        })
    });
    let up = conns
        .iter()
        .filter(|c| rig.socket(**c).state() == tcp::State::Established)
        .count();
    assert_eq!(up, 64, "exactly the limit is served");
    let first = *conns
        .iter()
        .find(|c| rig.socket(**c).state() == tcp::State::Established)
        .unwrap();
    assert_eq!(rig.exchange(first, b"still works", 11), b"still works");
}

#[test]
fn a_dns_flood_keeps_lookups_in_flight_bounded() {
    // Lookups block until the gate opens, like a resolver that hangs.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let held = Arc::clone(&gate);
    let mut rig = Rig::with_lookup(
        |_| {},
        Arc::new(move |_name: &str| {
            let (open, cv) = &*held;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Answer::Addrs(vec![TEST_HOST])
        }),
    );
    for n in 0..10_000u32 {
        let query = dns_query(n as u16, &format!("n{n}.flood.test"), 1);
        let frame = udp_frame(5353, SocketAddrV4::new(GATEWAY, 53), &query);
        rig.stack.handle_frame(&frame, Instant::now(), &mut rig.out);
    }
    assert!(rig.stack.pending_dns.len() <= MAX_IN_FLIGHT);
    let servfails = rig
        .out
        .frames
        .drain(..)
        .filter_map(|f| udp_payload(&f))
        .filter(|(_, _, msg)| msg[3] & 0xf == 2)
        .count();
    assert_eq!(
        servfails,
        10_000 - MAX_IN_FLIGHT,
        "the rest are answered SERVFAIL at once"
    );
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    rig.run_until("held lookups answered", |rig| {
        rig.stack.pending_dns.is_empty()
    });
    assert_eq!(resolve(&mut rig, "pkg.test").0, 0);
}

#[test]
fn oversized_and_fragmented_udp_is_dropped() {
    let mut rig = Rig::new(Rig::policy(Mode::Public, &["127.0.0.1"], &[]));
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
    // A 64 KiB datagram as the guest's IP layer fragments it.
    let big = udp_frame(7000, dst, &vec![0u8; 1472]);
    for offset in 0..45u16 {
        let mut frame = big.clone();
        let mf = if offset < 44 { 0x2000 } else { 0 };
        frame[20..22].copy_from_slice(&(mf | (offset * 185)).to_be_bytes());
        fix_checksums(&mut frame);
        assert!(rig.raw(&frame).is_empty());
    }
    // A UDP header claiming more than the packet holds.
    let mut lying = udp_frame(7001, dst, b"short");
    lying[38..40].copy_from_slice(&60_000u16.to_be_bytes());
    assert!(rig.raw(&lying).is_empty());
    // A frame far larger than the MTU.
    let jumbo = udp_frame(7002, SocketAddrV4::new(GATEWAY, 53), &vec![0u8; 8000]);
    assert!(rig.raw(&jumbo).is_empty());
    assert_eq!(rig.stack.udp.len(), 0, "no flow from any of them");
    assert!(rig.stack.stats().dropped_frames >= 46);
    let _ = SocketAddr::V4(dst);
}

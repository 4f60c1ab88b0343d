//! Frame-by-frame tests of the stack, with a smoltcp guest and real host
//! sockets on loopback.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet,
    Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr,
};

use super::rig::*;
use crate::audit::{Decision, NameSource, Proto};
use crate::policy::Mode;

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    }
}

#[test]
fn arp_for_the_gateway_is_answered_and_nothing_else_is() {
    let mut rig = Rig::new(|_| {});
    let replies = rig.raw(&arp_request_frame(GATEWAY));
    assert_eq!(replies.len(), 1);
    let eth = EthernetFrame::new_checked(&replies[0][..]).unwrap();
    let arp = ArpPacket::new_checked(eth.payload()).unwrap();
    assert_eq!(arp.operation(), ArpOperation::Reply);
    assert_eq!(arp.source_protocol_addr(), GATEWAY.octets());
    assert_eq!(arp.source_hardware_addr(), super::GATEWAY_MAC);
    // Not for other addresses (not even the guest's own: no fake conflicts).
    assert!(rig.raw(&arp_request_frame(GUEST_IP)).is_empty());
    assert!(rig
        .raw(&arp_request_frame(Ipv4Addr::new(10, 0, 2, 3)))
        .is_empty());
    // A frame from another MAC is ignored.
    let mut spoofed = arp_request_frame(GATEWAY);
    spoofed[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    assert!(rig.raw(&spoofed).is_empty());
}

#[test]
fn the_gateway_answers_ping_and_other_addresses_do_not() {
    let mut rig = Rig::new(|_| {});
    rig.raw(&arp_request_frame(GATEWAY));
    let ping = |dst: Ipv4Addr| {
        let icmp = Icmpv4Repr::EchoRequest {
            ident: 1,
            seq_no: 2,
            data: b"hello",
        };
        let ip = Ipv4Repr {
            src_addr: GUEST_IP,
            dst_addr: dst,
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let mut frame = vec![0u8; 14 + 20 + icmp.buffer_len()];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_src_addr(EthernetAddress(GUEST_MAC));
        eth.set_dst_addr(EthernetAddress(super::GATEWAY_MAC));
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let caps = ChecksumCapabilities::default();
        let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.emit(&mut packet, &caps);
        icmp.emit(
            &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
            &caps,
        );
        frame
    };
    let replies = rig.raw(&ping(GATEWAY));
    assert_eq!(replies.len(), 1, "echo reply from the gateway");
    let eth = EthernetFrame::new_checked(&replies[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.src_addr(), GATEWAY);
    assert!(
        rig.raw(&ping(TEST_HOST)).is_empty(),
        "no made-up replies for the world"
    );
}

#[test]
fn an_allowed_connection_is_relayed_both_ways_and_audited() {
    let server = echo_server();
    let mut rig = Rig::new(Rig::policy(Mode::Public, &["127.0.0.1"], &[]));
    let conn = rig.connect(v4(server));
    assert!(rig.established(conn));
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let echoed = rig.exchange(conn, &data, data.len());
    assert_eq!(echoed, data);
    rig.socket(conn).close();
    rig.run_until("flow closed", |rig| rig.stack.flow_count() == 0);
    let records = rig.audit();
    let last = records.last().unwrap();
    assert_eq!(last.decision, Decision::Allow);
    assert_eq!(last.proto, Proto::Tcp);
    assert_eq!(last.dst, server.to_string());
    assert_eq!(last.rule.as_deref(), Some("127.0.0.1"));
    assert_eq!(last.bytes_out, data.len() as u64);
    assert_eq!(last.bytes_in, data.len() as u64);
}

#[test]
fn refused_ranges_get_a_reset_and_no_host_socket() {
    let mut rig = Rig::new(|_| {});
    let server = echo_server();
    for dst in [
        v4(server), // the host's loopback
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
        SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80),
        SocketAddrV4::new(Ipv4Addr::new(100, 64, 0, 1), 80),
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 80),
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 22), // the host itself
        SocketAddrV4::new(GATEWAY, 8080),                    // host service not allowed
    ] {
        let conn = rig.connect(dst);
        assert!(!rig.established(conn), "{dst} must be refused");
        let record = rig.audit().pop().unwrap();
        assert_eq!(record.decision, Decision::Deny, "{dst}");
        assert_eq!(record.dst, dst.to_string());
        assert!(record.reason.is_some());
    }
    assert_eq!(
        rig.redirects.load(Ordering::SeqCst),
        0,
        "no host socket was opened"
    );
    let metadata = rig
        .audit()
        .into_iter()
        .find(|r| r.dst.starts_with("169.254"))
        .unwrap();
    assert!(metadata.reason.unwrap().contains("metadata"));
}

#[test]
fn host_services_are_reached_at_the_gateway() {
    let server = echo_server();
    let rule = format!("host:{}", server.port());
    let mut rig = Rig::new(Rig::policy(Mode::Public, &[&rule], &[]));
    let conn = rig.connect(SocketAddrV4::new(GATEWAY, server.port()));
    assert!(rig.established(conn));
    assert_eq!(rig.exchange(conn, b"ping", 4), b"ping");
}

#[test]
fn a_refused_host_connection_resets_the_guest() {
    // Allowed by rule, but nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut rig = Rig::new(Rig::policy(Mode::Public, &["127.0.0.0/8"], &[]));
    let conn = rig.connect(v4(closed));
    assert!(!rig.established(conn));
    let record = rig.audit().pop().unwrap();
    assert_eq!(record.decision, Decision::Allow);
    assert!(record.reason.unwrap().contains("connect failed"));
}

#[test]
fn dns_answers_pins_and_refuses_by_policy() {
    let mut rig = Rig::new(Rig::policy(
        Mode::Allowlist,
        &["pkg.test", ".example.com"],
        &[],
    ));
    assert_eq!(resolve(&mut rig, "pkg.test"), (0, vec![TEST_HOST]));
    assert_eq!(
        resolve(&mut rig, "a.example.com"),
        (0, vec![Ipv4Addr::new(203, 0, 113, 20)])
    );
    assert_eq!(
        resolve(&mut rig, "other.test").0,
        5,
        "REFUSED in allowlist mode"
    );
    assert_eq!(
        resolve(&mut rig, "host.microagent.internal"),
        (0, vec![GATEWAY])
    );
    let records = rig.audit();
    let refused = records
        .iter()
        .find(|r| r.name.as_deref() == Some("other.test"))
        .unwrap();
    assert_eq!(refused.decision, Decision::Deny);
    assert_eq!(refused.proto, Proto::Dns);
    let mut public = Rig::new(|_| {});
    assert_eq!(resolve(&mut public, "nonexistent.test").0, 3, "NXDOMAIN");
}

#[test]
fn allowlist_needs_this_vms_dns_answer_and_a_matching_sni() {
    let tls = echo_server();
    let ssh = echo_server();
    let mut rig = Rig::new(Rig::policy(Mode::Allowlist, &["pkg.test"], &[]));
    rig.route(SocketAddr::V4(SocketAddrV4::new(TEST_HOST, 443)), tls);
    rig.route(SocketAddr::V4(SocketAddrV4::new(TEST_HOST, 22)), ssh);
    // Direct IP, no DNS: refused.
    let conn = rig.connect(SocketAddrV4::new(TEST_HOST, 22));
    assert!(!rig.established(conn));
    assert_eq!(rig.audit().pop().unwrap().decision, Decision::Deny);
    // After this VM's DNS answered pkg.test with it: allowed.
    resolve(&mut rig, "pkg.test");
    let conn = rig.connect(SocketAddrV4::new(TEST_HOST, 22));
    assert!(rig.established(conn));
    assert_eq!(rig.exchange(conn, b"SSH-2.0", 7), b"SSH-2.0");
    rig.socket(conn).close();
    rig.run_until("ssh closed", |rig| rig.stack.tcp.is_empty());
    // 443 with the SNI of another name (same address): refused after the hello.
    let hello = crate::sniff::tests::client_hello(Some("other.test"), 1800);
    let conn = rig.connect(SocketAddrV4::new(TEST_HOST, 443));
    assert!(
        rig.established(conn),
        "the handshake completes so the hello can be read"
    );
    rig.socket(conn).send_slice(&hello).unwrap();
    rig.run_until("reset after the hello", |rig| {
        rig.socket(conn).state() == tcp::State::Closed
    });
    let denied = rig.audit().pop().unwrap();
    assert_eq!(denied.decision, Decision::Deny);
    assert_eq!(denied.name.as_deref(), Some("other.test"));
    assert_eq!(denied.name_source, Some(NameSource::Sni));
    // 443 with the right SNI: the server gets the hello intact.
    let hello = crate::sniff::tests::client_hello(Some("pkg.test"), 1800);
    let conn = rig.connect(SocketAddrV4::new(TEST_HOST, 443));
    assert!(rig.established(conn));
    assert_eq!(rig.exchange(conn, &hello, hello.len()), hello);
    rig.socket(conn).close();
    rig.run_until("closed", |rig| rig.stack.tcp.is_empty());
    let allowed = rig.audit().pop().unwrap();
    assert_eq!(allowed.decision, Decision::Allow);
    assert_eq!(allowed.name_source, Some(NameSource::Sni));
}

#[test]
fn the_host_header_decides_port_80() {
    let web = echo_server();
    let mut rig = Rig::new(Rig::policy(Mode::Allowlist, &["pkg.test"], &[]));
    rig.route(SocketAddr::V4(SocketAddrV4::new(TEST_HOST, 80)), web);
    resolve(&mut rig, "pkg.test");
    let good = b"GET /x HTTP/1.1\r\nHost: pkg.test\r\n\r\n";
    let conn = rig.connect(SocketAddrV4::new(TEST_HOST, 80));
    assert!(rig.established(conn));
    assert_eq!(rig.exchange(conn, good, good.len()), good);
    let conn = rig.connect(SocketAddrV4::new(TEST_HOST, 80));
    assert!(rig.established(conn));
    rig.socket(conn)
        .send_slice(b"GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .unwrap();
    rig.run_until("reset", |rig| {
        rig.socket(conn).state() == tcp::State::Closed
    });
    let denied = rig.audit().pop().unwrap();
    assert_eq!(denied.name_source, Some(NameSource::Host));
}

#[test]
fn a_name_rule_never_unlocks_a_refused_range() {
    let server = echo_server();
    let mut rig = Rig::new(Rig::policy(
        Mode::Allowlist,
        &["rebind.test", "private.test"],
        &[],
    ));
    assert_eq!(
        resolve(&mut rig, "rebind.test"),
        (0, vec![Ipv4Addr::LOCALHOST])
    );
    let conn = rig.connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, server.port()));
    assert!(!rig.established(conn));
    let record = rig.audit().pop().unwrap();
    assert_eq!(record.decision, Decision::Deny);
    assert!(record.reason.unwrap().contains("loopback"));
    resolve(&mut rig, "private.test");
    let conn = rig.connect(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80));
    assert!(!rig.established(conn));
    assert_eq!(rig.redirects.load(Ordering::SeqCst), 0);
}

#[test]
fn deny_wins_over_allow() {
    let server = echo_server();
    let rule = format!("127.0.0.1:{}", server.port());
    let mut rig = Rig::new(Rig::policy(Mode::Public, &["127.0.0.0/8"], &[&rule]));
    let conn = rig.connect(v4(server));
    assert!(!rig.established(conn));
    assert_eq!(
        rig.audit().pop().unwrap().rule.as_deref(),
        Some(rule.as_str())
    );
}

#[test]
fn udp_is_relayed_for_allowed_flows_only() {
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = v4(echo.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let mut rig = Rig::new(Rig::policy(Mode::Public, &["127.0.0.1"], &[]));
    rig.stack.handle_frame(
        &udp_frame(6000, addr, b"datagram"),
        std::time::Instant::now(),
        &mut rig.out,
    );
    let mut reply = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reply.is_none() {
        assert!(std::time::Instant::now() < deadline);
        rig.wait_host(std::time::Duration::from_millis(10));
        reply = rig.out.frames.drain(..).find_map(|f| udp_payload(&f));
    }
    assert_eq!(reply.unwrap(), (addr, 6000, b"datagram".to_vec()));
    // A refused destination: an ICMP "administratively prohibited" from the
    // gateway, one audit line, no host socket.
    let metadata = SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 53);
    let replies = rig.raw(&udp_frame(6001, metadata, b"x"));
    assert_eq!(replies.len(), 1);
    let eth = EthernetFrame::new_checked(&replies[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.next_header()),
        (GATEWAY, IpProtocol::Icmp)
    );
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (3, 13));
    assert_eq!(rig.stack.udp.len(), 1, "only the allowed flow");
    assert_eq!(rig.audit().pop().unwrap().dst, metadata.to_string());
}

#[test]
fn dns_over_tcp_is_answered_by_the_stack() {
    let mut rig = Rig::new(|_| {});
    let conn = rig.connect(SocketAddrV4::new(GATEWAY, 53));
    assert!(rig.established(conn));
    let query = dns_query(9, "pkg.test", 1);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let answer = rig.exchange(conn, &framed, 2 + query.len() + 16);
    assert_eq!(&answer[2..4], &[0, 9]);
    assert_eq!(&answer[answer.len() - 4..], &TEST_HOST.octets());
}

#[test]
fn the_connection_limit_is_enforced() {
    let server = echo_server();
    let mut rig = Rig::new(|c| {
        c.policy.allow = vec![crate::policy::Rule::parse("127.0.0.1").unwrap()];
        c.policy.limits.max_connections = 3;
    });
    let conns: Vec<_> = (0..3).map(|_| rig.connect(v4(server))).collect();
    for c in &conns {
        assert!(rig.established(*c));
    }
    let fourth = rig.connect(v4(server));
    assert!(!rig.established(fourth));
    assert!(rig
        .audit()
        .pop()
        .unwrap()
        .reason
        .unwrap()
        .contains("connection limit"));
    rig.socket(conns[0]).close();
    rig.run_until("a slot frees", |rig| rig.stack.flow_count() == 2);
    let fifth = rig.connect(v4(server));
    assert!(rig.established(fifth));
}

#[test]
fn the_byte_limit_cuts_flows() {
    let server = echo_server();
    let mut rig = Rig::new(|c| {
        c.policy.allow = vec![crate::policy::Rule::parse("127.0.0.1").unwrap()];
        c.policy.limits.max_total_bytes = 100_000;
    });
    let conn = rig.connect(v4(server));
    assert!(rig.established(conn));
    let data = vec![7u8; 500_000];
    let mut sent = 0;
    rig.run_until("cut", |rig| {
        let s = rig.socket(conn);
        if s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap_or(0);
        }
        while s.can_recv() {
            let _ = s.recv(|b| (b.len(), ()));
        }
        s.state() == tcp::State::Closed
    });
    rig.run_until("flow gone", |rig| rig.stack.flow_count() == 0);
    let record = rig.audit().pop().unwrap();
    assert!(record.reason.unwrap().contains("traffic limit"));
    let again = rig.connect(v4(server));
    assert!(!rig.established(again));
}

#[test]
fn shutdown_writes_the_records_of_open_flows() {
    let server = echo_server();
    let mut rig = Rig::new(Rig::policy(Mode::Public, &["127.0.0.1"], &[]));
    let conn = rig.connect(v4(server));
    assert!(rig.established(conn));
    assert_eq!(rig.exchange(conn, b"abc", 3), b"abc");
    assert!(
        rig.audit().is_empty(),
        "an open flow is written when it ends"
    );
    rig.stack.shutdown(std::time::Instant::now());
    assert_eq!(rig.stack.flow_count(), 0);
    let record = rig.audit().pop().unwrap();
    assert_eq!(
        (record.decision, record.bytes_out, record.bytes_in),
        (Decision::Allow, 3, 3)
    );
}

/// The ClientHello a real TLS client (`openssl s_client`) sends for `sni`,
/// captured by a loopback listener.
fn real_client_hello(sni: &str) -> Vec<u8> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl");
    let (mut conn, _) = listener.accept().unwrap();
    let mut hello = Vec::new();
    let mut buf = [0u8; 4096];
    while crate::sniff::tls_sni(&hello) == crate::sniff::Sniffed::Incomplete {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "openssl closed before its hello was complete");
        hello.extend_from_slice(&buf[..n]);
    }
    let _ = client.kill();
    let _ = client.wait();
    hello
}

#[test]
fn a_real_client_hello_is_judged_by_its_sni() {
    let good = real_client_hello("pkg.test");
    assert_eq!(
        crate::sniff::tls_sni(&good),
        crate::sniff::Sniffed::Name("pkg.test".into())
    );
    let bad = real_client_hello("other.test");
    let tls = echo_server();
    let mut rig = Rig::new(Rig::policy(Mode::Allowlist, &["pkg.test"], &[]));
    rig.route(SocketAddr::V4(SocketAddrV4::new(TEST_HOST, 443)), tls);
    resolve(&mut rig, "pkg.test");
    let conn = rig.connect(SocketAddrV4::new(TEST_HOST, 443));
    assert!(rig.established(conn));
    assert_eq!(
        rig.exchange(conn, &good, good.len()),
        good,
        "relayed intact"
    );
    let conn = rig.connect(SocketAddrV4::new(TEST_HOST, 443));
    assert!(rig.established(conn));
    rig.socket(conn).send_slice(&bad).unwrap();
    rig.run_until("reset", |rig| {
        rig.socket(conn).state() == tcp::State::Closed
    });
    let denied = rig.audit().pop().unwrap();
    assert_eq!(denied.name.as_deref(), Some("other.test"));
    assert_eq!(denied.name_source, Some(NameSource::Sni));
}

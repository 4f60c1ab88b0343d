//! The helper process under a hostile guest, seen from outside: a flood of
//! SYNs, DNS queries and junk over the real stream frontend, while its
//! resident memory is measured. Every destination is refused by policy or
//! is a closed loopback port, and DNS is allowlist-only with no names, so
//! nothing is resolved and no packet leaves the machine.

mod common;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use common::{start_helper, terminate};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// An IPv4 frame from the guest, framed for the stream socket.
fn framed(
    dst: Ipv4Addr,
    protocol: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: GUEST,
        dst_addr: dst,
        next_header: protocol,
        payload_len,
        hop_limit: 64,
    };
    let mut frame = vec![0u8; 14 + 20 + payload_len];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_src_addr(GUEST_MAC);
    eth.set_dst_addr(GATEWAY_MAC);
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    fill(packet.payload_mut());
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

fn syn(src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(7),
        ack_number: None,
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    framed(dst, IpProtocol::Tcp, tcp.buffer_len(), |p| {
        tcp.emit(
            &mut TcpPacket::new_unchecked(p),
            &GUEST.into(),
            &dst.into(),
            &ChecksumCapabilities::default(),
        )
    })
}

fn udp(src_port: u16, dst: Ipv4Addr, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let repr = UdpRepr { src_port, dst_port };
    framed(dst, IpProtocol::Udp, 8 + data.len(), |p| {
        repr.emit(
            &mut UdpPacket::new_unchecked(p),
            &GUEST.into(),
            &dst.into(),
            data.len(),
            |d| d.copy_from_slice(data),
            &ChecksumCapabilities::default(),
        )
    })
}

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Drains what the helper sends, so its output never backs up.
fn drain(vmm: &mut UnixStream) -> usize {
    let mut buf = [0u8; 65536];
    let mut total = 0;
    loop {
        match vmm.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_flooding_guest_leaves_the_helper_up_and_small() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("net.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"frontend":{{"kind":"stream","path":{:?}}},"auditPath":{:?},
                "policy":{{"mode":"allowlist","allow":["127.0.0.1:{closed}"],"limits":{{"maxConnections":64}}}}}}"#,
            dir.path().join("f.sock").to_str().unwrap(),
            dir.path().join("egress.jsonl").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut helper = start_helper(&config);
    let mut vmm = UnixStream::connect(dir.path().join("f.sock")).unwrap();
    vmm.set_nonblocking(true).unwrap();
    let before = rss_kib(helper.id());
    let started = Instant::now();
    let mut sent = Vec::new();
    for n in 0..10_000u16 {
        let port = 20_000 + n;
        sent.extend(syn(port, Ipv4Addr::new(10, 0, 0, 1), 80));
        sent.extend(syn(port, Ipv4Addr::LOCALHOST, closed));
        sent.extend(udp(
            port,
            GATEWAY,
            53,
            &dns_query(n, &format!("n{n}.flood.test")),
        ));
        sent.extend(udp(
            port,
            Ipv4Addr::new(169, 254, 169, 254),
            53,
            &[0u8; 1400],
        ));
        if sent.len() > 256 << 10 {
            let mut at = 0;
            while at < sent.len() {
                match vmm.write(&sent[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        drain(&mut vmm);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            sent.clear();
        }
    }
    vmm.set_nonblocking(false).unwrap();
    vmm.write_all(&sent).unwrap();
    // The helper still answers: a DNS query for its own name comes back.
    vmm.write_all(&udp(
        999,
        GATEWAY,
        53,
        &dns_query(4242, "host.microagent.internal"),
    ))
    .unwrap();
    vmm.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut seen = Vec::new();
    let needle = [0x10u8, 0x92]; // 4242
    loop {
        let mut buf = [0u8; 65536];
        let n = vmm.read(&mut buf).expect("the helper went silent");
        assert!(n > 0, "the helper hung up");
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(2).any(|w| w == needle) && seen.windows(4).any(|w| w == [10, 0, 2, 2]) {
            break;
        }
        if seen.len() > 1 << 20 {
            seen.drain(..seen.len() - 4096);
        }
    }
    let after = rss_kib(helper.id());
    eprintln!("helper RSS under the flood: {before} KiB -> {after} KiB");
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB under the flood"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // Identical denies are summarised; distinct names each get a line, and
    // the file stays within its rotation bound.
    let audit = std::fs::read_to_string(dir.path().join("egress.jsonl")).unwrap();
    assert!(audit.len() as u64 <= vmkit_net::audit::DEFAULT_MAX_BYTES);
    let identical: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"dst\":\"10.0.0.1:80\""))
        .collect();
    // At most one line per repeat window (5 s); how the later ones count
    // the rest is the reporter's unit test.
    let windows = 1 + started.elapsed().as_secs() as usize / 5;
    assert!(
        identical.len() <= windows,
        "10,000 identical denies in {windows} windows: {identical:#?}"
    );
    assert!(audit.contains("169.254.169.254:53"));
    assert!(
        audit.contains("n9999.flood.test"),
        "the last refused name is there"
    );
    terminate(&helper);
    assert!(helper.wait().unwrap().success());
}

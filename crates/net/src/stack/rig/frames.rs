//! Raw frames as the guest would send them, and readers of what the stack
//! sends back.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use super::{GATEWAY_MAC, GUEST_IP, GUEST_MAC};
use crate::stack::frames::{write_ipv4, HEADERS};

/// A UDP datagram from the guest as an Ethernet frame.
pub fn udp_frame(src_port: u16, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let ip_repr = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let udp_repr = UdpRepr {
        src_port,
        dst_port: dst.port(),
    };
    let mut frame = vec![0u8; HEADERS + 8 + payload.len()];
    let udp = write_ipv4(
        &mut frame,
        EthernetAddress(GUEST_MAC),
        EthernetAddress(GATEWAY_MAC),
        &ip_repr,
    );
    udp_repr.emit(
        &mut UdpPacket::new_unchecked(udp),
        &GUEST_IP.into(),
        &(*dst.ip()).into(),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    frame
}

/// The UDP payload of a frame to the guest, with its source.
pub fn udp_payload(frame: &[u8]) -> Option<(SocketAddrV4, u16, Vec<u8>)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Udp || ip.dst_addr() != GUEST_IP {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if !udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()) {
        return None;
    }
    Some((
        SocketAddrV4::new(ip.src_addr(), udp.src_port()),
        udp.dst_port(),
        udp.payload().to_vec(),
    ))
}

/// A DNS query message for `name`, type `qtype`.
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    crate::dns::tests::query_message(id, name, qtype, false)
}

/// An ARP request from the guest for `target`.
pub fn arp_request_frame(target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut frame = vec![0u8; 14 + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_src_addr(EthernetAddress(GUEST_MAC));
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_ethertype(EthernetProtocol::Arp);
    repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    frame
}

/// A TCP SYN from the guest's `src_port` to `dst`.
pub fn syn_frame(src_port: u16, dst: SocketAddrV4) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port,
        dst_port: dst.port(),
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip_repr = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut frame = vec![0u8; HEADERS + tcp.buffer_len()];
    let segment = write_ipv4(
        &mut frame,
        EthernetAddress(GUEST_MAC),
        EthernetAddress(GATEWAY_MAC),
        &ip_repr,
    );
    tcp.emit(
        &mut TcpPacket::new_unchecked(segment),
        &GUEST_IP.into(),
        &(*dst.ip()).into(),
        &ChecksumCapabilities::default(),
    );
    frame
}

//! The Ethernet + IPv4 headers of the frames the stack builds itself (UDP
//! answers, DNS, ICMP errors).

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{EthernetAddress, EthernetFrame, EthernetProtocol, Ipv4Packet, Ipv4Repr};

/// Bytes of Ethernet plus IPv4 header (no IP options are written).
pub(crate) const HEADERS: usize = 14 + 20;

/// Writes the Ethernet and IPv4 headers of `ip` into `frame` (which must be
/// `HEADERS + ip.payload_len` long) and returns the IP payload to fill.
pub(crate) fn write_ipv4<'f>(
    frame: &'f mut [u8],
    src: EthernetAddress,
    dst: EthernetAddress,
    ip: &Ipv4Repr,
) -> &'f mut [u8] {
    {
        let mut eth = EthernetFrame::new_unchecked(&mut *frame);
        eth.set_src_addr(src);
        eth.set_dst_addr(dst);
        eth.set_ethertype(EthernetProtocol::Ipv4);
        ip.emit(
            &mut Ipv4Packet::new_unchecked(eth.payload_mut()),
            &ChecksumCapabilities::default(),
        );
    }
    &mut frame[HEADERS..]
}

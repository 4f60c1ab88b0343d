//! The Firecracker frontend: a TAP device that Firecracker owns, whose
//! frames the stack reads and writes through an `AF_PACKET` socket bound to
//! the TAP's host side.
//!
//! Why not open the TAP ourselves: a single-queue TAP has one owner, and
//! Firecracker opens it (`TUNSETIFF`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`)
//! and fails with `EBUSY` if anyone else holds it. A multi-queue TAP does
//! not help: Firecracker does not ask for `IFF_MULTI_QUEUE` (the kernel
//! refuses the mismatch with `EINVAL`), and the queues of one TAP do not
//! talk to each other anyway, they all face the kernel. The kernel's side
//! of the TAP is an ordinary netdev, though: what Firecracker writes to
//! the TAP fd arrives there, and what is sent on it goes to the TAP fd. So
//! the helper creates a persistent TAP (owned by its user, so Firecracker
//! needs no privilege to open it), lets go of it, and binds a packet
//! socket to the netdev. Firecracker's own tests reach a TAP the same way.
//!
//! The host kernel must not act on the guest's frames itself (they would
//! bypass the policy: a broadcast to a host UDP service, say). The netdev
//! gets no address, `IFF_NOARP` (no ARP answers), IPv6 off (no link-local
//! address, nothing sent), and an nftables `netdev` ingress chain that
//! drops every frame: packet sockets see a frame before that hook, the
//! kernel's IP stack only after it, so the stack sees everything and the
//! kernel nothing.
//!
//! Privileges: creating the TAP, setting its flags and the ingress chain
//! need `CAP_NET_ADMIN`; the packet socket needs `CAP_NET_RAW` (root, or
//! `setcap cap_net_admin,cap_net_raw+ep microagent-net`). Firecracker needs
//! none for a TAP its user owns.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

/// Bytes of `struct virtio_net_hdr` before each frame on the packet
/// socket (`PACKET_VNET_HDR`).
pub const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// `struct ifreq` as the TUN and interface-flag ioctls read it.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req
            .name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        req
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// The TAP's flags as Firecracker opens it; the helper creates it with
/// the same, so the device looks as Firecracker expects.
pub const FIRECRACKER_TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// A persistent TAP made for one VM, and the packet socket on its host
/// side. Dropping it removes the ingress chain and the device.
#[derive(Debug)]
pub struct TapLink {
    name: String,
    socket: OwnedFd,
}

impl TapLink {
    /// Creates (or takes over a stale) TAP `name`, isolates its host side
    /// from the kernel's stack and binds the packet socket. Nothing is
    /// left behind on error.
    pub fn create(name: &str) -> io::Result<TapLink> {
        let named = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("TAP device {name}: {what}: {e}"))
        };
        {
            let tun = attach(name).map_err(|e| named("TUNSETIFF", e))?;
            tun_ioctl(&tun, TUNSETPERSIST, 1).map_err(|e| named("TUNSETPERSIST", e))?;
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            tun_ioctl(&tun, TUNSETOWNER, uid as libc::c_ulong)
                .map_err(|e| named("TUNSETOWNER", e))?;
            // The fd closes here: the device stays (persistent) for
            // Firecracker to open.
        }
        let socket = packet_socket().map_err(|e| {
            let _ = delete(name);
            named("AF_PACKET socket (needs CAP_NET_RAW)", e)
        })?;
        // From here on, Drop cleans up.
        let link = TapLink {
            name: name.to_owned(),
            socket,
        };
        isolate(name).map_err(|e| named("isolating it from the host's stack", e))?;
        set_up_noarp(&link.socket, name).map_err(|e| named("SIOCSIFFLAGS", e))?;
        bind(&link.socket, name).map_err(|e| named("binding the packet socket", e))?;
        Ok(link)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The packet socket.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for TapLink {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table netdev {}\n", table(&self.name)));
        let _ = delete(&self.name);
    }
}

/// Removes TAP `name` and its ingress chain if the device exists (a
/// helper killed with SIGKILL cannot clean up after itself).
pub fn remove_leftover(name: &str) {
    if nix::net::if_::if_nametoindex(name).is_ok() {
        let _ = delete(name);
        let _ = nft(&format!("delete table netdev {}\n", table(name)));
    }
}

/// Opens `/dev/net/tun` and attaches to (or creates) TAP `name` with
/// Firecracker's flags.
pub fn attach(name: &str) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev/net/tun"))?;
    let mut req = IfReq::new(name, FIRECRACKER_TAP_FLAGS);
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (name + flags,
    // 40 bytes), which `IfReq` lays out with repr(C); the fd is the open
    // tun device.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn tun_ioctl(tun: &File, request: libc::c_ulong, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST and TUNSETOWNER take their argument by value;
    // the fd is an attached tun device.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), request as _, value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Deletes the interface `name` (`RTM_DELLINK` over rtnetlink), whether or
/// not Firecracker still holds the TAP: a VMM that outlives the helper
/// then reads EOF-like errors instead of a device the stack no longer
/// serves.
pub fn delete(name: &str) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(name).map_err(io::Error::from)?;
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct nlmsghdr (16 bytes) + struct ifinfomsg (16 bytes).
    let mut msg = [0u8; 32];
    msg[0..4].copy_from_slice(&32u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&libc::RTM_DELLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[20..24].copy_from_slice(&(index as i32).to_ne_bytes());
    // SAFETY: send reads `msg.len()` bytes from `msg`; the kernel is the
    // default destination of an unbound netlink socket.
    if unsafe { libc::send(socket.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ack = [0u8; 256];
    // SAFETY: recv writes at most `ack.len()` bytes into `ack`.
    let n = unsafe { libc::recv(socket.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // NLMSG_ERROR (2) carries the errno (negated) right after the header.
    if n >= 20 && u16::from_ne_bytes([ack[4], ack[5]]) == libc::NLMSG_ERROR as u16 {
        let errno = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(-errno));
        }
    }
    Ok(())
}

fn packet_socket() -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // Each frame carries a virtio_net_hdr, so a frame whose checksum the
    // guest left to the device is recognised and completed.
    set_int(&socket, PACKET_VNET_HDR, 1)?;
    // The socket must not read back what it (or the kernel) sends.
    set_int(&socket, PACKET_IGNORE_OUTGOING, 1)?;
    let raw = socket2::SockRef::from(&socket);
    raw.set_send_buffer_size(1 << 20)?;
    raw.set_recv_buffer_size(4 << 20)?;
    Ok(socket)
}

fn set_int(socket: &OwnedFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&value`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_up_noarp(socket: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = IfReq::new(name, 0);
    // SAFETY: SIOCGIFFLAGS fills the flags of a `struct ifreq`.
    if unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut req as *mut IfReq,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    req.flags |= (libc::IFF_UP | libc::IFF_NOARP) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags of a `struct ifreq`.
    if unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &mut req as *mut IfReq,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind(socket: &OwnedFd, name: &str) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(name).map_err(io::Error::from)?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: bind reads `size_of::<sockaddr_ll>()` bytes from `&addr`.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The nftables table that holds the TAP's ingress drop.
pub fn table(name: &str) -> String {
    format!("microagent-{name}")
}

/// IPv6 off (before the device goes up, so it never gets a link-local
/// address or sends anything), and every frame dropped at ingress, after
/// the packet sockets saw it.
fn isolate(name: &str) -> io::Result<()> {
    match std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1") {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {} // no IPv6 in this kernel
        Err(e) => return Err(io::Error::new(e.kind(), format!("disable_ipv6: {e}"))),
    }
    let table = table(name);
    // `add` then `delete` makes a stale table of a killed helper go away.
    nft(&format!(
        "add table netdev {table}\ndelete table netdev {table}\n\
         table netdev {table} {{\n  chain guest {{\n    type filter hook ingress device \"{name}\" priority filter; policy drop;\n    counter\n  }}\n}}\n"
    ))
}

/// Where `nft` is: root's usual sbin folders first (often not on a user's
/// PATH), then PATH.
pub fn nft_program() -> Option<std::path::PathBuf> {
    let fixed = ["/usr/sbin/nft", "/sbin/nft"].map(std::path::PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    fixed
        .into_iter()
        .chain(std::env::split_paths(&path).map(|d| d.join("nft")))
        .find(|p| p.is_file())
}

fn nft(script: &str) -> io::Result<()> {
    let program = nft_program().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "nft (nftables) was not found; it keeps the host kernel from acting on the guest's frames",
        )
    })?;
    let mut child = Command::new(program)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// What a frame read from the packet socket (virtio_net_hdr first) is.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// An Ethernet frame, its checksum completed if the guest left it to
    /// the device.
    Frame(&'a [u8]),
    /// A segmentation-offload super-frame (the guest kernel was not told
    /// `virtio_net.csum=0`), or a header that does not fit: dropped.
    Dropped,
}

/// Takes the virtio_net_hdr off `buf` and completes a partial checksum
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`: the guest put the pseudo-header sum at
/// `csum_start + csum_offset` and left the rest to the device). Every
/// offset is checked; nothing here trusts the header.
pub fn receive(buf: &mut [u8]) -> Received<'_> {
    if buf.len() < VNET_HDR_LEN {
        return Received::Dropped;
    }
    let (hdr, frame) = buf.split_at_mut(VNET_HDR_LEN);
    let flags = hdr[0];
    let gso_type = hdr[1];
    if gso_type != 0 {
        return Received::Dropped;
    }
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let start = usize::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
        let offset = usize::from(u16::from_ne_bytes([hdr[8], hdr[9]]));
        let at = start + offset;
        if start >= frame.len() || at + 2 > frame.len() {
            return Received::Dropped;
        }
        let mut sum = ones_complement_sum(&frame[start..]);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let mut checksum = !(sum as u16);
        if checksum == 0 {
            // 0 means "no checksum" for UDP; the same value is 0xffff.
            checksum = 0xffff;
        }
        frame[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    }
    Received::Frame(frame)
}

fn ones_complement_sum(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u32 = 0;
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso: u8, start: u16, offset: u16) -> Vec<u8> {
        let mut h = vec![flags, gso, 0, 0, 0, 0];
        h.extend_from_slice(&start.to_ne_bytes());
        h.extend_from_slice(&offset.to_ne_bytes());
        h
    }

    #[test]
    fn a_partial_checksum_is_completed_as_the_device_would() {
        // An Ethernet + IPv4 + UDP frame with a full checksum, made by
        // smoltcp; then the same with only the pseudo-header sum in place.
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
        let payload = b"partial checksums are the device's job";
        let (src, dst) = ([10, 0, 2, 15], [203, 0, 113, 10]);
        let udp = UdpRepr {
            src_port: 4000,
            dst_port: 53,
        };
        let ip = Ipv4Repr {
            src_addr: src.into(),
            dst_addr: dst.into(),
            next_header: IpProtocol::Udp,
            payload_len: 8 + payload.len(),
            hop_limit: 64,
        };
        let mut frame = vec![0u8; 14 + 20 + 8 + payload.len()];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let caps = ChecksumCapabilities::default();
        let mut packet = Ipv4Packet::new_unchecked(&mut frame[14..]);
        ip.emit(&mut packet, &caps);
        udp.emit(
            &mut UdpPacket::new_unchecked(packet.payload_mut()),
            &IpAddress::from(ip.src_addr),
            &IpAddress::from(ip.dst_addr),
            payload.len(),
            |b| b.copy_from_slice(payload),
            &caps,
        );
        let full = u16::from_be_bytes([frame[40], frame[41]]);
        // The pseudo-header sum, as a guest with checksum offload leaves it.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        let mut sum = ones_complement_sum(&pseudo);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let mut partial = frame.clone();
        partial[40..42].copy_from_slice(&(sum as u16).to_be_bytes());
        let mut buf = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 34, 6);
        buf.extend_from_slice(&partial);
        let Received::Frame(done) = receive(&mut buf) else {
            panic!("dropped")
        };
        assert_eq!(u16::from_be_bytes([done[40], done[41]]), full);
        assert_eq!(done, &frame[..]);
    }

    #[test]
    fn hostile_headers_are_dropped_not_trusted() {
        let mut short = vec![0u8; 4];
        assert_eq!(receive(&mut short), Received::Dropped);
        let mut gso = hdr(0, 1, 0, 0);
        gso.extend_from_slice(&[0u8; 60]);
        assert_eq!(receive(&mut gso), Received::Dropped);
        for (start, offset) in [(60u16, 0u16), (58, 1), (u16::MAX, u16::MAX), (0, 59)] {
            let mut bad = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, start, offset);
            bad.extend_from_slice(&[0u8; 60]);
            assert_eq!(receive(&mut bad), Received::Dropped, "{start}+{offset}");
        }
        // Every header over every short frame: never a panic, never a
        // write outside the frame.
        for len in 0..40usize {
            for start in 0..48u16 {
                for offset in [0u16, 1, 6, 16, 40, u16::MAX] {
                    let mut buf = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, start, offset);
                    buf.extend(std::iter::repeat_n(0xa5, len));
                    let _ = receive(&mut buf);
                }
            }
        }
        let mut plain = hdr(0, 0, 0, 0);
        plain.extend_from_slice(&[7u8; 60]);
        assert_eq!(receive(&mut plain), Received::Frame(&[7u8; 60][..]));
    }
}

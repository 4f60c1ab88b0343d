//! The guest's network: brings up an interface with a static address,
//! route and MTU from the boot spec, and writes `/etc/resolv.conf` and
//! `/etc/hosts`. Done with ioctls on an `AF_INET` socket, because an image
//! need not ship `ip` or `ifconfig`, and there is no DHCP: the host-side
//! stack's addresses are fixed in the boot spec.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use vmkit_channel::GuestNetwork;

/// An `AF_INET` datagram socket: the handle the interface ioctls need.
struct IoctlSocket(OwnedFd);

impl IoctlSocket {
    fn new() -> io::Result<Self> {
        // SAFETY: creates a socket; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(IoctlSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// An `ifreq` naming `interface` (at most 15 bytes, checked by the
    /// boot spec's validation; longer names are cut, never overflow).
    fn request(interface: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        let room = req.ifr_name.len() - 1;
        for (dst, src) in req.ifr_name.iter_mut().zip(interface.bytes().take(room)) {
            *dst = src as libc::c_char;
        }
        req
    }

    /// Runs one interface ioctl on `req`, naming the step in the error.
    fn ioctl(&self, what: &str, op: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: every op used here reads or writes only the `ifreq` we
        // own, which is valid and correctly sized for the call.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), op as _, req as *mut libc::ifreq) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    }

    fn set_up(&self, interface: &str) -> io::Result<()> {
        let mut req = Self::request(interface);
        self.ioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.ioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut req)
    }

    fn set_addr(
        &self,
        interface: &str,
        what: &str,
        op: libc::c_ulong,
        ip: Ipv4Addr,
    ) -> io::Result<()> {
        let mut req = Self::request(interface);
        req.ifr_ifru.ifru_addr = sockaddr(ip);
        self.ioctl(what, op, &mut req)
    }

    fn set_mtu(&self, interface: &str, mtu: u32) -> io::Result<()> {
        let mut req = Self::request(interface);
        req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        self.ioctl("SIOCSIFMTU", libc::SIOCSIFMTU, &mut req)
    }

    fn add_default_route(&self, interface: &str, gateway: Ipv4Addr) -> io::Result<()> {
        // SAFETY: rtentry is plain old data; all-zero is a valid value.
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(gateway);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        let mut dev: Vec<libc::c_char> = interface.bytes().map(|b| b as libc::c_char).collect();
        dev.push(0);
        route.rt_dev = dev.as_mut_ptr();
        // SAFETY: SIOCADDRT reads the rtentry we own; `dev` (which it
        // points into) outlives the call.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SIOCADDRT as _, &route) } < 0 {
            let e = io::Error::last_os_error();
            // A second configuration of the same route is not a failure.
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(e.kind(), format!("SIOCADDRT: {e}")));
            }
        }
        Ok(())
    }
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes, and the kernel
    // reads a sockaddr with sa_family AF_INET as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Brings `interface` up (for `lo`, the kernel then assigns 127.0.0.1 itself).
pub fn interface_up(interface: &str) -> io::Result<()> {
    IoctlSocket::new()?.set_up(interface)
}

/// Configures the NIC as the boot spec says: MTU, address, netmask, up,
/// default route; then resolv.conf and hosts.
pub fn configure(net: &GuestNetwork) -> Result<(), String> {
    let fail = |e: io::Error| format!("network: {}: {e}", net.interface);
    let sock = IoctlSocket::new().map_err(fail)?;
    let ifname = net.interface.as_str();
    sock.set_mtu(ifname, net.mtu).map_err(fail)?;
    sock.set_addr(ifname, "SIOCSIFADDR", libc::SIOCSIFADDR, net.address)
        .map_err(fail)?;
    sock.set_addr(
        ifname,
        "SIOCSIFNETMASK",
        libc::SIOCSIFNETMASK,
        net.netmask(),
    )
    .map_err(fail)?;
    sock.set_up(ifname).map_err(fail)?;
    sock.add_default_route(ifname, net.gateway).map_err(fail)?;
    write_resolv_conf(Path::new("/etc/resolv.conf"), net)
        .map_err(|e| format!("network: /etc/resolv.conf: {e}"))?;
    write_hosts(Path::new("/etc/hosts"), net).map_err(|e| format!("network: /etc/hosts: {e}"))
}

/// Replaces `path` (often a symlink into a resolver daemon's run folder,
/// which does not run here) with a file naming the boot spec's servers.
pub fn write_resolv_conf(path: &Path, net: &GuestNetwork) -> io::Result<()> {
    let current = if is_file(path) {
        std::fs::read_to_string(path).ok()
    } else {
        None
    };
    replace_file(path, &net.resolv_conf(), current.as_deref())
}

/// Keeps the image's `/etc/hosts` lines except those from an earlier boot,
/// and adds the boot spec's entries, each marked.
pub fn write_hosts(path: &Path, net: &GuestNetwork) -> io::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let current = is_file(path).then_some(existing.as_str());
    replace_file(path, &net.hosts_file(&existing), current)
}

fn is_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// Writes `text` to `path` unless `current` (what `path` holds, when it is
/// a regular file) is exactly that: the root disk builder writes these
/// files for the standard network, and under TCG the first write to the
/// root filesystem costs ~15 ms of boot.
fn replace_file(path: &Path, text: &str, current: Option<&str>) -> io::Result<()> {
    if current == Some(text) {
        return Ok(());
    }
    let tmp = path.with_extension("microagent-tmp");
    std::fs::write(&tmp, text)?;
    // rename replaces a symlink itself rather than writing through it.
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> GuestNetwork {
        GuestNetwork::behind_gateway(
            Ipv4Addr::new(10, 0, 2, 15),
            24,
            Ipv4Addr::new(10, 0, 2, 2),
            1500,
        )
    }

    #[test]
    fn hosts_keeps_the_images_lines_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1\tlocalhost\n127.0.1.1\tws-1\n").unwrap();
        write_hosts(&hosts, &net()).unwrap();
        write_hosts(&hosts, &net()).unwrap();
        let text = std::fs::read_to_string(&hosts).unwrap();
        assert_eq!(
            text,
            "127.0.0.1\tlocalhost\n127.0.1.1\tws-1\n10.0.2.2\thost.microagent.internal\t# microagent\n"
        );
    }

    #[test]
    fn resolv_conf_replaces_a_symlink_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("stub-resolv.conf");
        std::fs::write(&target, "nameserver 127.0.0.53\n").unwrap();
        let link = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_resolv_conf(&link, &net()).unwrap();
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert!(std::fs::read_to_string(&link)
            .unwrap()
            .contains("nameserver 10.0.2.2\n"));
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "nameserver 127.0.0.53\n"
        );
    }

    #[test]
    fn a_file_already_right_is_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        write_resolv_conf(&resolv, &net()).unwrap();
        let first = std::fs::metadata(&resolv).unwrap().ino();
        write_resolv_conf(&resolv, &net()).unwrap();
        assert_eq!(std::fs::metadata(&resolv).unwrap().ino(), first);
        // Other content is replaced (a new file renamed over it).
        std::fs::write(&resolv, "nameserver 192.0.2.1\n").unwrap();
        write_resolv_conf(&resolv, &net()).unwrap();
        assert_ne!(std::fs::metadata(&resolv).unwrap().ino(), first);
        assert_eq!(
            std::fs::read_to_string(&resolv).unwrap(),
            net().resolv_conf()
        );
    }

    #[test]
    fn sockaddr_is_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(
            &sa.sa_data[2..6],
            &[10, 0, 2, 15].map(|b: u8| b as libc::c_char)
        );
    }
}

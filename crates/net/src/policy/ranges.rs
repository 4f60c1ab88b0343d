//! The address ranges a guest never reaches unless an IP/CIDR rule (or
//! `host:PORT`) names them: a name rule never unlocks them.

use std::net::{IpAddr, Ipv6Addr};

use super::rule::IpNet;

/// A refused range and why, for the audit log's `reason`.
struct Refused {
    net: IpNet,
    what: &'static str,
}

const fn v6(segments: [u16; 8], prefix: u8) -> IpNet {
    IpNet {
        addr: IpAddr::V6(Ipv6Addr::new(
            segments[0],
            segments[1],
            segments[2],
            segments[3],
            segments[4],
            segments[5],
            segments[6],
            segments[7],
        )),
        prefix,
    }
}

const REFUSED: &[Refused] = &[
    Refused {
        net: IpNet::v4(0, 0, 0, 0, 8),
        what: "\"this network\" (0.0.0.0/8)",
    },
    Refused {
        net: IpNet::v4(10, 0, 0, 0, 8),
        what: "private (10.0.0.0/8)",
    },
    Refused {
        net: IpNet::v4(100, 64, 0, 0, 10),
        what: "CGNAT (100.64.0.0/10)",
    },
    Refused {
        net: IpNet::v4(127, 0, 0, 0, 8),
        what: "loopback (127.0.0.0/8)",
    },
    Refused {
        net: IpNet::v4(169, 254, 169, 254, 32),
        what: "cloud metadata (169.254.169.254)",
    },
    Refused {
        net: IpNet::v4(169, 254, 0, 0, 16),
        what: "link-local (169.254.0.0/16)",
    },
    Refused {
        net: IpNet::v4(172, 16, 0, 0, 12),
        what: "private (172.16.0.0/12)",
    },
    Refused {
        net: IpNet::v4(192, 0, 0, 0, 24),
        what: "IETF protocol assignments (192.0.0.0/24)",
    },
    Refused {
        net: IpNet::v4(192, 168, 0, 0, 16),
        what: "private (192.168.0.0/16)",
    },
    Refused {
        net: IpNet::v4(224, 0, 0, 0, 4),
        what: "multicast (224.0.0.0/4)",
    },
    Refused {
        net: IpNet::v4(240, 0, 0, 0, 4),
        what: "reserved or broadcast (240.0.0.0/4)",
    },
    Refused {
        net: v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        what: "unspecified (::)",
    },
    Refused {
        net: v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        what: "loopback (::1)",
    },
    Refused {
        net: v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        what: "unique local (fc00::/7)",
    },
    Refused {
        net: v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        what: "link-local (fe80::/10)",
    },
    Refused {
        net: v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        what: "multicast (ff00::/8)",
    },
];

/// Why `ip` is refused unless an IP rule names it, or `None` if it is a
/// public address. IPv4-mapped IPv6 addresses are judged as IPv4.
/// The host's own addresses (`host_addrs`) are refused too.
pub fn refused_range(ip: IpAddr, host_addrs: &[IpAddr]) -> Option<String> {
    let plain = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if let Some(r) = REFUSED.iter().find(|r| r.net.contains(plain)) {
        return Some(format!("refused range: {}", r.what));
    }
    if host_addrs.contains(&plain) {
        return Some("refused: an address of the host itself".to_string());
    }
    None
}

/// The addresses of the host's own interfaces (so that `public` mode cannot
/// reach services bound to them, nor other VMs' published ports there).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut addrs = Vec::new();
    if let Ok(list) = nix::ifaddrs::getifaddrs() {
        for entry in list {
            let Some(address) = entry.address else {
                continue;
            };
            if let Some(v4) = address.as_sockaddr_in() {
                addrs.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = address.as_sockaddr_in6() {
                addrs.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refused_range_is_refused_and_public_addresses_are_not() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(refused_range(ip, &[]).is_some(), "{ip} should be refused");
        }
        for ip in [
            "203.0.113.10",
            "198.51.100.7",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:4860::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(refused_range(ip, &[]), None, "{ip} is public");
        }
        let metadata = refused_range("169.254.169.254".parse().unwrap(), &[]).unwrap();
        assert!(metadata.contains("metadata"), "{metadata}");
        let me: IpAddr = "203.0.113.99".parse().unwrap();
        assert!(refused_range(me, &[me]).unwrap().contains("host itself"));
    }

    #[test]
    fn the_host_has_a_loopback_address() {
        assert!(host_addresses().contains(&"127.0.0.1".parse().unwrap()));
    }
}

//! The network parts of the boot spec: how the guest init configures its
//! NIC, and which guest ports the host may reach through published ports.
//!
//! Published ports ride vsock, not the NIC, so they work without a network
//! device: the host dials the guest's forward port (hybrid vsock
//! `CONNECT <port>`), sends one `forward` frame naming the guest TCP port,
//! and after the guest's `ack` the connection carries the raw bytes of a
//! TCP connection to the guest's `127.0.0.1:<port>`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::bootspec::ConfigError;

/// The vsock port the guest init listens on for published-port forwards.
pub const DEFAULT_FORWARD_PORT: u32 = 10_002;
/// The name the guest resolves to the gateway, i.e. the host's own
/// services that a `host:PORT` rule allows.
pub const HOST_ALIAS: &str = "host.microagent.internal";
/// At most this many extra `/etc/hosts` entries.
const MAX_HOSTS: usize = 64;
/// Marks the `/etc/hosts` lines written for a [`GuestNetwork`], so writing
/// them again replaces them instead of appending.
const HOSTS_MARKER: &str = "# microagent";

/// How the guest init configures its network device. Absent from the
/// boot spec: the guest has only `lo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestNetwork {
    /// The interface to configure.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// The guest's static IPv4 address.
    pub address: Ipv4Addr,
    /// Prefix length of the guest's subnet.
    pub prefix_len: u8,
    /// The default route's next hop (the host-side stack).
    pub gateway: Ipv4Addr,
    /// The interface MTU.
    pub mtu: u32,
    /// Nameservers for `/etc/resolv.conf` (the gateway answers DNS).
    pub nameservers: Vec<Ipv4Addr>,
    /// Extra `/etc/hosts` lines, e.g. `host.microagent.internal` -> gateway.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

fn default_interface() -> String {
    "eth0".into()
}

/// One `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEntry {
    /// The address.
    pub address: Ipv4Addr,
    /// Its names.
    pub names: Vec<String>,
}

/// Published ports, guest side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishSpec {
    /// The vsock port the guest init accepts forwards on.
    #[serde(default = "default_forward_port")]
    pub port: u32,
    /// The guest TCP ports a forward may name; any other is refused.
    pub guest_ports: Vec<u16>,
}

fn default_forward_port() -> u32 {
    DEFAULT_FORWARD_PORT
}

impl GuestNetwork {
    /// The usual configuration for a NIC behind microagent's stack:
    /// `/etc/resolv.conf` names the gateway, which also answers as
    /// [`HOST_ALIAS`].
    pub fn behind_gateway(address: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr, mtu: u32) -> Self {
        GuestNetwork {
            interface: default_interface(),
            address,
            prefix_len,
            gateway,
            mtu,
            nameservers: vec![gateway],
            hosts: vec![HostEntry {
                address: gateway,
                names: vec![HOST_ALIAS.into()],
            }],
        }
    }

    /// `/etc/resolv.conf` for this network: its nameservers.
    pub fn resolv_conf(&self) -> String {
        let mut text =
            String::from("# written by microagent-init: the host-side stack answers DNS\n");
        for ns in &self.nameservers {
            text.push_str(&format!("nameserver {ns}\n"));
        }
        text
    }

    /// `/etc/hosts` for this network, given the image's: its lines kept
    /// (except marked ones, written for a network before), `localhost`
    /// added if missing, and this network's entries, each marked.
    pub fn hosts_file(&self, existing: &str) -> String {
        let mut text: String = existing
            .lines()
            .filter(|l| !l.ends_with(HOSTS_MARKER))
            .flat_map(|l| [l, "\n"])
            .collect();
        if !text
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("localhost"))
        {
            text.push_str("127.0.0.1\tlocalhost\n");
        }
        for h in &self.hosts {
            text.push_str(&format!(
                "{}\t{}\t{HOSTS_MARKER}\n",
                h.address,
                h.names.join(" ")
            ));
        }
        text
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let ifname_ok = !self.interface.is_empty()
            && self.interface.len() < 16
            && self
                .interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ifname_ok {
            return bad(format!(
                "network.interface must be 1-15 letters or digits, got {:?}",
                self.interface
            ));
        }
        if !(1..=30).contains(&self.prefix_len) {
            return bad(format!(
                "network.prefixLen must be 1-30, got {}",
                self.prefix_len
            ));
        }
        if !(576..=65535).contains(&self.mtu) {
            return bad(format!("network.mtu must be 576-65535, got {}", self.mtu));
        }
        if self.nameservers.len() > 3 || self.hosts.len() > MAX_HOSTS {
            return bad("network: at most 3 nameservers and 64 hosts entries".into());
        }
        for h in &self.hosts {
            let names_ok = !h.names.is_empty()
                && h.names.iter().all(|n| {
                    !n.is_empty()
                        && n.len() <= 253
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                });
            if !names_ok {
                return bad(format!(
                    "network.hosts entry for {} must name hosts (letters, digits, '-', '.')",
                    h.address
                ));
            }
        }
        Ok(())
    }

    /// Netmask of [`Self::prefix_len`].
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix_len.min(32))))
    }
}

impl PublishSpec {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.port == 0 || self.guest_ports.contains(&0) {
            return Err(ConfigError::Invalid(
                "publish.port and publish.guestPorts must be non-zero".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_netmask() {
        let n = GuestNetwork::behind_gateway(
            Ipv4Addr::new(10, 0, 2, 15),
            24,
            Ipv4Addr::new(10, 0, 2, 2),
            1500,
        );
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.hosts[0].names, vec![HOST_ALIAS.to_string()]);
        n.validate().unwrap();
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["address"], "10.0.2.15");
        assert_eq!(json["prefixLen"], 24);
    }

    #[test]
    fn bad_values_are_refused() {
        let good = GuestNetwork::behind_gateway(
            Ipv4Addr::new(10, 0, 2, 15),
            24,
            Ipv4Addr::new(10, 0, 2, 2),
            1500,
        );
        let mut n = good.clone();
        n.interface = "eth0; rm -rf /".into();
        assert!(n.validate().is_err());
        let mut n = good.clone();
        n.prefix_len = 0;
        assert!(n.validate().is_err());
        let mut n = good.clone();
        n.mtu = 10;
        assert!(n.validate().is_err());
        let mut n = good;
        n.hosts[0].names = vec!["bad name\n1.2.3.4 evil".into()];
        assert!(n.validate().is_err());
        let p = PublishSpec {
            port: 0,
            guest_ports: vec![80],
        };
        assert!(p.validate().is_err());
    }
}

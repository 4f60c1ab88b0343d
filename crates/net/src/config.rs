//! The configuration of one VM's network stack: the JSON file that
//! `microagent-net --config FILE` reads, written by vmkit.
//!
//! Every field has a default, so `{}` plus a frontend is a working
//! configuration: guest `10.0.2.15/24`, gateway `10.0.2.2`, MTU 1500, guest
//! MAC `52:54:00:12:34:56`, policy `public`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// Everything the stack of one VM needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetConfig {
    /// Where the guest's Ethernet frames come from and go to.
    pub frontend: Frontend,
    /// The guest NIC's MAC address (`aa:bb:cc:dd:ee:ff`); the stack only
    /// talks to this MAC.
    #[serde(default = "default_guest_mac")]
    pub guest_mac: MacAddr,
    /// The guest's IPv4 address. Frames from any other source are dropped.
    #[serde(default = "default_guest_ip")]
    pub guest_ip: Ipv4Addr,
    /// The gateway's IPv4 address: the stack itself. It answers ARP, ICMP
    /// echo and DNS (UDP and TCP port 53) there, and it is
    /// `host.microagent.internal`, the host's own loopback services that
    /// `hostServices` lists.
    #[serde(default = "default_gateway_ip")]
    pub gateway_ip: Ipv4Addr,
    /// Prefix length of the guest's subnet (`24` for `10.0.2.0/24`).
    #[serde(default = "default_prefix_len")]
    pub prefix_len: u8,
    /// The link MTU in bytes (IP packet size, without the Ethernet header).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The egress policy: what the guest may reach.
    #[serde(default)]
    pub policy: Policy,
    /// Where to append the audit log (one JSON line per decision, see
    /// [`crate::audit::AuditRecord`]); `None`: no audit log.
    #[serde(default)]
    pub audit_path: Option<PathBuf>,
    /// TCP ports of the host's own loopback services that the guest may
    /// reach at `gatewayIp:PORT` (`host.microagent.internal:PORT`); vmkit
    /// derives them from `host:PORT` allow rules. Allow rules `host:PORT` in
    /// `policy` count too.
    #[serde(default)]
    pub host_services: Vec<u16>,
}

/// Where the guest's frames travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum Frontend {
    /// A Unix stream socket the helper creates and listens on; the VMM
    /// connects as a client (QEMU `-netdev stream,server=off,addr.type=unix`).
    /// Each frame is a 4-byte big-endian length followed by the Ethernet
    /// frame. The helper exits when the VMM closes the connection.
    Stream {
        /// The socket's path (the workspace's `frontend.socket`).
        path: PathBuf,
    },
    /// A TAP device for Firecracker: the helper creates it persistent and
    /// owned by its user, Firecracker opens it, and the helper reads and
    /// writes its frames through a packet socket on the host side (see
    /// [`crate::tap`]). The helper needs CAP_NET_ADMIN and CAP_NET_RAW and
    /// `nft`; it removes the device when it exits.
    Tap {
        /// The TAP interface's name.
        name: String,
    },
    /// A Unix datagram socket the helper binds; one datagram is one frame.
    /// The VMM's side (Apple VF: the socket behind
    /// `VZFileHandleNetworkDeviceAttachment`) binds its own path and
    /// connects to this one; the helper answers whoever sent the first
    /// frame, and exits when that peer is gone.
    Datagram {
        /// The socket's path.
        path: PathBuf,
    },
}

/// A MAC address, written `52:54:00:12:34:56` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for MacAddr {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad =
            || ConfigError::Invalid(format!("MAC address {text:?}: expected aa:bb:cc:dd:ee:ff"));
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read network config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a valid `NetConfig` JSON.
    #[error("network config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A field has a value the stack cannot use.
    #[error("network config: {0}")]
    Invalid(String),
}

impl NetConfig {
    /// A configuration with every default and the given frontend.
    pub fn new(frontend: Frontend) -> NetConfig {
        NetConfig {
            frontend,
            guest_mac: default_guest_mac(),
            guest_ip: default_guest_ip(),
            gateway_ip: default_gateway_ip(),
            prefix_len: default_prefix_len(),
            mtu: default_mtu(),
            policy: Policy::default(),
            audit_path: None,
            host_services: Vec::new(),
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<NetConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut de = serde_json::Deserializer::from_str(&text);
        let config: NetConfig =
            serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("at {}: {}", e.path(), e.inner()),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that serde cannot: addresses that fit together,
    /// an MTU an Ethernet link can carry, ports that are not 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(8..=30).contains(&self.prefix_len) {
            return invalid(format!("prefixLen {} must be 8..=30", self.prefix_len));
        }
        if !(576..=9000).contains(&self.mtu) {
            return invalid(format!("mtu {} must be 576..=9000", self.mtu));
        }
        if self.guest_ip == self.gateway_ip {
            return invalid(format!("guestIp and gatewayIp are both {}", self.guest_ip));
        }
        if !self.in_guest_subnet(self.gateway_ip.into()) {
            return invalid(format!(
                "gatewayIp {} is not in the guest's subnet {}/{}",
                self.gateway_ip, self.guest_ip, self.prefix_len
            ));
        }
        if self.guest_mac.0[0] & 1 == 1 {
            return invalid(format!(
                "guestMac {} is a multicast address",
                self.guest_mac
            ));
        }
        if self.host_services.contains(&0) {
            return invalid("hostServices contains port 0".to_string());
        }
        if let Frontend::Tap { name } = &self.frontend {
            if name.is_empty() || name.len() >= libc::IFNAMSIZ {
                return invalid(format!("tap name {name:?} must be 1..=15 bytes"));
            }
        }
        self.policy.limits.validate()?;
        if let Some(audit) = &self.audit_path {
            // Checked here, before the helper says ready, not when the first
            // decision is written.
            let folder = audit.parent().filter(|p| !p.as_os_str().is_empty());
            if !folder.is_none_or(Path::is_dir) {
                return invalid(format!(
                    "auditPath {}: its folder does not exist",
                    audit.display()
                ));
            }
        }
        Ok(())
    }

    /// Whether `ip` is in the guest's subnet.
    pub fn in_guest_subnet(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX << (32 - u32::from(self.prefix_len));
                u32::from(v4) & mask == u32::from(self.guest_ip) & mask
            }
            IpAddr::V6(_) => false,
        }
    }

    /// The host loopback ports the guest may reach at the gateway: the
    /// `hostServices` list plus every `host:PORT` allow rule.
    pub fn allowed_host_ports(&self) -> Vec<u16> {
        let mut ports = self.host_services.clone();
        ports.extend(
            self.policy
                .allow
                .iter()
                .filter_map(|r| r.host_service_port()),
        );
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

fn default_guest_mac() -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
}
fn default_guest_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 15)
}
fn default_gateway_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 2)
}
fn default_prefix_len() -> u8 {
    24
}
fn default_mtu() -> u16 {
    1500
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_takes_the_documented_defaults() {
        let json = r#"{"frontend":{"kind":"stream","path":"/tmp/x/frontend.socket"}}"#;
        let config: NetConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.guest_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(config.gateway_ip, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(config.prefix_len, 24);
        assert_eq!(config.mtu, 1500);
        assert_eq!(config.guest_mac.to_string(), "52:54:00:12:34:56");
        config.validate().unwrap();
    }

    #[test]
    fn full_config_round_trips() {
        let json = r#"{
            "frontend": {"kind": "tap", "name": "tap0"},
            "guestMac": "02:00:00:00:00:01",
            "guestIp": "10.0.3.15", "gatewayIp": "10.0.3.2", "prefixLen": 24, "mtu": 1400,
            "policy": {"mode": "allowlist", "allow": ["pkg.test", ".example.com:443", "host:8080"],
                       "deny": ["10.0.0.0/8"], "limits": {"maxConnections": 10}},
            "auditPath": "/tmp/x/egress.jsonl",
            "hostServices": [9000]
        }"#;
        let config: NetConfig = serde_json::from_str(json).unwrap();
        config.validate().unwrap();
        assert_eq!(config.allowed_host_ports(), vec![8080, 9000]);
        let again: NetConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn bad_values_are_named() {
        let mut config = NetConfig::new(Frontend::Stream { path: "/x".into() });
        config.gateway_ip = Ipv4Addr::new(192, 168, 1, 1);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("gatewayIp 192.168.1.1"), "{err}");
        let err = "52:54:00:12:34".parse::<MacAddr>().unwrap_err().to_string();
        assert!(err.contains("52:54:00:12:34"), "{err}");
        let mut config = NetConfig::new(Frontend::Stream { path: "/x".into() });
        config.audit_path = Some("/no/such/folder/egress.jsonl".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("/no/such/folder/egress.jsonl"), "{err}");
        let err = serde_json::from_str::<NetConfig>(
            r#"{"frontend":{"kind":"stream","path":"/x"},"policy":{"allow":["bad name!"]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bad name!"), "{err}");
    }
}

//! The guest's network as a request describes it: a mode, egress rules and
//! published ports. The rules travel as the strings the user wrote; their
//! grammar (`NAME`, `.NAME`, IP, CIDR, `host:PORT`, each with `:PORT`) is
//! the network stack's (`vmkit_net::Rule::parse`), which the lifecycle runs
//! on every rule before anything is created.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// More rules than this is a mistake, not a policy.
pub const MAX_RULES: usize = 256;
/// Longest rule accepted (a DNS name is at most 253 bytes, plus a port).
pub const MAX_RULE_LEN: usize = 260;
/// At most this many published ports per workspace.
pub const MAX_PUBLISHED: usize = 64;

/// How the guest reaches the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The public internet is reachable; loopback, private, link-local,
    /// CGNAT, ULA and multicast ranges, the host and other VMs are not,
    /// unless an `allow` rule names them.
    #[default]
    Public,
    /// Only what an `allow` rule names; DNS for any other name is refused.
    Allowlist,
    /// No network device at all (published ports still work, over vsock).
    None,
}

impl NetworkMode {
    /// The wire and flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Public => "public",
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::None => "none",
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkMode {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(NetworkMode::Public),
            "allowlist" => Ok(NetworkMode::Allowlist),
            "none" => Ok(NetworkMode::None),
            other => Err(ProtocolError::invalid(format!(
                "network mode must be public, allowlist or none, got {other:?}"
            ))),
        }
    }
}

/// The guest's network policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// `public` (default), `allowlist` or `none`.
    #[serde(default)]
    pub mode: NetworkMode,
    /// Rules that allow a destination: `NAME`, `.NAME` (suffix), an IP or
    /// CIDR, each with an optional `:PORT`; `host:PORT` is the host's own
    /// loopback service at PORT, reached as `host.microagent.internal`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Rules that refuse a destination; deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// A host TCP port forwarded to a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedPort {
    /// The host address to listen on (default 127.0.0.1).
    #[serde(default = "loopback")]
    pub host_ip: IpAddr,
    /// The host TCP port.
    pub host_port: u16,
    /// The guest TCP port; the guest init connects to its 127.0.0.1 at it,
    /// so services bound to 0.0.0.0 or 127.0.0.1 are both reachable.
    pub guest_port: u16,
}

fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

impl FromStr for PublishedPort {
    type Err = String;

    /// Parses `[HOSTIP:]HOSTPORT:GUESTPORT` (an IPv6 host address in brackets).
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("expected [HOSTIP:]HOSTPORT:GUESTPORT, got {s:?}");
        let (rest, guest) = s.rsplit_once(':').ok_or_else(usage)?;
        let (ip, host) = match rest.rsplit_once(':') {
            Some((ip, host)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
                (ip, host)
            }
            None => (loopback(), rest),
        };
        let port = |what: &str, p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{s:?}: {what} port must be 1-65535, got {p:?}")),
            }
        };
        Ok(PublishedPort {
            host_ip: ip,
            host_port: port("host", host)?,
            guest_port: port("guest", guest)?,
        })
    }
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}:{}", self.host_port, self.guest_port),
            IpAddr::V4(ip) => write!(f, "{ip}:{}:{}", self.host_port, self.guest_port),
        }
    }
}

impl Network {
    /// `public` with no rules: what an absent `network` means.
    pub fn is_default(&self) -> bool {
        *self == Network::default()
    }

    /// Checks what serde and the rule grammar cannot: bounded counts and
    /// lengths, no rules without a network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.mode == NetworkMode::None && !(self.allow.is_empty() && self.deny.is_empty()) {
            return Err(ProtocolError::invalid(
                "network.allow/deny need a network; mode none has no network device",
            ));
        }
        for (field, rules) in [("network.allow", &self.allow), ("network.deny", &self.deny)] {
            if rules.len() > MAX_RULES {
                return Err(ProtocolError::invalid(format!(
                    "{field} has {} rules; at most {MAX_RULES} are supported",
                    rules.len()
                )));
            }
            for rule in rules {
                if rule.is_empty()
                    || rule.len() > MAX_RULE_LEN
                    || rule.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ProtocolError::invalid(format!(
                        "{field} rule {rule:?} must be 1-{MAX_RULE_LEN} characters without spaces"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Checks a list of published ports: bounded, ports non-zero, no host
/// address:port twice.
pub fn validate_published(ports: &[PublishedPort]) -> Result<(), ProtocolError> {
    if ports.len() > MAX_PUBLISHED {
        return Err(ProtocolError::invalid(format!(
            "publish has {} entries; at most {MAX_PUBLISHED} are supported",
            ports.len()
        )));
    }
    let mut seen = HashSet::new();
    for p in ports {
        if p.host_port == 0 || p.guest_port == 0 {
            return Err(ProtocolError::invalid(format!(
                "publish {p}: ports must be 1-65535"
            )));
        }
        if !seen.insert((p.host_ip, p.host_port)) {
            return Err(ProtocolError::invalid(format!(
                "publish {p}: host address {}:{} is published twice",
                p.host_ip, p.host_port
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_parse_or_name_the_problem() {
        let p: PublishedPort = "8080:80".parse().unwrap();
        assert_eq!(p.host_ip, loopback());
        assert_eq!((p.host_port, p.guest_port), (8080, 80));
        let p: PublishedPort = "0.0.0.0:8080:80".parse().unwrap();
        assert_eq!(p.host_ip.to_string(), "0.0.0.0");
        let p: PublishedPort = "[::1]:8080:80".parse().unwrap();
        assert_eq!(p.to_string(), "[::1]:8080:80");
        assert!("80"
            .parse::<PublishedPort>()
            .unwrap_err()
            .contains("HOSTPORT"));
        assert!("70000:80"
            .parse::<PublishedPort>()
            .unwrap_err()
            .contains("host port must be 1-65535"));
        assert!("8080:0"
            .parse::<PublishedPort>()
            .unwrap_err()
            .contains("guest port"));
        assert!("nope:1:2"
            .parse::<PublishedPort>()
            .unwrap_err()
            .contains("not an IP"));
    }

    #[test]
    fn duplicate_host_ports_and_rules_without_network_are_refused() {
        let p: PublishedPort = "8080:80".parse().unwrap();
        assert!(validate_published(&[p, p]).is_err());
        let q: PublishedPort = "0.0.0.0:8080:80".parse().unwrap();
        assert!(validate_published(&[p, q]).is_ok());
        let none = Network {
            mode: NetworkMode::None,
            allow: vec!["pkg.test".into()],
            deny: vec![],
        };
        assert!(none.validate().is_err());
        let spaced = Network {
            allow: vec!["a b".into()],
            ..Network::default()
        };
        assert!(spaced.validate().is_err());
    }

    #[test]
    fn wire_shape() {
        let n: Network =
            serde_json::from_str(r#"{"mode":"allowlist","allow":["pkg.test"]}"#).unwrap();
        assert_eq!(n.mode, NetworkMode::Allowlist);
        let p: PublishedPort = serde_json::from_str(r#"{"hostPort":1,"guestPort":2}"#).unwrap();
        assert_eq!(p.host_ip, loopback());
        assert_eq!(
            serde_json::to_value(Network::default()).unwrap(),
            serde_json::json!({"mode": "public"})
        );
        assert!(Network::default().is_default());
    }
}

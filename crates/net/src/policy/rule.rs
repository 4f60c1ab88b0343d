//! One `--allow` / `--deny` rule: `NAME`, `.NAME`, an IP or a CIDR, each
//! with an optional `:PORT`, or `host:PORT`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// A parsed egress rule. In JSON it is its text, e.g. `"pkg.test:443"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What the rule names.
    pub target: Target,
    /// The one TCP/UDP port the rule is limited to; `None`: every port.
    pub port: Option<u16>,
}

/// What a rule names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Exactly this DNS name (lowercase, no trailing dot).
    Name(String),
    /// Every name below this one (`.example.com` matches `a.example.com`
    /// and `a.b.example.com`, not `example.com` itself).
    Suffix(String),
    /// An address range (a single IP is a /32 or /128).
    Net(IpNet),
    /// The host's own loopback services (`host:PORT`), reached in the guest
    /// as `host.microagent.internal:PORT`. The port is always set.
    Host,
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address (host bits are cleared when parsed).
    pub addr: IpAddr,
    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix: u8,
}

impl IpNet {
    /// A network from an address and a prefix length; host bits are cleared.
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
        IpNet {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 address is
    /// compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        if prefix > max {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Some(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// A rule that cannot be parsed; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule {value:?}: {problem}")]
pub struct RuleError {
    /// The rule text as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

impl Rule {
    /// Parses `NAME`, `.NAME`, `IP`, `CIDR` (each with an optional `:PORT`;
    /// IPv6 with a port in brackets: `[fc00::1]:443`, `[fc00::/7]:443`), or
    /// `host:PORT`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let fail = |problem: &str| RuleError {
            value: text.to_string(),
            problem: problem.to_string(),
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(fail("empty"));
        }
        if trimmed.len() > 300 {
            return Err(fail("longer than 300 bytes"));
        }
        // Bracketed IPv6, with or without a port.
        if let Some(rest) = trimmed.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| fail("'[' without a closing ']'"))?;
            let net = IpNet::parse(inner)
                .filter(|n| n.addr.is_ipv6())
                .ok_or_else(|| fail("not an IPv6 address or CIDR inside [ ]"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    parse_port(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| fail("expected ':PORT' after ']'"))?,
                    )
                    .map_err(|p| fail(&p))?,
                ),
            };
            return Ok(Rule {
                target: Target::Net(net),
                port,
            });
        }
        // Bare IPv6 (several colons): no port possible.
        if trimmed.matches(':').count() > 1 {
            let net = IpNet::parse(trimmed).ok_or_else(|| {
                fail("not an IPv6 address or CIDR (write [ADDR]:PORT for a port)")
            })?;
            return Ok(Rule {
                target: Target::Net(net),
                port: None,
            });
        }
        let (host, port) = match trimmed.rsplit_once(':') {
            Some((host, port)) => (host, Some(parse_port(port).map_err(|p| fail(&p))?)),
            None => (trimmed, None),
        };
        if host.eq_ignore_ascii_case("host") {
            return match port {
                Some(port) => Ok(Rule {
                    target: Target::Host,
                    port: Some(port),
                }),
                None => Err(fail("host needs a port: host:PORT")),
            };
        }
        let looks_numeric = host
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/');
        if looks_numeric || host.contains('/') {
            let net = IpNet::parse(host)
                .ok_or_else(|| fail("not an IPv4 address or CIDR (a.b.c.d or a.b.c.d/n)"))?;
            return Ok(Rule {
                target: Target::Net(net),
                port,
            });
        }
        if let Some(suffix) = host.strip_prefix('.') {
            let name = normalise_name(suffix).map_err(|p| fail(&p))?;
            return Ok(Rule {
                target: Target::Suffix(name),
                port,
            });
        }
        if host.starts_with("*.") {
            return Err(fail("write a suffix rule as .NAME, not *.NAME"));
        }
        let name = normalise_name(host).map_err(|p| fail(&p))?;
        Ok(Rule {
            target: Target::Name(name),
            port,
        })
    }

    /// For a `host:PORT` rule, its port.
    pub fn host_service_port(&self) -> Option<u16> {
        match self.target {
            Target::Host => self.port,
            _ => None,
        }
    }

    /// Whether this rule names DNS names (`NAME` or `.NAME`).
    pub fn is_name_rule(&self) -> bool {
        matches!(self.target, Target::Name(_) | Target::Suffix(_))
    }

    /// Whether the rule's port (if any) is `port`.
    pub fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    /// Whether a name rule matches the DNS name `name` (any case, trailing
    /// dot allowed). IP rules match no name.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match &self.target {
            Target::Name(rule) => name.eq_ignore_ascii_case(rule),
            Target::Suffix(rule) => {
                name.len() > rule.len() + 1
                    && name.as_bytes()[name.len() - rule.len() - 1] == b'.'
                    && name[name.len() - rule.len()..].eq_ignore_ascii_case(rule)
            }
            _ => false,
        }
    }

    /// Whether everything this rule allows, `wider` allows too: for a
    /// policy that may only narrow another (an MCP client's rules within
    /// the server's). Conservative: a name is within a name or suffix rule
    /// only, a network within a network that contains it, `host:PORT`
    /// within the same `host:PORT`; and the port must be covered.
    pub fn within(&self, wider: &Rule) -> bool {
        let port = match (wider.port, self.port) {
            (None, _) => true,
            (Some(w), Some(p)) => w == p,
            (Some(_), None) => false,
        };
        let target = match (&self.target, &wider.target) {
            (Target::Name(n), Target::Name(w)) => n == w,
            (Target::Name(n), Target::Suffix(_)) => wider.matches_name(n),
            (Target::Suffix(n), Target::Suffix(w)) => n == w || wider.matches_name(n),
            (Target::Net(n), Target::Net(w)) => {
                n.addr.is_ipv4() == w.addr.is_ipv4() && n.prefix >= w.prefix && w.contains(n.addr)
            }
            (Target::Host, Target::Host) => true,
            _ => false,
        };
        port && target
    }

    /// Whether an IP/CIDR rule contains `ip`. Name and host rules match no IP.
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        match &self.target {
            Target::Net(net) => net.contains(ip),
            _ => false,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.target, self.port) {
            (Target::Name(n), None) => write!(f, "{n}"),
            (Target::Name(n), Some(p)) => write!(f, "{n}:{p}"),
            (Target::Suffix(n), None) => write!(f, ".{n}"),
            (Target::Suffix(n), Some(p)) => write!(f, ".{n}:{p}"),
            (Target::Net(net), None) => write!(f, "{net}"),
            (Target::Net(net), Some(p)) if net.addr.is_ipv6() => write!(f, "[{net}]:{p}"),
            (Target::Net(net), Some(p)) => write!(f, "{net}:{p}"),
            (Target::Host, p) => write!(f, "host:{}", p.unwrap_or(0)),
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = RuleError;
    fn from_str(text: &str) -> Result<Rule, RuleError> {
        Rule::parse(text)
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Rule::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {text:?} is not a number 1..=65535"));
    }
    match text.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("port {text} is out of range 1..=65535")),
    }
}

/// Lowercases a DNS name and checks it is one: labels of letters, digits,
/// `-` and `_`, 1..=63 bytes each, 253 bytes in all.
pub(crate) fn normalise_name(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err("empty name".to_string());
    }
    if name.len() > 253 {
        return Err("name longer than 253 bytes".to_string());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("a name label must be 1..=63 bytes".to_string());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a name may hold only letters, digits, '-', '_' and '.'".to_string());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a name label may not start or end with '-'".to_string());
        }
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        Rule::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_form_parses_and_prints_back() {
        for text in [
            "pkg.test",
            "pkg.test:443",
            ".example.com",
            ".example.com:80",
            "10.1.2.3",
            "10.1.2.3:5432",
            "10.0.0.0/8",
            "10.0.0.0/8:22",
            "fc00::/7",
            "[fc00::1]:443",
            "host:8080",
            "0.0.0.0/0",
        ] {
            assert_eq!(rule(text).to_string(), text);
        }
        assert_eq!(rule("PKG.Test.").to_string(), "pkg.test");
        assert_eq!(rule("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(rule("host:8080").host_service_port(), Some(8080));
    }

    #[test]
    fn bad_rules_name_the_value_and_the_problem() {
        for (text, problem) in [
            ("", "empty"),
            ("host", "host needs a port"),
            ("pkg.test:0", "out of range"),
            ("pkg.test:65536", "out of range"),
            ("pkg.test:http", "not a number"),
            ("10.1.2.300", "not an IPv4"),
            ("10.0.0.0/33", "not an IPv4"),
            ("bad name!", "only letters"),
            ("*.example.com", ".NAME"),
            ("[fc00::1", "closing"),
            ("[10.0.0.1]:80", "IPv6"),
            ("a..b", "1..=63"),
            ("-a.b", "start or end"),
        ] {
            let err = Rule::parse(text).unwrap_err();
            assert_eq!(err.value, text);
            let message = err.to_string();
            assert!(message.contains(problem), "{text:?}: {message}");
            assert!(message.contains(&format!("{text:?}")), "{message}");
        }
    }

    #[test]
    fn names_and_suffixes_match_as_documented() {
        assert!(rule("pkg.test").matches_name("PKG.test."));
        assert!(!rule("pkg.test").matches_name("a.pkg.test"));
        let suffix = rule(".example.com");
        assert!(suffix.matches_name("a.example.com"));
        assert!(suffix.matches_name("a.b.Example.COM"));
        assert!(!suffix.matches_name("example.com"));
        assert!(!suffix.matches_name("badexample.com"));
        assert!(!suffix.matches_ip("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_rule_is_within_a_rule_that_allows_at_least_as_much() {
        for (inner, outer) in [
            ("pkg.test", "pkg.test"),
            ("pkg.test:443", "pkg.test"),
            ("a.example.com:443", ".example.com"),
            (".a.example.com", ".example.com"),
            ("203.0.113.10", "203.0.113.0/24"),
            ("203.0.113.0/25:80", "203.0.113.0/24"),
            ("host:8080", "host:8080"),
            ("[fd00::1]:443", "fc00::/7"),
        ] {
            assert!(rule(inner).within(&rule(outer)), "{inner} within {outer}");
        }
        for (inner, outer) in [
            ("pkg.test", "pkg.test:443"),
            ("other.test", "pkg.test"),
            ("example.com", ".example.com"),
            (".example.com", "a.example.com"),
            ("203.0.113.0/23", "203.0.113.0/24"),
            ("10.0.0.1", "203.0.113.0/24"),
            ("pkg.test", "203.0.113.10"),
            ("203.0.113.10", "pkg.test"),
            ("host:8081", "host:8080"),
            ("10.0.0.1", "host:80"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
        ] {
            assert!(
                !rule(inner).within(&rule(outer)),
                "{inner} not within {outer}"
            );
        }
    }

    #[test]
    fn networks_contain_what_they_should() {
        let net = rule("10.0.0.0/8");
        assert!(net.matches_ip("10.255.1.2".parse().unwrap()));
        assert!(!net.matches_ip("11.0.0.1".parse().unwrap()));
        assert!(net.matches_ip("::ffff:10.1.1.1".parse().unwrap()));
        assert!(rule("0.0.0.0/0").matches_ip("203.0.113.10".parse().unwrap()));
        assert!(rule("fc00::/7").matches_ip("fd12::1".parse().unwrap()));
        assert!(!rule("fc00::/7").matches_ip("fe80::1".parse().unwrap()));
        assert!(rule("10.1.2.3:5432").port_matches(5432));
        assert!(!rule("10.1.2.3:5432").port_matches(5433));
    }
}

//! The egress policy: which of the guest's flows get a real host socket.
//!
//! The policy knows nothing of frames or sockets: the stack asks it about a
//! destination (with the names this VM's DNS returned for that address, and
//! for TCP 443/80 the name the guest's first bytes carried) and gets a
//! [`Verdict`], or [`Check::NeedsName`] when the answer depends on the TLS
//! SNI or HTTP `Host` the stack has not seen yet.
//!
//! Order of evaluation, first match wins:
//! 1. the gateway: DNS is the stack's own; `host:PORT` rules and
//!    `hostServices` open the host's loopback `PORT`; anything else there
//!    is refused;
//! 2. deny rules (IP/CIDR on the address, name rules on the DNS names and
//!    the SNI/Host): deny wins over allow;
//! 3. IP/CIDR allow rules (these alone unlock refused ranges);
//! 4. refused ranges ([`refused_range`]): loopback, RFC 1918, link-local
//!    incl. 169.254.169.254, CGNAT, ULA, multicast, the host's addresses;
//! 5. `public` mode: allowed;
//! 6. `allowlist` mode: a name rule whose name this VM's DNS resolved to the
//!    address, and on TCP 443 / 80 whose name the SNI / Host also matches.

mod ranges;
mod rule;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use ranges::{host_addresses, refused_range};
pub(crate) use rule::normalise_name;
pub use rule::{IpNet, Rule, RuleError, Target};

use crate::audit::{NameSource, Proto};
use crate::config::ConfigError;

/// The egress policy of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// `public` (default) or `allowlist`.
    #[serde(default)]
    pub mode: Mode,
    /// Rules that allow (`--allow`).
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// Rules that deny (`--deny`); they win over allow rules.
    #[serde(default)]
    pub deny: Vec<Rule>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
}

/// What is reachable without a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// The public internet; refused ranges stay refused.
    #[default]
    Public,
    /// Only what allow rules name; DNS answers only allowed names.
    Allowlist,
}

/// Limits on what one guest may use. Defaults are generous for agent work
/// and small enough that a hostile guest cannot exhaust the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Concurrent TCP connections plus UDP flows (default 256). Attempts
    /// beyond it are refused (TCP reset) and audited.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Total bytes both ways over the VM's life (default 64 GiB); past it,
    /// open flows are cut and new ones refused.
    #[serde(default = "default_max_total_bytes")]
    pub max_total_bytes: u64,
}

fn default_max_connections() -> u32 {
    256
}
fn default_max_total_bytes() -> u64 {
    64 << 30
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: default_max_connections(),
            max_total_bytes: default_max_total_bytes(),
        }
    }
}

impl Limits {
    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 || self.max_connections > 65_536 {
            return Err(ConfigError::Invalid(format!(
                "limits.maxConnections {} must be 1..=65536",
                self.max_connections
            )));
        }
        Ok(())
    }
}

/// The outcome of a policy question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the flow may go out.
    pub allow: bool,
    /// The rule that decided, as its text.
    pub rule: Option<String>,
    /// Why, in words (always set for a deny).
    pub reason: Option<String>,
    /// The name the decision was about, if any.
    pub name: Option<String>,
    /// How that name was known.
    pub name_source: Option<NameSource>,
    /// Where the host socket connects (differs from the destination for
    /// the gateway's host services: the host's loopback).
    pub connect_to: Option<SocketAddr>,
}

impl Verdict {
    fn deny(reason: impl Into<String>) -> Verdict {
        Verdict {
            allow: false,
            rule: None,
            reason: Some(reason.into()),
            name: None,
            name_source: None,
            connect_to: None,
        }
    }
    fn allow(rule: Option<&Rule>, reason: &str, connect_to: Option<SocketAddr>) -> Verdict {
        Verdict {
            allow: true,
            rule: rule.map(Rule::to_string),
            reason: Some(reason.to_string()),
            name: None,
            name_source: None,
            connect_to,
        }
    }
    /// A deny for a reason outside the rules (a limit, a missing name).
    pub(crate) fn denied(reason: String) -> Verdict {
        Verdict::deny(reason)
    }

    /// This verdict with what went wrong afterwards added to the reason
    /// (an allowed flow whose host connection failed).
    pub(crate) fn failed(&self, why: &str) -> Verdict {
        let mut v = self.clone();
        v.reason = Some(match &self.reason {
            Some(r) => format!("{r}; {why}"),
            None => why.to_string(),
        });
        v
    }

    fn named(mut self, name: Option<(&str, NameSource)>) -> Verdict {
        if let Some((name, source)) = name {
            self.name = Some(name.to_string());
            self.name_source = Some(source);
        }
        self
    }
}

/// What the stack learnt from the guest's first bytes on TCP 443 / 80.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked<'a> {
    /// Nothing yet (no SNI/Host inspection happened).
    NotYet,
    /// The TLS SNI (443) or HTTP Host (80) name.
    Name(&'a str, NameSource),
    /// The first bytes carried no name (not TLS / not HTTP / no SNI).
    NoName,
}

/// The answer to [`Egress::check_flow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Decided.
    Done(Verdict),
    /// The answer depends on the SNI (443) or Host header (80): accept the
    /// guest's connection, read its first bytes, and ask again.
    NeedsName,
}

/// The policy engine of one VM: the policy plus the facts it is judged by.
#[derive(Debug, Clone)]
pub struct Egress {
    policy: Policy,
    gateway: Ipv4Addr,
    host_ports: Vec<u16>,
    host_addrs: Vec<IpAddr>,
}

impl Egress {
    /// An engine for `policy`, with the gateway's address, the host ports it
    /// serves and the host's own addresses (see [`host_addresses`]).
    pub fn new(
        policy: Policy,
        gateway: Ipv4Addr,
        host_ports: Vec<u16>,
        host_addrs: Vec<IpAddr>,
    ) -> Egress {
        Egress {
            policy,
            gateway,
            host_ports,
            host_addrs,
        }
    }

    /// The policy being enforced.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// May the guest's DNS query for `name` be answered?
    pub fn check_dns(&self, name: &str) -> Verdict {
        let named = Some((name, NameSource::Dns));
        if let Some(rule) = self.policy.deny.iter().find(|r| r.matches_name(name)) {
            let mut v = Verdict::deny("name denied").named(named);
            v.rule = Some(rule.to_string());
            return v;
        }
        match self.policy.mode {
            Mode::Public => Verdict::allow(None, "public", None).named(named),
            Mode::Allowlist => match self.policy.allow.iter().find(|r| r.matches_name(name)) {
                Some(rule) => Verdict::allow(Some(rule), "name allowed", None).named(named),
                None => Verdict::deny("name not in the allowlist").named(named),
            },
        }
    }

    /// May a flow to `dst` go out? `dns_names` are the names this VM's DNS
    /// returned `dst` for; `peeked` is what the first bytes said (TCP only).
    pub fn check_flow(
        &self,
        proto: Proto,
        dst: SocketAddr,
        dns_names: &[&str],
        peeked: Peeked<'_>,
    ) -> Check {
        let ip = dst.ip();
        let port = dst.port();
        let first_dns = dns_names.first().map(|n| (*n, NameSource::Dns));
        if ip == IpAddr::V4(self.gateway) {
            return Check::Done(self.check_gateway(proto, port));
        }
        let peekable = proto == Proto::Tcp && (port == 443 || port == 80);
        // 2. Deny rules.
        for rule in self.policy.deny.iter().filter(|r| r.port_matches(port)) {
            if rule.matches_ip(ip) {
                return Check::Done(Self::denied_by(rule, first_dns));
            }
            if let Some(name) = dns_names.iter().find(|n| rule.matches_name(n)) {
                return Check::Done(Self::denied_by(rule, Some((name, NameSource::Dns))));
            }
            if let Peeked::Name(name, source) = peeked {
                if rule.matches_name(name) {
                    return Check::Done(Self::denied_by(rule, Some((name, source))));
                }
            }
        }
        let name_denies = self
            .policy
            .deny
            .iter()
            .any(|r| r.is_name_rule() && r.port_matches(port));
        // 3. IP allow rules.
        if let Some(rule) = self
            .policy
            .allow
            .iter()
            .find(|r| r.port_matches(port) && r.matches_ip(ip))
        {
            if peekable && name_denies && peeked == Peeked::NotYet {
                return Check::NeedsName;
            }
            return Check::Done(
                Verdict::allow(Some(rule), "address allowed", None).named(first_dns),
            );
        }
        // 4. Refused ranges: a name rule never unlocks them.
        if let Some(reason) = refused_range(ip, &self.host_addrs) {
            return Check::Done(Verdict::deny(reason).named(first_dns));
        }
        match self.policy.mode {
            Mode::Public => {
                if peekable && name_denies && peeked == Peeked::NotYet {
                    return Check::NeedsName;
                }
                Check::Done(Verdict::allow(None, "public", None).named(first_dns))
            }
            Mode::Allowlist => self.check_allowlist(port, dns_names, peekable, peeked),
        }
    }

    fn check_allowlist(
        &self,
        port: u16,
        dns_names: &[&str],
        peekable: bool,
        peeked: Peeked<'_>,
    ) -> Check {
        let mut pinned = None;
        for rule in self
            .policy
            .allow
            .iter()
            .filter(|r| r.is_name_rule() && r.port_matches(port))
        {
            if let Some(name) = dns_names.iter().find(|n| rule.matches_name(n)) {
                if !peekable {
                    let v = Verdict::allow(Some(rule), "name allowed (pinned to DNS)", None);
                    return Check::Done(v.named(Some((name, NameSource::Dns))));
                }
                match peeked {
                    Peeked::NotYet => return Check::NeedsName,
                    Peeked::Name(seen, source) if rule.matches_name(seen) => {
                        let v = Verdict::allow(
                            Some(rule),
                            "name allowed (DNS and first bytes agree)",
                            None,
                        );
                        return Check::Done(v.named(Some((seen, source))));
                    }
                    _ => pinned = Some(rule),
                }
            }
        }
        let first_dns = dns_names.first().map(|n| (*n, NameSource::Dns));
        let verdict = match (pinned, peeked) {
            (Some(rule), Peeked::Name(seen, source)) => {
                let what = if source == NameSource::Sni {
                    "TLS SNI"
                } else {
                    "HTTP Host"
                };
                let mut v = Verdict::deny(format!("{what} {seen:?} does not match {rule}"))
                    .named(Some((seen, source)));
                v.rule = Some(rule.to_string());
                v
            }
            (Some(rule), _) => {
                let what = if port == 443 {
                    "no TLS SNI"
                } else {
                    "no HTTP Host header"
                };
                let mut v =
                    Verdict::deny(format!("{what} to check against {rule}")).named(first_dns);
                v.rule = Some(rule.to_string());
                v
            }
            (None, _) if dns_names.is_empty() => {
                Verdict::deny("not in the allowlist (no DNS answer of this VM names this address)")
            }
            (None, _) => Verdict::deny("not in the allowlist").named(first_dns),
        };
        Check::Done(verdict)
    }

    fn check_gateway(&self, proto: Proto, port: u16) -> Verdict {
        let denied = self
            .policy
            .deny
            .iter()
            .find(|r| r.host_service_port() == Some(port));
        if let Some(rule) = denied {
            return Self::denied_by(rule, None);
        }
        if proto == Proto::Tcp && self.host_ports.contains(&port) {
            let rule = Rule {
                target: Target::Host,
                port: Some(port),
            };
            let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            return Verdict::allow(Some(&rule), "host service", Some(to));
        }
        Verdict::deny(format!(
            "host service {port} is not allowed (--allow host:{port} opens it)"
        ))
    }

    fn denied_by(rule: &Rule, name: Option<(&str, NameSource)>) -> Verdict {
        let mut v = Verdict::deny("denied by rule").named(name);
        v.rule = Some(rule.to_string());
        v
    }
}

#[cfg(test)]
mod tests;

//! The network flags of `run` and `create`, and `microagent egress`.

use clap::Args;
use vmkit::protocol::{terminal_safe, Network, NetworkMode, PublishedPort};

use crate::cli::Global;
use crate::exit;

/// The egress policy flags, shared by `run`, `create` and `mcp` (the MCP
/// server's own policy, which its clients may only narrow). Values are
/// checked by the library (not by clap), so a bad one exits 125 naming the
/// flag.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// public (default): the public internet, but not loopback, private,
    /// link-local (169.254.169.254), CGNAT, ULA or multicast ranges, the
    /// host or other VMs; allowlist: only what --allow names (DNS for
    /// other names is refused); none: no network device at all.
    #[arg(long, value_name = "MODE", default_value = "public")]
    pub network: String,

    /// Allow a destination; repeatable. NAME (exact), .NAME (suffix), an IP
    /// or CIDR, each with an optional :PORT; host:PORT is the host's own
    /// loopback service at PORT, reached as host.microagent.internal:PORT.
    /// A name matches only addresses this VM's DNS returned for it (and on
    /// 443/80 the TLS SNI / HTTP Host); it never unlocks a refused range:
    /// only an IP/CIDR rule or host:PORT does.
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,

    /// Refuse a destination (same forms as --allow); repeatable. Deny wins.
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,
}

impl PolicyArgs {
    /// The parsed mode and the rules as given; the rule grammar is checked
    /// by `vmkit::Runtime::check_network`.
    pub fn parse(&self) -> anyhow::Result<Network> {
        let mode: NetworkMode =
            self.network
                .parse()
                .map_err(|e: vmkit::protocol::ProtocolError| {
                    anyhow::anyhow!("--network: {}", e.message)
                })?;
        Ok(Network {
            mode,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
        })
    }
}

/// Network options of `run` and `create`: the policy and published ports.
#[derive(Debug, Args)]
pub struct NetworkArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Forward a host TCP port to a guest port: [HOSTIP:]HOSTPORT:GUESTPORT
    /// (host IP default 127.0.0.1). Works with --network none too: it
    /// travels over vsock, and reaches guest services bound to 0.0.0.0 or
    /// 127.0.0.1.
    #[arg(short = 'p', long, value_name = "SPEC")]
    pub publish: Vec<String>,
}

impl NetworkArgs {
    /// The parsed values; rule grammar and port availability are checked
    /// by `vmkit::Runtime::check_network`.
    pub fn parse(&self) -> anyhow::Result<(Network, Vec<PublishedPort>)> {
        let publish = self
            .publish
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e: String| anyhow::anyhow!("--publish: {e}"))
            })
            .collect::<anyhow::Result<Vec<PublishedPort>>>()?;
        Ok((self.policy.parse()?, publish))
    }
}

/// Lines for `status`.
pub fn describe(network: &Network, publish: &[PublishedPort]) -> Vec<String> {
    let mut lines = vec![format!("network:  {}", network.mode)];
    if !network.allow.is_empty() {
        lines.push(format!("allow:    {}", network.allow.join(" ")));
    }
    if !network.deny.is_empty() {
        lines.push(format!("deny:     {}", network.deny.join(" ")));
    }
    for p in publish {
        lines.push(format!("publish:  {p}"));
    }
    lines
}

#[derive(Debug, Args)]
pub struct EgressArgs {
    /// The workspace name.
    pub name: String,
    /// Keep printing new decisions as they are made.
    #[arg(short, long)]
    pub follow: bool,
}

/// `microagent egress NAME [--follow]`: the workspace's egress decisions,
/// oldest first (the rotated file, then the current one).
pub fn egress(args: EgressArgs, global: &Global) -> anyhow::Result<u8> {
    let rt = crate::commands::workspace::quiet_runtime(global)?;
    rt.egress(&args.name, args.follow, &mut |line| {
        print_line(line, global.json);
        Ok(())
    })
    .map_err(exit::classify)?;
    Ok(0)
}

/// One audit record: as is with --json, else one readable line. A line
/// that does not parse (a newer writer, say) is shown escaped, never
/// dropped. Names come from the guest's own DNS queries, SNI and Host
/// headers: hostile text, escaped before it meets a terminal.
fn print_line(line: &str, json: bool) {
    if json {
        // Typed like every --json line (docs/json-output.md: `egress`).
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(record) => {
                if let Err(e) = crate::output::print_typed("egress", record) {
                    tracing::warn!("skipping an egress line: {e}");
                }
            }
            Err(e) => tracing::warn!("skipping a damaged egress line: {e}"),
        }
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        println!("{}", terminal_safe(line).replace('\n', "\\n"));
        return;
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let mut text = format!(
        "{}  {:<5} {:<3} {}",
        s("time"),
        s("decision"),
        s("proto"),
        s("dst")
    );
    if !s("name").is_empty() {
        text.push_str(&format!(" name={} ({})", s("name"), s("nameSource")));
    }
    if !s("rule").is_empty() {
        text.push_str(&format!(" rule={}", s("rule")));
    }
    if !s("reason").is_empty() {
        text.push_str(&format!(" reason={:?}", s("reason")));
    }
    if s("decision") == "allow" {
        text.push_str(&format!(
            " out={}B in={}B {}ms",
            n("bytesOut"),
            n("bytesIn"),
            n("durationMs")
        ));
    }
    println!("{}", terminal_safe(&text).replace('\n', "\\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(network: &str, publish: &[&str]) -> NetworkArgs {
        NetworkArgs {
            policy: PolicyArgs {
                network: network.into(),
                allow: vec![],
                deny: vec![],
            },
            publish: publish.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = args("private", &[]).parse().unwrap_err().to_string();
        assert!(e.contains("--network") && e.contains("private"), "{e}");
        let e = args("none", &["8080"]).parse().unwrap_err().to_string();
        assert!(e.contains("--publish") && e.contains("8080"), "{e}");
        let (net, publish) = args("none", &["8080:80"]).parse().unwrap();
        assert_eq!(net.mode, NetworkMode::None);
        assert_eq!(publish[0].to_string(), "127.0.0.1:8080:80");
    }
}

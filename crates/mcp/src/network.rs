//! The guest network a client may ask for: the server's own policy (the
//! operator's `microagent mcp --network/--allow/--deny`) or a narrower one,
//! never a wider one. A client may pick a stricter mode (`public` ->
//! `allowlist` -> `none`), allow a subset of what the server allows, and
//! add deny rules; the server's deny rules always stay.

use vmkit::protocol::{Network, NetworkMode};
use vmkit_net::Rule;

/// Checks the server's policy once, at start-up, with the network stack's
/// own rule parser and the protocol's bounds (as `run`/`create` do).
pub fn check_server(net: &Network) -> Result<(), String> {
    net.validate().map_err(|e| e.message)?;
    parse_all("--allow", &net.allow)?;
    parse_all("--deny", &net.deny)?;
    Ok(())
}

/// The network for a client's `network`/`allow`/`deny` arguments: the
/// server's where the client says nothing. `allow`, when given, replaces
/// the server's allow rules and each must lie within one of them (a name
/// rule also passes when the server's mode is `public`: names never unlock
/// a refused range, so they only narrow what public reaches).
pub fn narrow(
    server: &Network,
    mode: Option<NetworkMode>,
    allow: Option<Vec<String>>,
    deny: Vec<String>,
) -> Result<Network, String> {
    let mode = mode.unwrap_or(server.mode);
    let wider = |what: String| {
        Err(format!(
            "{what} would widen the server's network policy ({}); a client may only narrow it \
             (the operator sets it with microagent mcp --network/--allow/--deny)",
            describe(server)
        ))
    };
    match (server.mode, mode) {
        (NetworkMode::None, NetworkMode::Public | NetworkMode::Allowlist) => {
            return wider(format!("network {mode:?}", mode = mode.as_str()))
        }
        (NetworkMode::Allowlist, NetworkMode::Public) => return wider("network \"public\"".into()),
        _ => {}
    }
    if mode == NetworkMode::None {
        if allow.as_ref().is_some_and(|a| !a.is_empty()) || !deny.is_empty() {
            return Err("allow/deny rules need network public or allowlist, not none".into());
        }
        return Ok(Network {
            mode,
            allow: Vec::new(),
            deny: Vec::new(),
        });
    }
    let server_allow = parse_all("the server's --allow", &server.allow)?;
    let allow = match allow {
        None => server.allow.clone(),
        Some(rules) => {
            for (text, rule) in rules.iter().zip(parse_all("allow", &rules)?) {
                let name_in_public = server.mode == NetworkMode::Public && rule.is_name_rule();
                if !name_in_public && !server_allow.iter().any(|w| rule.within(w)) {
                    return wider(format!(
                        "allow {text:?} is not within any of the server's allow rules, so it"
                    ));
                }
            }
            rules
        }
    };
    parse_all("deny", &deny)?;
    let mut all_deny = server.deny.clone();
    all_deny.extend(deny);
    let net = Network {
        mode,
        allow,
        deny: all_deny,
    };
    net.validate().map_err(|e| e.message)?;
    Ok(net)
}

/// `allowlist, allow [a, b], deny [c]`: for messages and tool descriptions.
pub fn describe(net: &Network) -> String {
    let mut s = net.mode.as_str().to_owned();
    if !net.allow.is_empty() {
        s.push_str(&format!(", allow {}", net.allow.join(" ")));
    }
    if !net.deny.is_empty() {
        s.push_str(&format!(", deny {}", net.deny.join(" ")));
    }
    s
}

fn parse_all(what: &str, rules: &[String]) -> Result<Vec<Rule>, String> {
    if rules.len() > vmkit::protocol::MAX_RULES {
        return Err(format!(
            "{what}: {} rules; at most {} are supported",
            rules.len(),
            vmkit::protocol::MAX_RULES
        ));
    }
    rules
        .iter()
        .map(|r| Rule::parse(r).map_err(|e| format!("{what}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(mode: NetworkMode, allow: &[&str], deny: &[&str]) -> Network {
        Network {
            mode,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rules(r: &[&str]) -> Option<Vec<String>> {
        Some(r.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn saying_nothing_gets_the_servers_policy() {
        let server = net(NetworkMode::Allowlist, &["host:8080"], &["pkg.test"]);
        assert_eq!(narrow(&server, None, None, vec![]).unwrap(), server);
    }

    #[test]
    fn a_client_may_narrow_the_mode_and_the_rules_and_add_denies() {
        use NetworkMode::{Allowlist, Public};
        let server = net(
            Allowlist,
            &[".example.com:443", "203.0.113.0/24"],
            &["x.test"],
        );
        let n = narrow(
            &server,
            None,
            rules(&["a.example.com:443", "203.0.113.10:80"]),
            vec!["b.example.com".into()],
        )
        .unwrap();
        assert_eq!(n.allow, ["a.example.com:443", "203.0.113.10:80"]);
        assert_eq!(n.deny, ["x.test", "b.example.com"]);
        assert_eq!(
            narrow(&server, Some(NetworkMode::None), None, vec![])
                .unwrap()
                .mode,
            NetworkMode::None
        );
        // Public server: names only narrow; so does allowlist.
        let public = net(Public, &[], &[]);
        let n = narrow(&public, Some(Allowlist), rules(&["pkg.test:443"]), vec![]).unwrap();
        assert_eq!((n.mode, n.allow.len()), (Allowlist, 1));
    }

    #[test]
    fn anything_wider_is_refused_naming_the_servers_policy() {
        use NetworkMode::{Allowlist, Public};
        let allowlist = net(Allowlist, &["host:8080"], &[]);
        for (mode, allow) in [
            (Some(Public), None),
            (None, rules(&["host:8081"])),
            (None, rules(&["10.0.0.1"])),
            (None, rules(&["pkg.test"])),
        ] {
            let e = narrow(&allowlist, mode, allow, vec![]).unwrap_err();
            assert!(
                e.contains("widen") && e.contains("allowlist, allow host:8080"),
                "{e}"
            );
        }
        let none = net(NetworkMode::None, &[], &[]);
        assert!(narrow(&none, Some(Allowlist), None, vec![])
            .unwrap_err()
            .contains("widen"));
        // Public: IP, CIDR and host rules unlock refused ranges.
        let public = net(Public, &[], &[]);
        for rule in ["10.0.0.1", "169.254.169.254:80", "0.0.0.0/0", "host:22"] {
            let e = narrow(&public, None, rules(&[rule]), vec![]).unwrap_err();
            assert!(e.contains(rule), "{e}");
        }
    }

    #[test]
    fn bad_rules_are_named() {
        let public = net(NetworkMode::Public, &[], &[]);
        let e = narrow(&public, None, rules(&["bad rule!"]), vec![]).unwrap_err();
        assert!(e.starts_with("allow:") && e.contains("bad rule!"), "{e}");
        let e = narrow(&public, None, None, vec!["host".into()]).unwrap_err();
        assert!(e.starts_with("deny:"), "{e}");
        let e = narrow(
            &public,
            Some(NetworkMode::None),
            rules(&["pkg.test"]),
            vec![],
        );
        assert!(e.unwrap_err().contains("not none"));
        let e = check_server(&net(NetworkMode::Public, &["10.0.0.0/33"], &[])).unwrap_err();
        assert!(
            e.starts_with("--allow:") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let many: Vec<String> = (0..300).map(|i| format!("h{i}.test")).collect();
        assert!(narrow(&public, None, Some(many), vec![]).is_err());
    }

    /// Up to `n - 1` rules from `corpus`, a quarter of them with one byte changed.
    fn pick(next: &mut impl FnMut() -> u64, corpus: &[&str], n: u64) -> Vec<String> {
        (0..next() % n)
            .map(|_| {
                let mut r = corpus[next() as usize % corpus.len()].as_bytes().to_vec();
                if next().is_multiple_of(4) && !r.is_empty() {
                    let i = next() as usize % r.len();
                    r[i] = (next() % 128) as u8;
                }
                String::from_utf8_lossy(&r).into_owned()
            })
            .collect()
    }

    /// Client arguments are hostile: random combinations and byte-level
    /// mutations of rules never panic, and whatever is accepted is never
    /// wider than the server's policy.
    #[test]
    fn mutated_requests_never_panic_and_never_widen() {
        use NetworkMode::{Allowlist, Public};
        let corpus = [
            "pkg.test",
            "pkg.test:443",
            ".test",
            ".example.com:443",
            "a.example.com",
            "203.0.113.10",
            "203.0.113.0/24",
            "203.0.113.0/24:80",
            "10.0.0.1",
            "0.0.0.0/0",
            "host:8080",
            "host:1",
            "[fd00::1]:443",
            "fc00::/7",
            "169.254.169.254:80",
            "",
            "host",
            "a..b",
            "x:99999",
        ];
        let servers = [
            net(Public, &[], &["pkg.test"]),
            net(Public, &["203.0.113.0/24", "host:8080"], &[]),
            net(
                Allowlist,
                &[".example.com:443", "203.0.113.10", "host:8080"],
                &["b.example.com"],
            ),
            net(NetworkMode::None, &[], &[]),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let rank = |m: NetworkMode| match m {
            NetworkMode::None => 0,
            Allowlist => 1,
            Public => 2,
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let server = &servers[next() as usize % servers.len()];
            let allow = (!next().is_multiple_of(3)).then(|| pick(&mut next, &corpus, 4));
            let deny = pick(&mut next, &corpus, 3);
            let mode =
                [None, Some(Public), Some(Allowlist), Some(NetworkMode::None)][next() as usize % 4];
            let Ok(got) = narrow(server, mode, allow, deny) else {
                continue;
            };
            accepted += 1;
            assert!(rank(got.mode) <= rank(server.mode), "{server:?} -> {got:?}");
            if got.mode == NetworkMode::None {
                continue;
            }
            assert!(server.deny.iter().all(|d| got.deny.contains(d)), "{got:?}");
            let wide: Vec<Rule> = server
                .allow
                .iter()
                .map(|r| Rule::parse(r).unwrap())
                .collect();
            for text in &got.allow {
                let rule = Rule::parse(text).expect("accepted rules parse");
                let name_in_public = server.mode == Public && rule.is_name_rule();
                assert!(
                    name_in_public || wide.iter().any(|w| rule.within(w)),
                    "{text} accepted under {server:?}"
                );
            }
        }
        assert!(
            accepted > 2_000,
            "the cases do reach acceptance: {accepted}"
        );
    }
}

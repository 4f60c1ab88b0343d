//! Policy decisions, table by table (no sockets, no frames).

use std::net::SocketAddr;

use super::*;

fn engine(mode: Mode, allow: &[&str], deny: &[&str]) -> Egress {
    let policy = Policy {
        mode,
        allow: allow.iter().map(|r| Rule::parse(r).unwrap()).collect(),
        deny: deny.iter().map(|r| Rule::parse(r).unwrap()).collect(),
        limits: Limits::default(),
    };
    let ports = policy
        .allow
        .iter()
        .filter_map(Rule::host_service_port)
        .collect();
    Egress::new(
        policy,
        Ipv4Addr::new(10, 0, 2, 2),
        ports,
        vec!["192.0.2.99".parse().unwrap()],
    )
}

fn decide(e: &Egress, dst: &str, names: &[&str], peeked: Peeked<'_>) -> Check {
    let dst: SocketAddr = dst.parse().unwrap();
    e.check_flow(Proto::Tcp, dst, names, peeked)
}

fn allowed(e: &Egress, dst: &str, names: &[&str], peeked: Peeked<'_>) -> bool {
    match decide(e, dst, names, peeked) {
        Check::Done(v) => v.allow,
        Check::NeedsName => panic!("{dst}: needs a name"),
    }
}

#[test]
fn public_mode_allows_the_public_internet_only() {
    let e = engine(Mode::Public, &[], &[]);
    assert!(allowed(&e, "203.0.113.10:443", &[], Peeked::NotYet));
    for refused in [
        "127.0.0.1:80",
        "10.0.0.1:80",
        "169.254.169.254:80",
        "100.64.0.1:80",
        "192.0.2.99:22",
        "224.0.0.1:80",
    ] {
        assert!(!allowed(&e, refused, &[], Peeked::NotYet), "{refused}");
    }
}

#[test]
fn an_ip_rule_unlocks_a_private_address_even_in_public_mode() {
    let e = engine(Mode::Public, &["10.1.2.3:5432"], &[]);
    assert!(allowed(&e, "10.1.2.3:5432", &[], Peeked::NotYet));
    assert!(!allowed(&e, "10.1.2.3:5433", &[], Peeked::NotYet));
}

#[test]
fn name_rules_are_pinned_to_dns_and_checked_against_sni_and_host() {
    let e = engine(Mode::Allowlist, &["pkg.test", ".example.com:443"], &[]);
    assert!(
        !allowed(&e, "203.0.113.10:22", &[], Peeked::NotYet),
        "no DNS answer"
    );
    assert!(allowed(
        &e,
        "203.0.113.10:22",
        &["pkg.test"],
        Peeked::NotYet
    ));
    assert_eq!(
        decide(&e, "203.0.113.10:443", &["pkg.test"], Peeked::NotYet),
        Check::NeedsName
    );
    assert!(allowed(
        &e,
        "203.0.113.10:443",
        &["pkg.test"],
        Peeked::Name("pkg.test", NameSource::Sni)
    ));
    assert!(!allowed(
        &e,
        "203.0.113.10:443",
        &["pkg.test"],
        Peeked::Name("evil.test", NameSource::Sni)
    ));
    assert!(!allowed(
        &e,
        "203.0.113.10:443",
        &["pkg.test"],
        Peeked::NoName
    ));
    assert!(!allowed(
        &e,
        "203.0.113.10:80",
        &["pkg.test"],
        Peeked::Name("evil.test", NameSource::Host)
    ));
    // Suffix rule limited to 443.
    assert!(allowed(
        &e,
        "203.0.113.20:443",
        &["cdn.example.com"],
        Peeked::Name("www.example.com", NameSource::Sni)
    ));
    assert!(!allowed(
        &e,
        "203.0.113.20:22",
        &["cdn.example.com"],
        Peeked::NotYet
    ));
    // Rebinding: the name is allowed, the address is loopback.
    assert!(!allowed(&e, "127.0.0.1:22", &["pkg.test"], Peeked::NotYet));
}

#[test]
fn deny_wins_and_name_denies_read_sni_in_public_mode() {
    let e = engine(Mode::Public, &["10.0.0.0/8"], &["10.9.9.9", "blocked.test"]);
    assert!(!allowed(&e, "10.9.9.9:80", &[], Peeked::NotYet));
    assert!(allowed(&e, "10.9.9.8:22", &[], Peeked::NotYet));
    assert!(!allowed(
        &e,
        "203.0.113.10:22",
        &["blocked.test"],
        Peeked::NotYet
    ));
    assert_eq!(
        decide(&e, "203.0.113.10:443", &[], Peeked::NotYet),
        Check::NeedsName
    );
    assert!(!allowed(
        &e,
        "203.0.113.10:443",
        &[],
        Peeked::Name("blocked.test", NameSource::Sni)
    ));
    assert!(allowed(&e, "203.0.113.10:443", &[], Peeked::NoName));
    assert!(!e.check_dns("blocked.test").allow);
    assert!(e.check_dns("fine.test").allow);
}

#[test]
fn host_services_only_through_host_rules() {
    let e = engine(Mode::Allowlist, &["host:8080"], &[]);
    let Check::Done(v) = decide(&e, "10.0.2.2:8080", &[], Peeked::NotYet) else {
        panic!()
    };
    assert!(v.allow);
    assert_eq!(v.connect_to, Some("127.0.0.1:8080".parse().unwrap()));
    assert!(!allowed(&e, "10.0.2.2:8081", &[], Peeked::NotYet));
    let e = engine(Mode::Public, &["host:8080"], &["host:8080"]);
    assert!(!allowed(&e, "10.0.2.2:8080", &[], Peeked::NotYet));
}

#[test]
fn allowlist_dns_answers_only_allowed_names() {
    let e = engine(
        Mode::Allowlist,
        &["pkg.test", ".example.com"],
        &["bad.example.com"],
    );
    assert!(e.check_dns("pkg.test").allow);
    assert!(e.check_dns("a.example.com").allow);
    assert!(!e.check_dns("bad.example.com").allow);
    assert!(!e.check_dns("other.test").allow);
}

//! Credentials go only to the registry's own host: a Bearer challenge whose
//! realm is another host gets no Basic credentials (a scripted fake
//! registry on loopback plays the attacker; the "other host" is another
//! loopback address). Alone in its own test binary because it sets
//! REGISTRY_AUTH_FILE.

mod fake_registry;

use fake_registry::{Answer, FakeRegistry};
use vmkit_rootfs::{BuildOptions, ImageRef, RootfsBuilder};

/// Runs a pull against a registry whose challenge names a token server on
/// `token_ip`; returns the Authorization headers the token server saw.
fn token_requests_with_realm_on(token_ip: &str) -> Vec<Option<String>> {
    let token_server = FakeRegistry::start(token_ip, |_| Answer::json(200, br#"{"token":"t"}"#));
    let realm = format!("http://{}/token", token_server.addr);
    let reg = FakeRegistry::start("127.0.0.1", move |r| {
        if r.authorization.as_deref() == Some("Bearer t") {
            Answer::json(404, br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#)
        } else {
            Answer::Full {
                status: 401,
                headers: vec![(
                    "WWW-Authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="reg""#),
                )],
                body: vec![],
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("auth.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"username":"alice","password":"s3cret"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    std::env::set_var("REGISTRY_AUTH_FILE", &auth_file);
    let image = ImageRef::parse(&format!("{}/private/app:latest", reg.addr)).unwrap();
    let err = RootfsBuilder::new(dir.path().join("state"))
        .build(&image, &BuildOptions::default())
        .unwrap_err();
    // The registry took the token and then had no such manifest.
    assert!(err.to_string().contains("404"), "{err}");
    token_server
        .seen()
        .into_iter()
        .map(|s| s.authorization)
        .collect()
}

#[test]
fn a_realm_on_another_host_gets_no_credentials() {
    // Control: a realm on the registry's own (loopback) host gets them.
    let own = token_requests_with_realm_on("127.0.0.1");
    assert_eq!(own.len(), 1);
    let sent = own[0].as_deref().unwrap_or_default();
    assert!(sent.starts_with("Basic "), "{own:?}");
    // Another host: asked for a token, anonymously.
    let other = token_requests_with_realm_on("127.0.0.2");
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0], None, "credentials sent to another host");
}

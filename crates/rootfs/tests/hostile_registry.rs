//! A hostile registry (a scripted fake on loopback: it is the attacker)
//! sends endless and dripping bodies. Each pull must end with a clear
//! error, inside its deadline, in bounded memory.

mod fake_registry;

use std::time::{Duration, Instant};

use fake_registry::{peak_rss_kib, Answer, FakeRegistry};
use vmkit_rootfs::{BuildOptions, ImageRef, Limits, RootfsBuilder, RootfsError};

const RSS_BOUND_KIB: u64 = 256 << 10;
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Pulls `repo:latest` from `reg` with `deadline`; returns the error and
/// how long it took.
fn pull(reg: &FakeRegistry, deadline: Duration) -> (RootfsError, Duration) {
    let state = tempfile::tempdir().unwrap();
    let image = ImageRef::parse(&format!("{}/evil/app:latest", reg.addr)).unwrap();
    let started = Instant::now();
    let err = RootfsBuilder::new(state.path())
        .build(
            &image,
            &BuildOptions {
                limits: Limits {
                    pull_deadline: deadline,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        peak_rss_kib() < RSS_BOUND_KIB,
        "peak RSS {} KiB after: {err}",
        peak_rss_kib()
    );
    (err, took)
}

fn endless(status: u16) -> Answer {
    Answer::Endless {
        status,
        headers: vec![("Content-Type".into(), MANIFEST_TYPE.into())],
        chunk: vec![b' '; 64 << 10],
    }
}

#[test]
fn an_endless_manifest_is_refused_at_its_bound() {
    let reg = FakeRegistry::start("127.0.0.1", |_| endless(200));
    let (err, took) = pull(&reg, Duration::from_secs(120));
    assert!(
        err.to_string().contains("larger than 4194304 bytes"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    // One announcing its size is refused before any of it is read.
    let reg = FakeRegistry::start("127.0.0.1", |_| Answer::Full {
        status: 200,
        headers: vec![("Content-Type".into(), MANIFEST_TYPE.into())],
        body: vec![b' '; 5 << 20],
    });
    let (err, _) = pull(&reg, Duration::from_secs(120));
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn a_config_blob_longer_than_its_descriptor_is_refused() {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha(config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    let reg = FakeRegistry::start("127.0.0.1", move |r| {
        if r.path.contains("/manifests/") {
            Answer::Full {
                status: 200,
                headers: vec![("Content-Type".into(), MANIFEST_TYPE.into())],
                body: manifest.clone(),
            }
        } else {
            endless(200)
        }
    });
    let (err, _) = pull(&reg, Duration::from_secs(120));
    assert!(
        err.to_string().contains(&format!(
            "config {config_digest} is larger than {} bytes",
            config.len()
        )),
        "{err}"
    );
}

#[test]
fn endless_token_and_error_bodies_are_cut_short() {
    // A Bearer challenge whose realm answers forever.
    let token_server = FakeRegistry::start("127.0.0.1", |_| endless(200));
    let realm = format!("http://{}/token", token_server.addr);
    let reg = FakeRegistry::start("127.0.0.1", move |_| Answer::Full {
        status: 401,
        headers: vec![(
            "WWW-Authenticate".into(),
            format!(r#"Bearer realm="{realm}",service="evil""#),
        )],
        body: vec![],
    });
    let (err, _) = pull(&reg, Duration::from_secs(120));
    assert!(
        err.to_string().contains("token answer is larger than"),
        "{err}"
    );

    // An error status with an endless body: the message keeps its start.
    let reg = FakeRegistry::start("127.0.0.1", |_| endless(404));
    let (err, _) = pull(&reg, Duration::from_secs(120));
    let text = err.to_string();
    assert!(text.contains("404"), "{text}");
    assert!(text.len() < 8 << 10, "{} bytes of error", text.len());
}

#[test]
fn a_dripping_registry_ends_at_the_pull_deadline() {
    // One byte every 200 ms: no single read ever times out.
    let reg = FakeRegistry::start("127.0.0.1", |_| Answer::Drip {
        every: Duration::from_millis(200),
    });
    let (err, took) = pull(&reg, Duration::from_secs(3));
    assert!(err.to_string().contains("deadline of 3s"), "{err}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

//! Against a real registry (Debian's docker-registry on loopback): push
//! images the test builds, pull them back by tag and by digest, build,
//! check with debugfs; tampered blobs are refused and leave nothing behind.

mod common;

use std::time::Instant;

use common::{cat, stat};
use vmkit_rootfs::{BuildOptions, ImageRef, PullPolicy, RootfsBuilder, RootfsError};
use vmkit_testkit::images::{self, Compression, ImageSpec, LayerBuilder};
use vmkit_testkit::registry::Registry;

fn two_layer_spec(marker: &str) -> ImageSpec {
    let mut top = LayerBuilder::new();
    top.dir("app", 0o750, 1000, 1000)
        .file("app/marker", marker.as_bytes(), 0o640, 1000, 1000)
        .whiteout("etc/group");
    ImageSpec::new(
        vec![
            (images::busybox_layer().finish(), Compression::Gzip),
            (top.finish(), Compression::Gzip),
        ],
        serde_json::json!({"Cmd": ["/bin/sh"], "Env": ["X=1"]}),
    )
}

#[test]
fn push_pull_by_tag_and_digest_then_build() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    images::write_oci_layout(&layout, "v1", &two_layer_spec("one"));
    let pushed = reg.push_oci_layout(&layout, "v1", "team/app:v1");

    let builder = RootfsBuilder::new(tmp.path().join("state"));
    let by_tag = ImageRef::parse(&format!("{}/team/app:v1", reg.addr())).unwrap();
    let t = Instant::now();
    let built = builder.build(&by_tag, &BuildOptions::default()).unwrap();
    eprintln!("cold pull + build: {:?}", t.elapsed());
    assert_eq!(built.manifest_digest, pushed);
    assert!(!built.cached);
    let img = &built.path;
    assert_eq!(cat(img, "/app/marker"), b"one");
    let m = stat(img, "/app/marker").unwrap();
    assert_eq!((m.mode, m.uid, m.gid), (0o640, 1000, 1000));
    assert_eq!(stat(img, "/app").unwrap().mode, 0o750);
    assert!(stat(img, "/etc/group").is_none(), "whiteout applied");
    assert!(stat(img, "/etc/passwd").is_some());
    assert_eq!(built.image_config.cmd, Some(vec!["/bin/sh".to_string()]));

    // Cached: the reference resolves locally and the disk is reused.
    let t = Instant::now();
    let again = builder.build(&by_tag, &BuildOptions::default()).unwrap();
    let took = t.elapsed();
    assert!(again.cached);
    assert!(took.as_millis() < 50, "cached build took {took:?}");

    // By digest, into a fresh state folder.
    let builder2 = RootfsBuilder::new(tmp.path().join("state2"));
    let by_digest = ImageRef::parse(&format!("{}/team/app@{pushed}", reg.addr())).unwrap();
    let b2 = builder2
        .build(&by_digest, &BuildOptions::default())
        .unwrap();
    assert_eq!(b2.manifest_digest, pushed);
    assert_eq!(cat(&b2.path, "/app/marker"), b"one");

    // Retagging upstream: the local record wins until pulled again.
    images::write_oci_layout(&layout, "v1", &two_layer_spec("two"));
    let pushed2 = reg.push_oci_layout(&layout, "v1", "team/app:v1");
    assert_ne!(pushed, pushed2);
    assert_eq!(
        builder
            .build(&by_tag, &BuildOptions::default())
            .unwrap()
            .manifest_digest,
        pushed
    );
    let fresh = builder
        .build(
            &by_tag,
            &BuildOptions {
                pull: PullPolicy::Always,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(fresh.manifest_digest, pushed2);
    assert_eq!(cat(&fresh.path, "/app/marker"), b"two");

    // ls / rm.
    let store = builder.store();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].manifest_digest, pushed2);
    assert_eq!(listed[0].reference, format!("{}/team/app:v1", reg.addr()));
    assert!(fresh.path.exists());
    let removed = builder.remove_image(by_tag.as_registry().unwrap()).unwrap();
    assert_eq!(removed.len(), 1);
    assert!(store.list().unwrap().is_empty());
    // The disk built from it went too (no other reference names it).
    assert!(!fresh.path.exists());
    let blobs = tmp.path().join("state/images/blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "unreferenced blobs collected"
    );
    assert!(matches!(
        builder.remove_image(by_tag.as_registry().unwrap()),
        Err(RootfsError::NotFound(_))
    ));
    let never = builder.build(
        &by_tag,
        &BuildOptions {
            pull: PullPolicy::Never,
            ..Default::default()
        },
    );
    assert!(matches!(never, Err(RootfsError::NotFound(_))));
}

#[test]
fn tampered_blob_is_refused_and_nothing_is_kept() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut l = LayerBuilder::new();
    l.file("payload", &vec![7u8; 4096], 0o644, 0, 0);
    let spec = ImageSpec::new(vec![(l.finish(), Compression::Gzip)], serde_json::json!({}));
    images::write_oci_layout(&layout, "t", &spec);
    reg.push_oci_layout(&layout, "t", "evil/app:t");

    // Corrupt the layer inside the registry's storage, keeping its size.
    let layer_digest = {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let md = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(&md[7..])).unwrap(),
        )
        .unwrap();
        m["layers"][0]["digest"].as_str().unwrap().to_string()
    };
    let hex = &layer_digest[7..];
    let data = reg.storage().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let builder = RootfsBuilder::new(tmp.path().join("state"));
    let image = ImageRef::parse(&format!("{}/evil/app:t", reg.addr())).unwrap();
    let err = builder.build(&image, &BuildOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&layer_digest) || msg.contains("verification") || msg.contains("digest"),
        "{msg}"
    );
    // Nothing trusted was recorded.
    assert!(builder.store().list().unwrap().is_empty());
    let blob = tmp.path().join("state/images/blobs/sha256").join(hex);
    assert!(!blob.exists(), "tampered blob must not be stored");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("state/images/tmp"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn unknown_image_and_platform_errors_are_clear() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let builder = RootfsBuilder::new(tmp.path().join("state"));
    let image = ImageRef::parse(&format!("{}/nope/nothing:v1", reg.addr())).unwrap();
    let err = builder.build(&image, &BuildOptions::default()).unwrap_err();
    assert!(matches!(err, RootfsError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains("nope/nothing"), "{err}");
}

fn marked(marker: &str, arch: &str) -> ImageSpec {
    let mut l = LayerBuilder::new();
    l.file("arch", marker.as_bytes(), 0o644, 0, 0);
    let mut spec = ImageSpec::new(
        vec![(l.finish(), Compression::Gzip)],
        serde_json::json!({"Cmd": [marker]}),
    );
    spec.architecture = arch.into();
    spec
}

#[test]
fn multi_platform_index_picks_the_platform() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let (amd, arm, armv7) = (
        marked("amd64", "amd64"),
        marked("arm64", "arm64"),
        marked("armv7", "arm"),
    );
    let (index_digest, manifests) = images::write_oci_index(
        &layout,
        "multi",
        &[
            ("linux/amd64", &amd),
            ("linux/arm64/v8", &arm),
            ("linux/arm/v7", &armv7),
        ],
    );
    let pushed = reg.push_oci_layout(&layout, "multi", "multi/app:1");
    assert_eq!(pushed, index_digest);

    let builder = RootfsBuilder::new(tmp.path().join("state"));
    let by_tag = ImageRef::parse(&format!("{}/multi/app:1", reg.addr())).unwrap();
    let by_digest = ImageRef::parse(&format!("{}/multi/app@{index_digest}", reg.addr())).unwrap();
    let layout_ref = ImageRef::parse(&format!("oci-layout:{}:multi", layout.display())).unwrap();
    for (platform, marker, manifest) in [
        ("linux/amd64", "amd64", &manifests[0]),
        ("linux/arm64", "arm64", &manifests[1]),
        ("linux/arm/v7", "armv7", &manifests[2]),
    ] {
        let opts = BuildOptions {
            platform: Some(vmkit_rootfs::Platform::parse(platform).unwrap()),
            ..Default::default()
        };
        for image in [&by_tag, &by_digest, &layout_ref] {
            let built = builder.build(image, &opts).unwrap();
            assert_eq!(&built.manifest_digest, manifest, "{image} for {platform}");
            assert_eq!(
                cat(&built.path, "/arch"),
                marker.as_bytes(),
                "{image} for {platform}"
            );
            assert_eq!(built.image_config.cmd, Some(vec![marker.to_string()]));
        }
    }
    // The host's platform by default (these tests run on amd64 hosts).
    let built = builder.build(&by_tag, &BuildOptions::default()).unwrap();
    assert_eq!(built.manifest_digest, manifests[0]);

    let opts = BuildOptions {
        platform: Some(vmkit_rootfs::Platform::parse("linux/s390x").unwrap()),
        ..Default::default()
    };
    let err = builder.build(&by_tag, &opts).unwrap_err();
    assert!(
        matches!(err, RootfsError::NoMatchingPlatform { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
}

#[test]
fn bearer_token_auth_anonymous_flow() {
    let reg = Registry::start_with_token_auth(&["tok/app"]);
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let pushed = images::busybox_oci_layout(&layout, "latest");
    assert_eq!(
        reg.push_oci_layout(&layout, "latest", "tok/app:latest"),
        pushed
    );
    // Without a token the registry refuses.
    assert_eq!(
        vmkit_testkit::registry::http_status(reg.addr(), "/v2/tok/app/manifests/latest"),
        Some(401)
    );

    let before = reg.token_requests().len();
    let builder = RootfsBuilder::new(tmp.path().join("state"));
    let image = ImageRef::parse(&format!("{}/tok/app:latest", reg.addr())).unwrap();
    let built = builder.build(&image, &BuildOptions::default()).unwrap();
    assert_eq!(built.manifest_digest, pushed);
    assert!(stat(&built.path, "/bin/busybox").is_some());
    let asked: Vec<String> = reg.token_requests().split_off(before);
    assert!(
        asked
            .iter()
            .any(|r| r.contains("scope=repository%3Atok%2Fapp%3Apull")
                || r.contains("scope=repository:tok/app:pull")),
        "the client fetched a pull token: {asked:?}"
    );
}

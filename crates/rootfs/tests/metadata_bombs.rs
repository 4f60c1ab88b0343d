//! Layer metadata bombs: archive records that `tar` would read whole into
//! memory before any check of ours (GNU long names and long links, PAX
//! headers), a few hundred MiB each in a small gzip layer. Each build runs
//! in a child process (this test binary, re-run) that reports its own peak
//! RSS (`VmHWM`), so the bound is measured, not assumed.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};
use vmkit_rootfs::{BuildOptions, ImageRef, Limits, RootfsBuilder, RootfsError};
use vmkit_testkit::images::{self, Compression, ImageSpec, LayerBuilder};

/// Far more than the bound below, so that reading the record whole shows.
const BOMB_BYTES: u64 = 384 << 20;
/// Peak RSS the building process may reach.
const RSS_BOUND_KIB: u64 = 256 << 10;

const CHILD_IMAGE: &str = "MICROAGENT_TEST_BOMB_IMAGE";
const CHILD_STATE: &str = "MICROAGENT_TEST_BOMB_STATE";

/// A tar header for a metadata record of `kind` announcing `size` bytes.
fn record_header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put_blob(layout: &Path, bytes: &[u8]) -> serde_json::Value {
    let d = sha(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
    serde_json::json!({"digest": d, "size": bytes.len()})
}

/// An OCI layout of one gzip layer holding a `kind` bomb. The layer is a
/// run of gzip members (the builder reads multi-member gzip, as gzip does):
/// the record's header, one small member of 1 MiB of `a` repeated, then the
/// rest, so making it costs next to nothing.
fn bomb_layout(dir: &Path, kind: tar::EntryType) -> String {
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let gzip = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let mut tail = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("pwned").unwrap();
    h.set_size(0);
    h.set_cksum();
    tail.extend_from_slice(h.as_bytes());
    tail.extend_from_slice(&[0u8; 1024]);
    let mib = gzip(&vec![b'a'; 1 << 20]);
    let mut layer = gzip(record_header(kind, BOMB_BYTES).as_bytes());
    for _ in 0..BOMB_BYTES >> 20 {
        layer.extend_from_slice(&mib);
    }
    layer.extend_from_slice(&gzip(&tail));
    // Never checked: the layer is refused long before its end. (Hashing
    // the whole uncompressed stream would cost more than the test.)
    let diff_id = sha(b"");
    let mut layer_desc = put_blob(&layout, &layer);
    layer_desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let mut config_desc = put_blob(&layout, &config);
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }))
    .unwrap();
    let mut manifest_desc = put_blob(&layout, &manifest);
    manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    manifest_desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "x"});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]}))
            .unwrap(),
    )
    .unwrap();
    format!("oci-layout:{}:x", layout.display())
}

/// A `docker save` archive whose outer tar starts with a long-name bomb
/// (sparse on disk: the record is zeros).
fn bomb_docker_archive(dir: &Path) -> String {
    let file = dir.join("image.tar");
    let spec = ImageSpec::new(
        vec![(LayerBuilder::new().finish(), Compression::None)],
        serde_json::json!({}),
    );
    images::write_docker_archive(&dir.join("plain.tar"), "x:latest", &spec);
    let plain = std::fs::read(dir.join("plain.tar")).unwrap();
    let mut f = File::create(&file).unwrap();
    f.write_all(record_header(tar::EntryType::GNULongName, BOMB_BYTES).as_bytes())
        .unwrap();
    f.seek(SeekFrom::Current(BOMB_BYTES as i64)).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("ignored").unwrap();
    h.set_size(0);
    h.set_cksum();
    f.write_all(h.as_bytes()).unwrap();
    f.write_all(&plain).unwrap();
    format!("docker-archive:{}", file.display())
}

/// In the child: build, then print the error and our peak RSS.
fn child_build() {
    let image = std::env::var(CHILD_IMAGE).unwrap();
    let state = std::env::var(CHILD_STATE).unwrap();
    let result = RootfsBuilder::new(&state)
        .build(&ImageRef::parse(&image).unwrap(), &BuildOptions::default());
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .to_owned();
    let error = match result {
        Ok(_) => "accepted".to_owned(),
        Err(e @ RootfsError::LimitExceeded { .. }) => format!("limit: {e}"),
        Err(e) => format!("other: {e}"),
    };
    println!("BOMB-RESULT hwm_kib={hwm} error={error}");
}

/// Runs `test` of this binary as the child building `image`; returns
/// (peak RSS in KiB, error text).
fn build_in_child(test: &str, image: &str, state: &Path) -> (u64, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_IMAGE, image)
        .env(CHILD_STATE, state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.split_once("BOMB-RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("the child did not report: {text}"));
    let (hwm, error) = line.split_once(" error=").unwrap();
    let hwm = hwm.strip_prefix("hwm_kib=").unwrap().parse().unwrap();
    (hwm, error.to_owned())
}

fn assert_bounded_refusal(test: &str, image: impl FnOnce(&Path) -> String) {
    if std::env::var_os(CHILD_IMAGE).is_some() {
        return child_build();
    }
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path());
    let state = dir.path().join("state");
    let (hwm, error) = build_in_child(test, &image, &state);
    assert!(
        hwm < RSS_BOUND_KIB,
        "peak RSS {hwm} KiB is above {RSS_BOUND_KIB} KiB ({error})"
    );
    assert!(
        error.starts_with("limit: ") && error.contains("metadata"),
        "not refused for its metadata: {error}"
    );
    eprintln!("{test}: refused with a peak RSS of {hwm} KiB: {error}");
}

#[test]
fn a_gnu_long_name_bomb_is_refused_in_bounded_memory() {
    assert_bounded_refusal("a_gnu_long_name_bomb_is_refused_in_bounded_memory", |d| {
        bomb_layout(d, tar::EntryType::GNULongName)
    });
}

#[test]
fn a_gnu_long_link_bomb_is_refused_in_bounded_memory() {
    assert_bounded_refusal("a_gnu_long_link_bomb_is_refused_in_bounded_memory", |d| {
        bomb_layout(d, tar::EntryType::GNULongLink)
    });
}

#[test]
fn a_pax_header_bomb_is_refused_in_bounded_memory() {
    assert_bounded_refusal("a_pax_header_bomb_is_refused_in_bounded_memory", |d| {
        bomb_layout(d, tar::EntryType::XHeader)
    });
}

#[test]
fn a_long_name_bomb_in_a_docker_archive_is_refused_in_bounded_memory() {
    assert_bounded_refusal(
        "a_long_name_bomb_in_a_docker_archive_is_refused_in_bounded_memory",
        bomb_docker_archive,
    );
}

/// Many small entries, each harmless, add up: what is kept about them
/// (directory times, per-layer tables) has a budget per layer and per image.
#[test]
fn kept_metadata_has_a_budget_per_layer_and_per_image() {
    if std::env::var_os(CHILD_IMAGE).is_some() {
        return; // only the bomb tests have a child part
    }
    let dir = tempfile::tempdir().unwrap();
    let mut l = LayerBuilder::new();
    for i in 0..4000 {
        l.dir(&format!("d{i:05}-{}", "n".repeat(80)), 0o755, 0, 0);
    }
    let spec = ImageSpec::new(vec![(l.finish(), Compression::Gzip)], serde_json::json!({}));
    images::write_oci_layout(&dir.path().join("layout"), "x", &spec);
    let image = ImageRef::parse(&format!(
        "oci-layout:{}:x",
        dir.path().join("layout").display()
    ))
    .unwrap();
    let build = |limits: Limits| {
        RootfsBuilder::new(dir.path().join("state")).build(
            &image,
            &BuildOptions {
                limits,
                ..Default::default()
            },
        )
    };
    for limits in [
        Limits {
            max_layer_metadata_bytes: 256 << 10,
            ..Default::default()
        },
        Limits {
            max_image_metadata_bytes: 256 << 10,
            ..Default::default()
        },
    ] {
        let err = build(limits).unwrap_err();
        assert!(
            matches!(&err, RootfsError::LimitExceeded { what, .. } if what.contains("metadata kept")),
            "{err}"
        );
    }
    // The same image within the defaults builds.
    build(Limits::default()).unwrap();
}

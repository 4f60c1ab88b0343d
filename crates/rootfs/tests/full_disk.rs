//! A full disk never leaves a half entry that a later run would trust: the
//! state folder lives on a tiny tmpfs, builds and pulls run out of space,
//! and afterwards the cache and the store hold nothing, while a retry on a
//! roomier disk succeeds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use vmkit_rootfs::{BuildOptions, ImageRef, RootfsBuilder, RootfsError};
use vmkit_testkit::images::{self, Compression, ImageSpec, LayerBuilder};
use vmkit_testkit::registry::Registry;

/// A small tmpfs, unmounted on drop (the temp folder holding the mount
/// point goes after it).
struct TinyDisk(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TinyDisk {
    fn new(size: &str) -> TinyDisk {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .status()
            .expect("mount (CI runs as root)");
        assert!(st.success(), "mounting a tmpfs needs root");
        TinyDisk(mnt, dir)
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Bytes that do not compress.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn spec() -> ImageSpec {
    let mut l = LayerBuilder::new();
    l.file("noise1", &noise(3 << 20, 1), 0o644, 0, 0).file(
        "noise2",
        &noise(3 << 20, 2),
        0o644,
        0,
        0,
    );
    ImageSpec::new(vec![(l.finish(), Compression::Gzip)], serde_json::json!({}))
}

fn cache_entries(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("rootfs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "tmp" && n != "file-digests")
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn full_disk_during_build_and_pull_leaves_nothing_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    images::write_oci_layout(&layout, "x", &spec());
    let image = ImageRef::parse(&format!("oci-layout:{}:x", layout.display())).unwrap();

    // mke2fs runs out of room writing the disk.
    let disk = TinyDisk::new("4m");
    let state = disk.0.join("state");
    let err = RootfsBuilder::new(&state)
        .build(&image, &BuildOptions::default())
        .unwrap_err();
    eprintln!("build on a full disk: {err}");
    assert!(
        matches!(err, RootfsError::Tool { .. } | RootfsError::Io { .. }),
        "{err:?}"
    );
    assert!(cache_entries(&state).is_empty());
    assert_eq!(
        std::fs::read_dir(state.join("rootfs/tmp")).unwrap().count(),
        0
    );

    // Pulling into a full store: no blob, no record.
    let reg = Registry::start();
    reg.push_oci_layout(&layout, "x", "full/app:x");
    let remote = ImageRef::parse(&format!("{}/full/app:x", reg.addr())).unwrap();
    let small = TinyDisk::new("2m");
    let state2 = small.0.join("state");
    let err = RootfsBuilder::new(&state2)
        .build(&remote, &BuildOptions::default())
        .unwrap_err();
    eprintln!("pull into a full store: {err}");
    assert!(
        matches!(err, RootfsError::Io { .. } | RootfsError::Registry { .. }),
        "{err:?}"
    );
    let builder = RootfsBuilder::new(&state2);
    assert!(builder.store().list().unwrap().is_empty());
    let blobs: Vec<_> = std::fs::read_dir(state2.join("images/blobs/sha256"))
        .map(|rd| {
            rd.flatten()
                .map(|e| std::fs::metadata(e.path()).unwrap().len())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        blobs.iter().all(|&len| len < 4096),
        "only small verified blobs (config) may be stored: {blobs:?}"
    );
    assert_eq!(
        std::fs::read_dir(state2.join("images/tmp"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );

    // With room, the same state folders work.
    let roomy = tmp.path().join("roomy");
    let built = RootfsBuilder::new(&roomy)
        .build(&remote, &BuildOptions::default())
        .unwrap();
    common::fsck_clean(&built.path);
}

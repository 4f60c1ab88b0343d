//! Hostile layers: each case asserts the error and that nothing appeared
//! outside the staging root (the whole "world" folder around the state
//! folder is scanned for the payload's name, and the cache stays empty).

mod common;

use std::path::{Path, PathBuf};

use common::{cat, readlink, stat, tree};
use vmkit_rootfs::{BuildOptions, ImageRef, Limits, RootfsBuilder, RootfsError};
use vmkit_testkit::images::{self, Compression, ImageSpec, LayerBuilder};

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        World { dir }
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// Five levels below the world, as the default staging would be.
    fn staging(&self) -> PathBuf {
        let p = self.dir.path().join("state/rootfs/staging");
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    /// Builds an image of `layers` (gzip) with `limits`.
    fn build(
        &self,
        layers: Vec<Vec<u8>>,
        limits: Limits,
    ) -> Result<vmkit_rootfs::BuiltRootfs, RootfsError> {
        let layout = self.dir.path().join("layout");
        let _ = std::fs::remove_dir_all(&layout);
        let spec = ImageSpec::new(
            layers.into_iter().map(|l| (l, Compression::Gzip)).collect(),
            serde_json::json!({}),
        );
        images::write_oci_layout(&layout, "x", &spec);
        self.build_layout(&layout, limits)
    }
    fn build_layout(
        &self,
        layout: &Path,
        limits: Limits,
    ) -> Result<vmkit_rootfs::BuiltRootfs, RootfsError> {
        RootfsBuilder::new(self.state()).build(
            &ImageRef::parse(&format!("oci-layout:{}:x", layout.display())).unwrap(),
            &BuildOptions {
                limits,
                // On disk inside the world, so that escapes would land in it.
                staging_dir: Some(self.staging()),
                ..Default::default()
            },
        )
    }
    /// Nothing named `pwned` anywhere, no cache entry, no temp leftovers.
    fn assert_untouched(&self) {
        let all = tree(self.dir.path());
        let leaks: Vec<&String> = all
            .iter()
            .filter(|p| p.contains("pwned") && !p.starts_with("layout"))
            .collect();
        assert!(leaks.is_empty(), "payload escaped: {leaks:?}");
        let cache = self.state().join("rootfs");
        if cache.exists() {
            let entries: Vec<String> = std::fs::read_dir(&cache)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "tmp" && n != "staging")
                .collect();
            assert!(entries.is_empty(), "a cache entry was written: {entries:?}");
            assert_eq!(
                std::fs::read_dir(cache.join("tmp")).unwrap().count(),
                0,
                "staging left behind"
            );
        }
    }
}

fn unsafe_entry(r: Result<vmkit_rootfs::BuiltRootfs, RootfsError>, needle: &str) {
    match r {
        Err(e @ RootfsError::UnsafeEntry { .. }) => assert!(e.to_string().contains(needle), "{e}"),
        Err(e) => panic!("expected an UnsafeEntry error mentioning {needle:?}, got {e:?}"),
        Ok(_) => panic!("hostile image was accepted ({needle})"),
    }
}

#[test]
fn dotdot_names_are_refused() {
    let w = World::new();
    let mut l = LayerBuilder::new();
    l.file("ok", b"fine", 0o644, 0, 0)
        .file("../../../../../outside/pwned", b"x", 0o644, 0, 0);
    unsafe_entry(w.build(vec![l.finish()], Limits::default()), "'..'");
    w.assert_untouched();

    let mut l = LayerBuilder::new();
    l.file("a/../../pwned", b"x", 0o644, 0, 0);
    unsafe_entry(w.build(vec![l.finish()], Limits::default()), "'..'");
    w.assert_untouched();
}

#[test]
fn absolute_names_are_refused() {
    let w = World::new();
    let target = w.dir.path().join("outside/pwned");
    let mut l = LayerBuilder::new();
    l.file(target.to_str().unwrap(), b"x", 0o644, 0, 0);
    unsafe_entry(w.build(vec![l.finish()], Limits::default()), "absolute");
    assert!(!target.exists());
    w.assert_untouched();
}

#[test]
fn writing_through_an_escaping_symlink_is_refused() {
    let w = World::new();
    // Same layer.
    let mut l = LayerBuilder::new();
    l.symlink("esc", "../../../../../outside")
        .file("esc/pwned", b"x", 0o644, 0, 0);
    unsafe_entry(
        w.build(vec![l.finish()], Limits::default()),
        "outside the root",
    );
    w.assert_untouched();
    // Link in one layer, write in the next; deeper chain of links.
    let mut a = LayerBuilder::new();
    a.dir("d", 0o755, 0, 0)
        .symlink("d/up", "..")
        .symlink("d/esc", "up/d/up/../../../../..");
    let mut b = LayerBuilder::new();
    b.dir("d/esc/outside", 0o755, 0, 0)
        .file("d/esc/outside/pwned", b"x", 0o644, 0, 0);
    unsafe_entry(
        w.build(vec![a.finish(), b.finish()], Limits::default()),
        "outside the root",
    );
    w.assert_untouched();
}

#[test]
fn absolute_symlinks_resolve_inside_the_image() {
    // An absolute target means the image's root, as in the guest: the write
    // lands inside the image, never on the host path.
    let w = World::new();
    let host_dir = w.dir.path().join("outside");
    let mut l = LayerBuilder::new();
    l.symlink("abs", host_dir.to_str().unwrap())
        .file("abs/pwned-inside", b"confined", 0o644, 0, 0);
    let built = w.build(vec![l.finish()], Limits::default()).unwrap();
    assert!(!host_dir.join("pwned-inside").exists());
    let inside = format!("{}/pwned-inside", host_dir.display());
    assert_eq!(cat(&built.path, &inside), b"confined");
    assert_eq!(readlink(&built.path, "/abs"), host_dir.to_str().unwrap());
}

#[test]
fn a_symlink_in_the_last_component_is_replaced_not_followed() {
    let w = World::new();
    let victim = w.dir.path().join("outside/victim");
    std::fs::write(&victim, b"original").unwrap();
    let mut a = LayerBuilder::new();
    a.dir("etc", 0o755, 0, 0)
        .symlink("etc/shadow", "../../../../../../outside/victim");
    let mut b = LayerBuilder::new();
    b.file("etc/shadow", b"pwned", 0o600, 0, 0);
    let built = w
        .build(vec![a.finish(), b.finish()], Limits::default())
        .unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"original");
    assert_eq!(cat(&built.path, "/etc/shadow"), b"pwned");
    assert_eq!(stat(&built.path, "/etc/shadow").unwrap().kind, "regular");
}

#[test]
fn hard_links_cannot_reach_out() {
    let w = World::new();
    std::fs::write(w.dir.path().join("outside/secret"), b"host secret").unwrap();
    // Direct '..'.
    let mut l = LayerBuilder::new();
    l.hardlink("pwned", "../../../../../outside/secret");
    unsafe_entry(w.build(vec![l.finish()], Limits::default()), "'..'");
    w.assert_untouched();
    // Through an escaping symlink.
    let mut l = LayerBuilder::new();
    l.symlink("esc", "../../../../../outside")
        .hardlink("pwned", "esc/secret");
    unsafe_entry(
        w.build(vec![l.finish()], Limits::default()),
        "outside the root",
    );
    w.assert_untouched();
    // Absolute link names are refused.
    let mut l = LayerBuilder::new();
    l.hardlink("pwned", "/etc/passwd");
    unsafe_entry(w.build(vec![l.finish()], Limits::default()), "absolute");
    w.assert_untouched();
    // To something that does not exist.
    let mut l = LayerBuilder::new();
    l.hardlink("pwned", "nothing-here");
    unsafe_entry(
        w.build(vec![l.finish()], Limits::default()),
        "does not exist",
    );
    w.assert_untouched();
}

#[test]
fn writing_to_a_hard_link_name_does_not_modify_its_sibling() {
    let w = World::new();
    let mut a = LayerBuilder::new();
    a.file("a", b"orig", 0o644, 0, 0).hardlink("b", "a");
    let mut b = LayerBuilder::new();
    b.file("b", b"new", 0o644, 0, 0);
    let built = w
        .build(vec![a.finish(), b.finish()], Limits::default())
        .unwrap();
    assert_eq!(cat(&built.path, "/a"), b"orig");
    assert_eq!(cat(&built.path, "/b"), b"new");
    assert_eq!(stat(&built.path, "/a").unwrap().links, 1);
}

#[test]
fn symlink_loops_are_refused() {
    let w = World::new();
    let mut l = LayerBuilder::new();
    l.symlink("a", "b")
        .symlink("b", "a")
        .file("a/pwned", b"x", 0o644, 0, 0);
    unsafe_entry(
        w.build(vec![l.finish()], Limits::default()),
        "too many levels",
    );
    w.assert_untouched();
}

#[test]
fn bad_whiteouts_are_refused() {
    let w = World::new();
    let mut l = LayerBuilder::new();
    l.dir("d", 0o755, 0, 0).file("d/.wh..", b"", 0o644, 0, 0);
    unsafe_entry(w.build(vec![l.finish()], Limits::default()), "whiteout");
    w.assert_untouched();
    // A whiteout cannot delete outside either.
    let victim = w.dir.path().join("outside/victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let mut l = LayerBuilder::new();
    l.symlink("esc", "../../../../../outside")
        .file("esc/.wh.victim", b"", 0o644, 0, 0);
    unsafe_entry(
        w.build(vec![l.finish()], Limits::default()),
        "outside the root",
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
}

#[test]
fn absurd_sizes_and_counts_are_bounded() {
    let w = World::new();
    // Too many entries.
    let mut l = LayerBuilder::new();
    for i in 0..200 {
        l.file(&format!("pwned{i}"), b"", 0o644, 0, 0);
    }
    let limits = Limits {
        max_entries: 100,
        ..Default::default()
    };
    let err = w.build(vec![l.finish()], limits).unwrap_err();
    assert!(matches!(err, RootfsError::LimitExceeded { .. }), "{err:?}");
    w.assert_untouched();

    // A header claiming a terabyte is refused before anything is read.
    let mut l = LayerBuilder::new();
    l.file_claiming("pwned-huge", 1 << 40);
    let err = w.build(vec![l.finish()], Limits::default()).unwrap_err();
    assert!(matches!(err, RootfsError::LimitExceeded { .. }), "{err:?}");
    w.assert_untouched();

    // A compression bomb: 64 MiB of zeros in a tiny gzip layer.
    let mut l = LayerBuilder::new();
    l.file("pwned-bomb", &vec![0u8; 64 << 20], 0o644, 0, 0);
    let limits = Limits {
        max_total_bytes: 16 << 20,
        ..Default::default()
    };
    let err = w.build(vec![l.finish()], limits).unwrap_err();
    assert!(matches!(err, RootfsError::LimitExceeded { .. }), "{err:?}");
    w.assert_untouched();

    // Too many layers.
    let layers: Vec<Vec<u8>> = (0..5).map(|_| LayerBuilder::new().finish()).collect();
    let err = w
        .build(
            layers,
            Limits {
                max_layers: 4,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, RootfsError::LimitExceeded { .. }), "{err:?}");

    // Overlong names.
    let mut l = LayerBuilder::new();
    l.file(&"d/".repeat(40), b"", 0o644, 0, 0);
    let err = w
        .build(
            vec![l.finish()],
            Limits {
                max_path_bytes: 50,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, RootfsError::UnsafeEntry { .. }), "{err:?}");
}

#[test]
fn tampered_layout_blobs_and_garbage_are_refused() {
    let w = World::new();
    let layout = w.dir.path().join("layout");
    let mut l = LayerBuilder::new();
    l.file("pwned", &vec![1u8; 10000], 0o644, 0, 0);
    let spec = ImageSpec::new(vec![(l.finish(), Compression::Gzip)], serde_json::json!({}));
    let md = images::write_oci_layout(&layout, "x", &spec);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&md[7..])).unwrap())
            .unwrap();
    let ld = m["layers"][0]["digest"].as_str().unwrap();
    let blob = layout.join("blobs/sha256").join(&ld[7..]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 9] ^= 1; // inside the gzip trailer's CRC: data decodes, digest differs
    std::fs::write(&blob, &bytes).unwrap();
    let err = w.build_layout(&layout, Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            RootfsError::DigestMismatch { .. }
                | RootfsError::Io { .. }
                | RootfsError::Malformed { .. }
        ),
        "{err:?}"
    );
    w.assert_untouched();

    // A tampered manifest.
    let mpath = layout.join("blobs/sha256").join(&md[7..]);
    let mut mbytes = std::fs::read(&mpath).unwrap();
    mbytes.push(b' ');
    std::fs::write(&mpath, &mbytes).unwrap();
    let err = w.build_layout(&layout, Limits::default()).unwrap_err();
    assert!(matches!(err, RootfsError::DigestMismatch { .. }), "{err:?}");

    // Garbage instead of a tar.
    let w = World::new();
    let err = w
        .build(
            vec![b"this is not a tar archive at all".repeat(40)],
            Limits::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            RootfsError::Malformed { .. } | RootfsError::UnsafeEntry { .. }
        ),
        "{err:?}"
    );
    w.assert_untouched();
}

#[test]
fn symlinks_through_missing_directories_are_refused() {
    let w = World::new();
    let mut l = LayerBuilder::new();
    l.dir("real", 0o755, 0, 0)
        .symlink("esc", "../../../../../outside")
        .symlink("tricky", "missing/../esc")
        .file("tricky/pwned", b"x", 0o644, 0, 0);
    unsafe_entry(
        w.build(vec![l.finish()], Limits::default()),
        "missing directory",
    );
    w.assert_untouched();
    // A legitimate chain of links inside the image still works.
    let mut l = LayerBuilder::new();
    l.dir("usr/lib", 0o755, 0, 0)
        .symlink("lib", "usr/lib")
        .symlink("usr/lib64", "../lib")
        .file("usr/lib64/libx.so", b"elf", 0o755, 0, 0);
    let built = w.build(vec![l.finish()], Limits::default()).unwrap();
    assert_eq!(cat(&built.path, "/usr/lib/libx.so"), b"elf");
}

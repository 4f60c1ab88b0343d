//! Layer application end to end: images the test builds, through each local
//! transport, into a real ext4 checked with debugfs.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{cat, fsck_clean, ls, readlink, stat, xattr};
use vmkit_rootfs::{BuildOptions, ImageRef, RootfsBuilder};
use vmkit_testkit::images::{self, Compression, ImageSpec, LayerBuilder, FIXTURE_MTIME};

/// Two layers exercising whiteouts, opaque dirs, hard links, devices,
/// FIFOs, ownership, special mode bits, mtimes and xattrs.
fn rich_image() -> ImageSpec {
    let mut base = images::busybox_layer();
    base.dir("data", 0o755, 0, 0)
        .file("data/keep.txt", b"kept\n", 0o644, 0, 0)
        .file("data/gone.txt", b"to be whited out\n", 0o644, 0, 0)
        .dir("data/gonedir", 0o755, 0, 0)
        .file("data/gonedir/inner", b"x", 0o644, 0, 0)
        .dir("opaque", 0o755, 0, 0)
        .file("opaque/old1", b"old", 0o644, 0, 0)
        .file("opaque/old2", b"old", 0o644, 0, 0)
        .file("data/owned", b"owned by 1234:5678\n", 0o640, 1234, 5678)
        .file("data/suid", b"#!/bin/sh\n", 0o4755, 0, 0)
        .dir("data/sticky", 0o1777, 0, 0)
        .file("data/replaced", b"first\n", 0o644, 0, 0)
        .file_mtime("data/old-mtime", b"t\n", 0o644, 1_000_000_000)
        .file("data/hl-a", b"hard linked\n", 0o644, 42, 43)
        .hardlink("data/hl-b", "data/hl-a")
        .hardlink("data/hl-c", "data/hl-a")
        .char_device("dev/null", 1, 3, 0o666)
        .fifo("data/fifo", 0o600)
        .symlink("data/rel-link", "keep.txt")
        .file_with_xattrs(
            "data/xattr",
            b"x\n",
            0o644,
            &[("user.microagent", b"hello")],
        )
        .file_with_pax(
            "data/bsdtar",
            b"b\n",
            0o644,
            &[
                ("LIBARCHIVE.xattr.user.b64", b"d29ybGQ"),
                ("uid", b"3000000"),
                ("gid", b"3000001"),
            ],
        );
    let mut top = LayerBuilder::new();
    top.whiteout("data/gone.txt")
        .whiteout("data/gonedir")
        .opaque("opaque")
        .file("opaque/new", b"new", 0o644, 0, 0)
        .file("data/replaced", b"second\n", 0o600, 7, 7)
        .file("data/new-in-top", b"top\n", 0o644, 0, 0);
    ImageSpec::new(
        vec![
            (base.finish(), Compression::Gzip),
            (top.finish(), Compression::Zstd),
        ],
        serde_json::json!({
            "Env": ["PATH=/bin:/usr/bin", "A=1"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "WorkingDir": "/data",
            "User": "1234:5678",
            "StopSignal": "SIGINT",
        }),
    )
}

fn check_rich(img: &Path) {
    fsck_clean(img);
    // Busybox and its applets.
    let bb = stat(img, "/bin/busybox").expect("busybox");
    assert_eq!((bb.mode, bb.uid, bb.gid), (0o755, 0, 0));
    assert_eq!(
        cat(img, "/bin/busybox"),
        std::fs::read(images::BUSYBOX).unwrap()
    );
    assert_eq!(readlink(img, "/bin/sh"), "/bin/busybox");
    // Whiteouts.
    assert!(stat(img, "/data/gone.txt").is_none());
    assert!(stat(img, "/data/gonedir").is_none());
    assert!(stat(img, "/data/keep.txt").is_some());
    assert_eq!(ls(img, "/opaque"), vec!["new".to_string()]);
    // Replacement across layers, with its own owner and mode.
    assert_eq!(cat(img, "/data/replaced"), b"second\n");
    let r = stat(img, "/data/replaced").unwrap();
    assert_eq!((r.mode, r.uid, r.gid), (0o600, 7, 7));
    assert_eq!(cat(img, "/data/new-in-top"), b"top\n");
    // Ownership and special bits.
    let o = stat(img, "/data/owned").unwrap();
    assert_eq!((o.mode, o.uid, o.gid), (0o640, 1234, 5678));
    assert_eq!(stat(img, "/data/suid").unwrap().mode, 0o4755);
    let s = stat(img, "/data/sticky").unwrap();
    assert_eq!((s.kind.as_str(), s.mode), ("directory", 0o1777));
    // Hard links share one inode with three links.
    let a = stat(img, "/data/hl-a").unwrap();
    assert_eq!((a.links, a.uid, a.gid), (3, 42, 43));
    assert_eq!(stat(img, "/data/hl-c").unwrap(), a);
    assert_eq!(cat(img, "/data/hl-b"), b"hard linked\n");
    // Devices and FIFOs.
    let n = stat(img, "/dev/null").unwrap();
    assert_eq!(
        (n.kind.as_str(), n.device, n.mode),
        ("character", Some((1, 3)), 0o666)
    );
    let f = stat(img, "/data/fifo").unwrap();
    assert_eq!((f.kind.as_str(), f.mode), ("FIFO", 0o600));
    assert_eq!(readlink(img, "/data/rel-link"), "keep.txt");
    // Mtimes and xattrs.
    assert_eq!(stat(img, "/data/old-mtime").unwrap().mtime, 1_000_000_000);
    assert_eq!(
        stat(img, "/data/keep.txt").unwrap().mtime,
        FIXTURE_MTIME as i64
    );
    assert!(
        xattr(img, "/data/xattr", "user.microagent").contains("hello"),
        "{}",
        xattr(img, "/data/xattr", "user.microagent")
    );
    let b = stat(img, "/data/bsdtar").unwrap();
    assert_eq!(
        (b.uid, b.gid),
        (3_000_000, 3_000_001),
        "pax uid/gid win over the header"
    );
    assert!(
        xattr(img, "/data/bsdtar", "user.b64").contains("world"),
        "{}",
        xattr(img, "/data/bsdtar", "user.b64")
    );
    // Mount points and the recorded config.
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        assert_eq!(
            stat(img, d).unwrap_or_else(|| panic!("{d} missing")).kind,
            "directory"
        );
    }
    assert_eq!(stat(img, "/tmp").unwrap().mode, 0o1777);
    let cfg: serde_json::Value =
        serde_json::from_slice(&cat(img, "/etc/microagent/image-config.json")).unwrap();
    assert_eq!(
        cfg,
        serde_json::json!({
            "Env": ["PATH=/bin:/usr/bin", "A=1"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "WorkingDir": "/data",
            "User": "1234:5678",
            "StopSignal": "SIGINT",
        })
    );
}

#[test]
fn oci_layout_multi_layer_image_lands_in_ext4() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    images::write_oci_layout(&layout, "rich", &rich_image());
    let init = tmp.path().join("init");
    std::fs::write(&init, b"\x7fELF fake init").unwrap();
    let builder = RootfsBuilder::new(tmp.path().join("state"));
    let image = ImageRef::parse(&format!("oci-layout:{}:rich", layout.display())).unwrap();
    let opts = BuildOptions {
        init_binary: Some(init.clone()),
        ..Default::default()
    };
    let built = builder.build(&image, &opts).unwrap();
    assert!(!built.cached);
    check_rich(&built.path);
    let i = stat(&built.path, "/sbin/microagent-init").unwrap();
    assert_eq!((i.mode, i.uid, i.gid), (0o755, 0, 0));
    assert_eq!(
        cat(&built.path, "/sbin/microagent-init"),
        b"\x7fELF fake init"
    );
    assert_eq!(built.image_config.user.as_deref(), Some("1234:5678"));

    // The second build is a cache hit, in milliseconds.
    let t = Instant::now();
    let again = builder.build(&image, &opts).unwrap();
    let took = t.elapsed();
    assert!(again.cached);
    assert_eq!(again.path, built.path);
    assert!(took.as_millis() < 200, "cache hit took {took:?}");

    // A different init binary is a different disk.
    std::fs::write(&init, b"\x7fELF other init").unwrap();
    let other = builder.build(&image, &opts).unwrap();
    assert!(!other.cached);
    assert_ne!(other.path, built.path);
    assert_eq!(
        cat(&other.path, "/sbin/microagent-init"),
        b"\x7fELF other init"
    );

    // No staging leftovers.
    let tmpdir = builder.cache_dir().join("tmp");
    assert_eq!(std::fs::read_dir(&tmpdir).unwrap().count(), 0);
}

#[test]
fn docker_archive_and_rootfs_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let builder = RootfsBuilder::new(tmp.path().join("state"));

    let archive = tmp.path().join("saved.tar");
    let id = images::write_docker_archive(&archive, "rich:latest", &rich_image());
    let built = builder
        .build(
            &ImageRef::parse(&format!("docker-archive:{}", archive.display())).unwrap(),
            &BuildOptions::default(),
        )
        .unwrap();
    assert_eq!(built.manifest_digest, id);
    check_rich(&built.path);

    for (name, c) in [
        ("root.tar", Compression::None),
        ("root.tar.gz", Compression::Gzip),
        ("root.tar.zst", Compression::Zstd),
    ] {
        let mut l = images::busybox_layer();
        l.file("hello", name.as_bytes(), 0o600, 5, 6);
        let f = tmp.path().join(name);
        std::fs::write(&f, c.apply(&l.finish())).unwrap();
        let image = ImageRef::parse(&format!("rootfs-tar:{}", f.display())).unwrap();
        let built = builder.build(&image, &BuildOptions::default()).unwrap();
        assert_eq!(cat(&built.path, "/hello"), name.as_bytes());
        let h = stat(&built.path, "/hello").unwrap();
        assert_eq!((h.mode, h.uid, h.gid), (0o600, 5, 6));
        assert_eq!(cat(&built.path, "/etc/microagent/image-config.json"), b"{}");
        assert!(
            builder
                .build(&image, &BuildOptions::default())
                .unwrap()
                .cached
        );
    }
}

#[test]
fn size_option_and_too_small() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    images::busybox_oci_layout(&layout, "latest");
    let image = ImageRef::parse(&format!("oci-layout:{}", layout.display())).unwrap();
    let builder = RootfsBuilder::new(tmp.path().join("state"));
    let built = builder
        .build(
            &image,
            &BuildOptions {
                size_mib: Some(64),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(std::fs::metadata(&built.path).unwrap().len(), 64 << 20);
    assert_eq!(built.size_mib, 64);

    let mut big = LayerBuilder::new();
    let blob = vec![0x5au8; 12 << 20];
    big.file("big1", &blob, 0o644, 0, 0)
        .file("big2", &blob, 0o644, 0, 0);
    let spec = ImageSpec::new(
        vec![(big.finish(), Compression::Gzip)],
        serde_json::json!({}),
    );
    images::write_oci_layout(&layout, "big", &spec);
    let image = ImageRef::parse(&format!("oci-layout:{}:big", layout.display())).unwrap();
    let err = builder
        .build(
            &image,
            &BuildOptions {
                size_mib: Some(20),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    assert!(
        matches!(
            err,
            vmkit_rootfs::RootfsError::TooSmall { requested: 20, .. }
        ),
        "{err:?}"
    );
    // Nothing half-made is left in the cache.
    let entries: Vec<_> = std::fs::read_dir(builder.cache_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "tmp")
        .collect();
    assert_eq!(entries.len(), 1, "only the 64 MiB busybox disk");
    assert_eq!(
        std::fs::read_dir(builder.cache_dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn damaged_cache_entries_are_rebuilt_and_concurrent_builds_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    images::busybox_oci_layout(&layout, "latest");
    let image = ImageRef::parse(&format!("oci-layout:{}", layout.display())).unwrap();
    let state = tmp.path().join("state");

    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (state, image) = (state.clone(), image.clone());
            std::thread::spawn(move || {
                RootfsBuilder::new(state)
                    .build(&image, &BuildOptions::default())
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results[0].path, results[1].path);
    fsck_clean(&results[0].path);

    let builder = RootfsBuilder::new(&state);
    let entry = results[0].path.parent().unwrap().to_path_buf();
    std::fs::write(entry.join("meta.json"), b"{garbage").unwrap();
    let rebuilt = builder.build(&image, &BuildOptions::default()).unwrap();
    assert!(!rebuilt.cached, "a damaged entry is never trusted");
    assert!(
        builder
            .build(&image, &BuildOptions::default())
            .unwrap()
            .cached
    );

    std::fs::remove_file(entry.join("disk.ext4")).unwrap();
    let rebuilt = builder.build(&image, &BuildOptions::default()).unwrap();
    assert!(!rebuilt.cached);
    fsck_clean(&rebuilt.path);
    assert_eq!(
        std::fs::read_dir(builder.cache_dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn content_outgrowing_memory_staging_moves_to_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut l = LayerBuilder::new();
    // 8 MiB that gzip shrinks to almost nothing: the estimate says "fits".
    l.file("zeros", &vec![0u8; 8 << 20], 0o644, 0, 0)
        .file("after", b"still here", 0o644, 0, 0);
    let spec = ImageSpec::new(vec![(l.finish(), Compression::Gzip)], serde_json::json!({}));
    images::write_oci_layout(&layout, "z", &spec);
    let builder = RootfsBuilder::new(tmp.path().join("state"));
    let built = builder
        .build(
            &ImageRef::parse(&format!("oci-layout:{}:z", layout.display())).unwrap(),
            &BuildOptions {
                memory_staging_limit: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(stat(&built.path, "/zeros").unwrap().size, 8 << 20);
    assert_eq!(cat(&built.path, "/after"), b"still here");
    // Without the fallback the build would have failed with "staging in
    // memory: No space left on device".
}

#[test]
fn zero_runs_stay_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut content = vec![0u8; 64 << 20];
    content[..5].copy_from_slice(b"start");
    let n = content.len();
    content[n - 3..].copy_from_slice(b"end");
    let mut l = LayerBuilder::new();
    l.file("var/log/lastlog", &content, 0o644, 0, 0);
    let spec = ImageSpec::new(vec![(l.finish(), Compression::Zstd)], serde_json::json!({}));
    images::write_oci_layout(&layout, "s", &spec);
    let built = RootfsBuilder::new(tmp.path().join("state"))
        .build(
            &ImageRef::parse(&format!("oci-layout:{}:s", layout.display())).unwrap(),
            &BuildOptions::default(),
        )
        .unwrap();
    let f = stat(&built.path, "/var/log/lastlog").unwrap();
    assert_eq!(f.size, 64 << 20);
    assert_eq!(cat(&built.path, "/var/log/lastlog"), content);
    // The disk holds a few blocks for it, not 64 MiB.
    use std::os::unix::fs::MetadataExt;
    let used = std::fs::metadata(&built.path).unwrap().blocks() * 512;
    assert!(used < 32 << 20, "disk uses {used} bytes");
}

//! pack then extract keeps the tree; hostile archives write nothing
//! outside the destination.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use vmkit_archive::{extract, pack, ArchiveError, ExtractOptions, Owner};
use vmkit_testkit::images::raw_entry;

fn hostile_archive() -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, T::Regular, b"../x", b"", b"escaped");
    raw_entry(&mut b, T::Regular, b"/abs", b"", b"escaped");
    raw_entry(&mut b, T::Symlink, b"evil/link", b"/tmp", b"");
    raw_entry(&mut b, T::Regular, b"evil/link/file", b"", b"escaped");
    b.into_inner().unwrap()
}

/// Each hostile entry on its own: refused, and nothing lands outside.
#[test]
fn hostile_entries_write_nothing_outside_the_destination() {
    use tar::EntryType as T;
    let outside = tempfile::tempdir().unwrap();
    let dst = outside.path().join("dst");
    type Entry<'a> = (T, &'a [u8], &'a [u8]);
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("dotdot", vec![(T::Regular, b"../x", b"")]),
        ("absolute", vec![(T::Regular, b"/abs", b"")]),
        (
            "symlink then file",
            vec![(T::Symlink, b"l", b"../"), (T::Regular, b"l/x", b"")],
        ),
        ("hard link out", vec![(T::Link, b"h", b"../x")]),
        (
            "symlink to a host folder",
            vec![(T::Symlink, b"t", b"/tmp"), (T::Regular, b"t/planted", b"")],
        ),
    ];
    for (what, entries) in cases {
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir(&dst).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (kind, name, link) in entries {
            raw_entry(&mut b, kind, name, link, b"escaped");
        }
        let tar = b.into_inner().unwrap();
        let r = extract(&tar[..], &dst, &ExtractOptions::default());
        // An absolute-target symlink resolves to dst itself: that one is
        // allowed and lands inside.
        if what == "symlink to a host folder" {
            r.unwrap();
            assert!(dst.join("tmp/planted").exists(), "{what}");
            assert!(!Path::new("/tmp/planted").exists(), "{what}");
        } else {
            assert!(
                matches!(r, Err(ArchiveError::Refused { .. })),
                "{what}: {r:?}"
            );
        }
        assert!(!outside.path().join("x").exists(), "{what}");
        assert!(!Path::new("/abs").exists(), "{what}");
    }
    // The archive as a whole.
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir(&dst).unwrap();
    assert!(extract(&hostile_archive()[..], &dst, &ExtractOptions::default()).is_err());
    assert!(!outside.path().join("x").exists());
    assert!(!Path::new("/tmp/file").exists() || std::fs::read("/tmp/file").unwrap() != b"escaped");
}

#[test]
fn pack_and_extract_keep_files_modes_times_and_links() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("proj");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/data"), vec![7u8; 300_000]).unwrap();
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(tree.join("run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a/b/data", tree.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tree.join("abs-link")).unwrap();
    let mut tar = Vec::new();
    let stats = pack(&tree, "proj".as_ref(), &mut tar).unwrap();
    assert_eq!(stats.entries, 7);
    let dst = tempfile::tempdir().unwrap();
    let owner = if nix::unistd::geteuid().is_root() {
        Owner::Archive
    } else {
        Owner::Extractor
    };
    let x = extract(
        &tar[..],
        dst.path(),
        &ExtractOptions {
            owner,
            ..ExtractOptions::default()
        },
    )
    .unwrap();
    assert_eq!(x.entries, 7);
    let out = dst.path().join("proj");
    assert_eq!(
        std::fs::read(out.join("a/b/data")).unwrap(),
        vec![7u8; 300_000]
    );
    let m = std::fs::metadata(out.join("run.sh")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(
        m.mtime(),
        std::fs::metadata(tree.join("run.sh")).unwrap().mtime()
    );
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("a/b/data")
    );
    assert_eq!(
        std::fs::read_link(out.join("abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::metadata(out.join("a")).unwrap().mtime(),
        std::fs::metadata(tree.join("a")).unwrap().mtime()
    );
}

#[test]
fn an_existing_symlink_in_the_destination_is_replaced_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let dst = outside.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::symlink(&victim, dst.join("f")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, tar::EntryType::Regular, b"f", b"", b"new");
    extract(
        &b.into_inner().unwrap()[..],
        &dst,
        &ExtractOptions::default(),
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert_eq!(std::fs::read_to_string(dst.join("f")).unwrap(), "new");
}

#[test]
fn random_and_mutated_archives_never_panic() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("d")).unwrap();
    std::fs::write(src.path().join("d/f"), b"content").unwrap();
    std::os::unix::fs::symlink("f", src.path().join("d/l")).unwrap();
    let mut valid = Vec::new();
    pack(&src.path().join("d"), "d".as_ref(), &mut valid).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let outside = tempfile::tempdir().unwrap();
    for i in 0..400 {
        let mut t = valid.clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() as usize) % t.len().min(1536);
            t[at] = next() as u8;
        }
        let dst = outside.path().join(format!("d{i}"));
        std::fs::create_dir(&dst).unwrap();
        let _ = extract(&t[..], &dst, &ExtractOptions::default());
    }
    // Nothing appeared next to the destinations.
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with('d')), "{names:?}");
}

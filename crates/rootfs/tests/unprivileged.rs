//! The builder run as an unprivileged user (`nobody`, via `setpriv`):
//! ownership, special modes, device nodes and privileged xattrs from the
//! layers must still land in the ext4 (written with debugfs).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{cat, fsck_clean, stat, xattr};
use vmkit_rootfs::{BuildOptions, ImageRef, RootfsBuilder};
use vmkit_testkit::images::{self, Compression, ImageSpec};

const CHILD_ENV: &str = "VMKIT_ROOTFS_UNPRIVILEGED_CHILD";
const NOBODY: u32 = 65534;

fn spec() -> ImageSpec {
    let mut l = images::busybox_layer();
    l.dir("srv", 0o500, 1000, 1000)
        .file("srv/locked", b"no perms", 0o000, 1000, 1000)
        .file("usr/bin/su-ish", b"#!/bin/sh\n", 0o4755, 0, 0)
        .dir("shared", 0o1777, 0, 0)
        .file("etc/shadow", b"root:*:1::::::\n", 0o640, 0, 42)
        .hardlink("etc/shadow-link", "etc/shadow")
        .char_device("dev/null", 1, 3, 0o666)
        .char_device("dev/console", 5, 1, 0o600)
        .fifo("run-fifo", 0o644)
        .file_with_xattrs(
            "caps",
            b"c",
            0o755,
            &[("trusted.microagent", b"t1"), ("user.note", b"u1")],
        );
    ImageSpec::new(
        vec![(l.finish(), Compression::Zstd)],
        serde_json::json!({"Cmd": ["/bin/sh"]}),
    )
}

fn build(layout: &Path, state: &Path, init: &Path) -> vmkit_rootfs::BuiltRootfs {
    RootfsBuilder::new(state)
        .build(
            &ImageRef::parse(&format!("oci-layout:{}:u", layout.display())).unwrap(),
            &BuildOptions {
                init_binary: Some(init.to_path_buf()),
                ..Default::default()
            },
        )
        .unwrap()
}

#[test]
fn ownership_lands_when_not_root() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // The child half, running as nobody.
        assert!(!nix::unistd::geteuid().is_root());
        let dir = Path::new(&dir);
        let built = build(&dir.join("layout"), &dir.join("state"), &dir.join("init"));
        println!("BUILT {}", built.path.display());
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "CI runs as root so that this test can drop to nobody"
    );
    let world = tempfile::tempdir().unwrap();
    std::fs::set_permissions(world.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    images::write_oci_layout(&world.path().join("layout"), "u", &spec());
    std::fs::write(world.path().join("init"), b"\x7fELF init").unwrap();
    let state = world.path().join("state");
    std::fs::create_dir(&state).unwrap();
    nix::unistd::chown(
        &state,
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    for e in common::tree(world.path()) {
        let p = world.path().join(e);
        let m = if p.is_dir() { 0o755 } else { 0o644 };
        if !p.starts_with(&state) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
    }

    let out = Command::new("setpriv")
        .args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ownership_lands_when_not_root",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, world.path())
        .env("HOME", world.path())
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = stdout
        .lines()
        .find_map(|l| l.split_once("BUILT ").map(|(_, p)| p.trim()))
        .expect("child printed the disk path");
    let img = Path::new(path);
    assert_eq!(
        std::fs::metadata(img)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap(),
        NOBODY,
        "built by nobody"
    );

    fsck_clean(img);
    let srv = stat(img, "/srv").unwrap();
    assert_eq!((srv.mode, srv.uid, srv.gid), (0o500, 1000, 1000));
    let locked = stat(img, "/srv/locked").unwrap();
    assert_eq!((locked.mode, locked.uid, locked.gid), (0o000, 1000, 1000));
    assert_eq!(cat(img, "/srv/locked"), b"no perms");
    assert_eq!(stat(img, "/usr/bin/su-ish").unwrap().mode, 0o4755);
    assert_eq!(stat(img, "/shared").unwrap().mode, 0o1777);
    let shadow = stat(img, "/etc/shadow").unwrap();
    assert_eq!(
        (shadow.mode, shadow.uid, shadow.gid, shadow.links),
        (0o640, 0, 42, 2)
    );
    let null = stat(img, "/dev/null").unwrap();
    assert_eq!(
        (null.kind.as_str(), null.device, null.mode, null.uid),
        ("character", Some((1, 3)), 0o666, 0)
    );
    assert_eq!(stat(img, "/dev/console").unwrap().device, Some((5, 1)));
    assert_eq!(
        null.mtime,
        images::FIXTURE_MTIME as i64,
        "device mtime from the layer"
    );
    assert_eq!(stat(img, "/run-fifo").unwrap().kind, "FIFO");
    assert!(
        xattr(img, "/caps", "trusted.microagent").contains("t1"),
        "{}",
        xattr(img, "/caps", "trusted.microagent")
    );
    assert!(xattr(img, "/caps", "user.note").contains("u1"));
    // Everything else is root's, not nobody's.
    for p in [
        "/",
        "/bin/busybox",
        "/bin",
        "/etc/passwd",
        "/sbin/microagent-init",
        "/etc/microagent/image-config.json",
        "/proc",
        "/tmp",
    ] {
        let i = stat(img, p).unwrap_or_else(|| panic!("{p} missing"));
        assert_eq!((i.uid, i.gid), (0, 0), "{p} owned by {}:{}", i.uid, i.gid);
    }
    assert_eq!(stat(img, "/sbin/microagent-init").unwrap().mode, 0o755);
    // Fix-ups on symlinks change the link, not what it points to.
    let bb = stat(img, "/bin/busybox").unwrap();
    assert_eq!((bb.kind.as_str(), bb.mode), ("regular", 0o755));
    assert_eq!(stat(img, "/bin/sh").unwrap().kind, "symlink");
    assert_eq!(common::readlink(img, "/bin/sh"), "/bin/busybox");
    assert_eq!(stat(img, "/tmp").unwrap().mode, 0o1777);
}

//! Disk-only snapshots of a live workspace, on a real VM: the guest's
//! filesystems are frozen while its disk is copied, so the copy is a clean
//! ext4 with everything the guest wrote, and the guest thaws on every way
//! out, a full disk included.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{describe, json_lines, processes_mentioning, Env};

/// `dumpe2fs -h` of an ext4 image: its superblock, as text.
fn superblock(image: &Path) -> String {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the image's journal needs replaying: set while an ext4 is
/// mounted read-write, cleared by a clean unmount or while frozen.
fn needs_recovery(image: &Path) -> bool {
    let sb = superblock(image);
    let features = sb
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_else(|| panic!("no features in {sb}"));
    features.split_whitespace().any(|f| f == "needs_recovery")
}

/// A file of an ext4 image, read by debugfs (which replays no journal:
/// what it sees is in the filesystem proper).
fn debugfs_cat(image: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `snapshot create fz --disk-only --tag TAG`: its `--json` line.
fn disk_snapshot(env: &Env, tag: &str) -> serde_json::Value {
    let args = [
        "--json",
        "snapshot",
        "create",
        "fz",
        "--tag",
        tag,
        "--disk-only",
    ];
    common::json_line(&env.ok(&args))
}

/// Runs a shell script in `fz` that must succeed; its stdout.
fn guest_sh(env: &Env, script: &str) -> String {
    let out = env.sh("fz", script);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small tmpfs mounted over a folder for as long as it lives: a full
/// disk, for real.
struct FullDisk(PathBuf);

impl FullDisk {
    fn mount(at: &Path) -> FullDisk {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        FullDisk(at.to_owned())
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_only_snapshot_freezes_the_guest_and_thaws_it_on_every_way_out() {
    let env = Env::new();
    env.create("fz", &[]);
    env.ok(&["start", "fz"]);
    let ws = env.state_path().join("workspaces/fz");
    let live = ws.join("rootfs.ext4");

    // A full disk where snapshots go: the copy fails while the guest is
    // frozen. The guest must be thawed all the same, nothing listed.
    let full = FullDisk::mount(&ws.join("snapshots"));
    let out = env
        .cmd()
        .args(["snapshot", "create", "fz", "--tag", "full", "--disk-only"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
        "{}",
        describe(&out)
    );
    // Thawed: ext4 sets needs_recovery again when it thaws (a frozen one
    // has it cleared on disk), and the guest's writes go through.
    assert!(needs_recovery(&live), "{}", superblock(&live));
    assert_eq!(guest_sh(&env, "echo y > /h && cat /h"), "y\n");
    assert!(json_lines(&env.ok(&["--json", "snapshot", "list", "fz"])).is_empty());
    let left: Vec<_> = std::fs::read_dir(ws.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(full);

    // Written but not synced: the data is only in the guest's page cache.
    guest_sh(&env, "echo data > /f");
    let made = disk_snapshot(&env, "d1");
    assert_eq!(made["snapshot"]["diskOnly"], true);
    assert_eq!(made["snapshot"]["frozen"], true);
    let copy = ws.join("snapshots/d1/rootfs.ext4");
    // The copy is a clean filesystem (no journal to replay) that holds the
    // file in the filesystem proper.
    assert!(!needs_recovery(&copy), "{}", superblock(&copy));
    assert_eq!(debugfs_cat(&copy, "/f"), "data\n");
    // The guest is thawed and writes again.
    assert_eq!(guest_sh(&env, "echo x > /g && cat /g"), "x\n");
    assert!(needs_recovery(&live));
    let listed = json_lines(&env.ok(&["--json", "snapshot", "list", "fz"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["snapshot"]["frozen"], true);

    // A paused workspace runs for the freeze and is paused again.
    env.ok(&["pause", "fz"]);
    let made = disk_snapshot(&env, "p1");
    assert_eq!(made["snapshot"]["frozen"], true);
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["--json", "status", "fz"]).stdout).unwrap();
    assert_eq!(status["state"], "paused");
    let copy = ws.join("snapshots/p1/rootfs.ext4");
    assert!(!needs_recovery(&copy), "{}", superblock(&copy));
    assert_eq!(debugfs_cat(&copy, "/g"), "x\n");
    env.ok(&["resume", "fz"]);
    assert_eq!(guest_sh(&env, "echo z > /i && cat /i"), "z\n");

    // A stopped workspace's disk needs no freeze, and says so.
    env.ok(&["halt", "fz"]);
    let made = disk_snapshot(&env, "s1");
    assert_eq!(made["snapshot"]["frozen"], false);
    env.ok(&["delete", "fz"]);
    assert!(processes_mentioning(&env.state_path().to_string_lossy()).is_empty());
}

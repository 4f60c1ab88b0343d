//! `microagent cp` end to end: a tree with nested folders, an executable,
//! a symlink and a 50 MiB file into a running workspace and back out, the
//! same into a halted one (a maintenance boot), and the bad cases.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{describe, Env};

/// nested/deeper/notes.txt, bin/run.sh (0755), link -> nested/deeper/notes.txt,
/// big (50 MiB of a pattern that does not compress to nothing).
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("nested/deeper")).unwrap();
    std::fs::write(root.join("nested/deeper/notes.txt"), "notes\n").unwrap();
    std::fs::create_dir(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(root.join("bin/run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("nested/deeper/notes.txt", root.join("link")).unwrap();
    let big: Vec<u8> = (0..50u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("big"), big).unwrap();
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// `path mode type` for every entry, sorted: modes and kinds must match.
fn listing(root: &Path) -> String {
    let out = Command::new("find")
        .arg(root)
        .args(["-printf", "%P %m %y\n"])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines.join("\n")
}

fn assert_identical(a: &Path, b: &Path) {
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", describe(&diff));
    assert_eq!(listing(a), listing(b));
}

fn guest_sha(env: &Env, name: &str, path: &str) -> String {
    let out = env.ok(&["exec", name, "--", "sha256sum", path]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_tree_round_trips_through_a_running_workspace() {
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let tree = host.path().join("tree");
    make_tree(&tree);
    // A small disk, to see a full guest disk fail cleanly.
    let small = host.path().join("small.ext4");
    let mk = Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-F"])
        .arg(&small)
        .arg("8M")
        .output()
        .unwrap();
    assert!(mk.status.success(), "{}", describe(&mk));
    let disk = format!("small={}:/small:rw", small.display());
    env.create("ws", &["--disk", &disk]);
    env.ok(&["start", "ws"]);

    env.ok(&["cp", tree.to_str().unwrap(), "ws:/root"]);
    assert_eq!(
        guest_sha(&env, "ws", "/root/tree/big"),
        sha256(&tree.join("big"))
    );
    let out = env.ok(&["exec", "ws", "--", "/root/tree/bin/run.sh"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");

    let back = host.path().join("back");
    std::fs::create_dir(&back).unwrap();
    env.ok(&["cp", "ws:/root/tree", back.to_str().unwrap()]);
    assert_identical(&tree, &back.join("tree"));

    // Bad input: clear errors, exit 125, nothing half-written.
    let fail = |args: &[&str], needle: &str| {
        let out = env.cmd().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {}", describe(&out));
    };
    fail(
        &["cp", tree.to_str().unwrap(), "nosuch:/root"],
        "does not exist",
    );
    fail(
        &["cp", "/no/such/host/path", "ws:/root"],
        "/no/such/host/path",
    );
    let missing_out = host.path().join("missing-out");
    fail(
        &["cp", "ws:/no/such", missing_out.to_str().unwrap()],
        "/no/such",
    );
    assert!(!missing_out.exists());
    fail(&["cp", tree.to_str().unwrap(), "ws:/small"], "full");
    let out = env.ok(&["exec", "ws", "--", "ls", "-A", "/small"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "lost+found\n",
        "a failed copy left something behind"
    );
    let left: Vec<_> = std::fs::read_dir(host.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".microagent-cp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Streams: tar out on stdout, tar in from stdin.
    let tar_out = env.ok(&["cp", "ws:/root/tree/nested", "-"]);
    let listed = Command::new("tar")
        .args(["-t"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&tar_out.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("nested/deeper/notes.txt"));
    env.ok(&["delete", "--force", "ws"]);
}

#[test]
fn a_copy_into_a_halted_workspace_boots_it_for_the_copy() {
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let tree = host.path().join("tree");
    make_tree(&tree);
    env.create("off", &[]);
    env.ok(&["start", "off"]);
    env.ok(&["halt", "off"]);

    // /copied does not exist: the copy becomes /copied itself.
    env.ok(&["cp", tree.to_str().unwrap(), "off:/copied"]);
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["--json", "status", "off"]).stdout).unwrap();
    assert_eq!(
        status["state"], "halted",
        "the maintenance boot must end halted"
    );

    env.ok(&["start", "off"]);
    assert_eq!(
        guest_sha(&env, "off", "/copied/big"),
        sha256(&tree.join("big"))
    );
    let out = env.ok(&["exec", "off", "--", "readlink", "/copied/link"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "nested/deeper/notes.txt\n"
    );
    env.ok(&["halt", "off"]);

    // And out of the halted one.
    let back = host.path().join("back");
    std::fs::create_dir(&back).unwrap();
    env.ok(&["cp", "off:/copied", back.join("tree").to_str().unwrap()]);
    assert_identical(&tree, &back.join("tree"));
    env.ok(&["delete", "off"]);
}

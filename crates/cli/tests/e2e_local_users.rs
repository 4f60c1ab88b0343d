//! Other local users: what microagent keeps in its state folder is private,
//! and a state folder someone else could have written to is refused.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{describe, Env};

/// Every folder and file under `root` whose mode is wider than 0700/0600.
fn too_open(root: &Path) -> Vec<String> {
    let mut wide = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let ft = m.file_type();
            if ft.is_dir() {
                stack.push(e.path());
                if mode != 0o700 {
                    wide.push(format!("{:o} {}", mode, e.path().display()));
                }
            } else if ft.is_file() && mode & 0o077 != 0 {
                wide.push(format!("{:o} {}", mode, e.path().display()));
            }
        }
    }
    wide
}

#[test]
fn pulled_images_built_disks_and_kernels_are_private() {
    let env = Env::new();
    let registry = vmkit_testkit::registry::Registry::start();
    let layout = tempfile::tempdir().unwrap();
    vmkit_testkit::images::busybox_oci_layout(layout.path(), "latest");
    registry.push_oci_layout(layout.path(), "latest", "tools/busybox:1");
    let image = format!("{}/tools/busybox:1", registry.addr());
    env.ok(&["image", "pull", &image]);
    let out_dir = tempfile::tempdir().unwrap();
    let disk = out_dir.path().join("disk.ext4");
    env.ok(&[
        "rootfs",
        "build",
        "--image",
        &image,
        "--output",
        disk.to_str().unwrap(),
    ]);
    env.ok(&["kernel", "install", "--from", env.kernel.to_str().unwrap()]);
    let wide = too_open(env.state_path());
    assert!(wide.is_empty(), "readable by others: {wide:#?}");
    let root = std::fs::metadata(env.state_path()).unwrap();
    assert_eq!(root.permissions().mode() & 0o777, 0o700);

    // A state folder an older version left wide open is tightened on use.
    let images = env.state_path().join("images");
    std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.ok(&["image", "pull", &image]);
    let wide = too_open(env.state_path());
    assert!(wide.is_empty(), "not tightened: {wide:#?}");
}

#[test]
fn a_state_folder_others_can_write_is_refused_and_the_victim_untouched() {
    let env = Env::new();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // Another user planted a workspace folder with a config disk that
    // points at the victim, in a shared state folder.
    let shared = env.state_path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ws = shared.join("workspaces/fd");
    std::fs::create_dir_all(&ws).unwrap();
    std::os::unix::fs::symlink(&victim, ws.join("config.img")).unwrap();
    let run = |state: &Path| {
        env.run_command(&["--name", "fd", "--exec", "true"])
            .env("MICROAGENT_STATE_DIR", state)
            .output()
            .unwrap()
    };
    let out = run(&shared);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writable by others"), "{}", describe(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    // Our own private root, but the workspace folder belongs to someone else.
    let mine = env.state_path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    let theirs = mine.join("workspaces/fd");
    std::fs::create_dir_all(&theirs).unwrap();
    std::os::unix::fs::symlink(&victim, theirs.join("config.img")).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = run(&mine);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("owned by uid 65534"), "{}", describe(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
}

//! The guest kernel every end-to-end test boots.
//!
//! `scripts/setup` (which CI runs) builds it into the default state folder;
//! tests find it here and fail loudly when it is missing.

use std::path::PathBuf;

/// The guest kernel image for e2e tests: `$MICROAGENT_TEST_KERNEL` if set,
/// else `<state>/kernels/x86_64/vmlinux` where `<state>` is
/// `$MICROAGENT_STATE_DIR` or `~/.microagent`.
///
/// # Panics
///
/// When the file is not there, with a message naming `scripts/setup`.
pub fn kernel_path() -> PathBuf {
    let (path, origin) = match std::env::var_os("MICROAGENT_TEST_KERNEL") {
        Some(p) => (PathBuf::from(p), "MICROAGENT_TEST_KERNEL"),
        None => (
            state_dir().join("kernels").join("x86_64").join("vmlinux"),
            "the default state folder",
        ),
    };
    if !path.is_file() {
        panic!(
            "no guest kernel at {} (from {origin}); run scripts/setup, which builds it with \
             `microagent kernel build`, or point MICROAGENT_TEST_KERNEL at a vmlinux",
            path.display()
        );
    }
    path
}

/// `$MICROAGENT_STATE_DIR`, else `~/.microagent` (the CLI's default).
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MICROAGENT_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".microagent")
}

/// Debian's statically linked busybox (package `busybox-static`).
///
/// # Panics
///
/// When it is not installed, with a message naming `scripts/setup`.
pub fn busybox_static() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let path = PathBuf::from(p);
        if path.is_file() {
            return path;
        }
    }
    panic!("busybox is not installed; run scripts/setup (it installs busybox-static)");
}

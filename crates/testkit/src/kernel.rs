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
    kernel_path_for("x86_64")
}

/// The guest kernel for `arch` (`x86_64`, `aarch64`):
/// `$MICROAGENT_TEST_KERNEL` (x86_64) or `$MICROAGENT_TEST_KERNEL_AARCH64`,
/// else `<state>/kernels/<arch>/vmlinux` (for aarch64 an arm64 `Image`).
///
/// # Panics
///
/// When the file is not there, with a message naming `scripts/setup`.
pub fn kernel_path_for(arch: &str) -> PathBuf {
    let var = if arch == "x86_64" {
        "MICROAGENT_TEST_KERNEL".to_string()
    } else {
        format!("MICROAGENT_TEST_KERNEL_{}", arch.to_uppercase())
    };
    let (path, origin) = match std::env::var_os(&var) {
        Some(p) => (PathBuf::from(p), var.clone()),
        None => (
            state_dir().join("kernels").join(arch).join("vmlinux"),
            "the default state folder".to_string(),
        ),
    };
    if !path.is_file() {
        panic!(
            "no {arch} guest kernel at {} (from {origin}); run scripts/setup, which builds it with \
             `microagent kernel build --arch {arch}`, or point {var} at one",
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

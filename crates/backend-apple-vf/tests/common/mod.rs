//! What the tests that talk to the real Swift supervisor share.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The Swift supervisor: `$MICROAGENT_APPLEVF_SUPERVISOR_TEST_BIN` (CI on
/// macOS passes the signed binary), else what scripts/build-applevf-supervisor
/// builds (on Linux in the toolchain chroot, run through a launcher).
pub fn swift_supervisor() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MICROAGENT_APPLEVF_SUPERVISOR_TEST_BIN") {
            return PathBuf::from(bin);
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/build-applevf-supervisor"
        );
        let out = Command::new(script)
            .output()
            .expect("running build-applevf-supervisor");
        assert!(
            out.status.success(),
            "scripts/build-applevf-supervisor failed (it needs the toolchain chroot: scripts/setup): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

//! An arm64 guest end to end: `microagent run --arch aarch64` boots the
//! aarch64 kernel under `qemu-system-aarch64 -M virt` (TCG here), from an
//! image of Debian's busybox-static:arm64 (scripts/busybox-image) with the
//! static aarch64 guest init (scripts/build-guest-init aarch64), and runs
//! setup then exec with streamed output and the guest's exit code.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{describe, event_states, json_lines, processes_mentioning, stream, Env};

/// The arm64 busybox OCI layout, written once per test binary.
fn arm64_busybox_layout() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "microagent-e2e-busybox-arm64-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/busybox-image");
        let out = Command::new(script)
            .arg(&dir)
            .args(["latest", "arm64"])
            .output()
            .unwrap();
        assert!(out.status.success(), "busybox-image: {}", describe(&out));
        dir
    })
}

#[test]
fn an_arm64_guest_runs_setup_and_exec_with_streams_and_exit_code() {
    let env = Env::new();
    let kernel = vmkit_testkit::kernel::kernel_path_for("aarch64");
    let image = format!("oci-layout:{}:latest", arm64_busybox_layout().display());
    let out = env
        .cmd()
        .arg("--json")
        .arg("run")
        .args(["--arch", "aarch64", "--image", &image])
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--setup",
            "echo hi > /tmp/x",
            "--exec",
            "cat /tmp/x; uname -m; echo err >&2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let lines = json_lines(&out);
    assert_eq!(stream(&lines, "stdout"), "hi\naarch64\n", "{lines:?}");
    assert_eq!(stream(&lines, "stderr"), "err\n", "{lines:?}");
    assert_eq!(
        event_states(&lines),
        ["prepared", "starting", "running", "stopped"],
        "{lines:?}"
    );
    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result", "{lines:?}");
    assert_eq!(result["exitCode"], 7);
    // One-shot: nothing left behind.
    let ws = env.state_path().join("workspaces");
    assert_eq!(std::fs::read_dir(&ws).unwrap().count(), 0);
    assert!(processes_mentioning(&env.state_path().to_string_lossy()).is_empty());
}

#[test]
fn an_arm64_run_without_its_kernel_fails_clearly_before_booting() {
    let env = Env::new();
    let image = format!("oci-layout:{}:latest", arm64_busybox_layout().display());
    let missing = env.state_path().join("no-such-Image");
    let out = env
        .cmd()
        .arg("run")
        .args(["--arch", "aarch64", "--image", &image])
        .arg("--kernel")
        .arg(&missing)
        .args(["--exec", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        describe(&out)
    );
}

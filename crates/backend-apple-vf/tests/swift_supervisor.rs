//! The client against the real Swift supervisor (supervisors/applevf),
//! built by scripts/build-applevf-supervisor: on Linux in the toolchain
//! chroot and run through a launcher, where Virtualization.framework is
//! absent, so the supervisor answers `host` truthfully and refuses to boot.
//! `$MICROAGENT_APPLEVF_SUPERVISOR_TEST_BIN` names a prebuilt one (CI on
//! macOS passes the signed binary).

use std::time::Duration;

mod common;

use common::swift_supervisor;
use vmkit_apple_vf::AppleVfBackend;
use vmkit_protocol::{
    Backend, BackendKind, Command as Verb, ErrorCode, Identity, MachineConfig, Request,
};

fn client() -> AppleVfBackend {
    AppleVfBackend::with_supervisor(swift_supervisor(), Duration::from_secs(60))
}

fn identity() -> Identity {
    Identity {
        request_id: "r1".into(),
        runtime_id: "ws".into(),
        role: "workspace".into(),
        backend: BackendKind::AppleVf,
    }
}

fn config(state: &std::path::Path) -> MachineConfig {
    serde_json::from_value(serde_json::json!({
        "kernelPath": "/nonexistent/Image",
        "rootfsPath": "/nonexistent/rootfs.ext4",
        "stateDir": state,
        "memoryMiB": 512,
        "cpuCount": 1,
    }))
    .unwrap()
}

#[test]
fn host_is_answered_by_the_swift_supervisor() {
    let host = client().host().unwrap();
    assert_eq!(host.os, std::env::consts::OS);
    assert_eq!(host.arch, std::env::consts::ARCH);
    let names: Vec<&str> = host.checks.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"virtualization"), "{names:?}");
    if cfg!(target_os = "linux") {
        assert_eq!(host.accelerator, vmkit_protocol::Accelerator::None);
    }
}

#[test]
#[cfg(target_os = "linux")]
fn without_the_framework_start_is_unavailable_and_nothing_is_written() {
    let state = tempfile::tempdir().unwrap();
    let mut request = Request {
        command: Verb::Prepare,
        identity: identity(),
        config: Some(config(state.path())),
        state_dir: None,
        image: None,
        snapshot: None,
        from_snapshot: None,
    };
    let err = client().prepare(&request).unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
    assert!(err.message.contains("Virtualization.framework"), "{err:?}");
    let dir = state.path().join("workspaces/ws");
    assert!(!dir.exists());
    // start, like the Rust lifecycle's, first finds the workspace (and
    // checks a snapshot it is to restore), then asks for the hypervisor.
    request.command = Verb::Start;
    let err = client().start(&request).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    std::fs::create_dir_all(&dir).unwrap();
    let record = serde_json::json!({
        "name": "ws", "state": "prepared", "backend": "apple-vf", "image": "i",
        "config": config(state.path()), "keep": true,
        "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
    });
    std::fs::write(dir.join("workspace.json"), record.to_string()).unwrap();
    let err = client().start(&request).unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["workspace.json"], "nothing started, nothing written");
}

#[test]
fn state_commands_on_a_missing_workspace_are_not_found() {
    let state = tempfile::tempdir().unwrap();
    for verb in [
        Verb::Inspect,
        Verb::Halt,
        Verb::Stop,
        Verb::Kill,
        Verb::Delete,
        Verb::Pause,
        Verb::Resume,
    ] {
        let request = Request {
            command: verb,
            identity: identity(),
            config: None,
            state_dir: Some(state.path().to_string_lossy().into_owned()),
            image: None,
            snapshot: None,
            from_snapshot: None,
        };
        let err = client().call(&request).unwrap().error.unwrap();
        assert_eq!(err.code, ErrorCode::NotFound, "{verb:?}: {err:?}");
        assert_eq!(err.message, "workspace \"ws\" does not exist");
    }
}

#[test]
fn the_swift_validation_names_the_field_like_the_rust_one() {
    let state = tempfile::tempdir().unwrap();
    let mut config = config(state.path());
    config.memory_mib = 1;
    let request = Request {
        command: Verb::Check,
        identity: identity(),
        config: Some(config.clone()),
        state_dir: None,
        image: None,
        snapshot: None,
        from_snapshot: None,
    };
    let swift = client().call(&request).unwrap().error.unwrap();
    let rust = request.validate().unwrap_err();
    assert_eq!(swift, rust);
}

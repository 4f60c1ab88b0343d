//! The client against stand-in supervisors (shell scripts): the real one is
//! Swift on macOS. What is checked is our side of the contract: one request
//! in, one response out, and hostile output never trusted.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use vmkit_apple_vf::AppleVfBackend;
use vmkit_protocol::{Backend, BackendKind, Command, ErrorCode, Identity, Request};

fn script(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let path = dir.path().join("supervisor");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn halt() -> Request {
    Request {
        command: Command::Halt,
        identity: Identity {
            request_id: "r1".into(),
            runtime_id: "ws".into(),
            role: "workspace".into(),
            backend: BackendKind::AppleVf,
        },
        config: None,
        state_dir: Some("/state".into()),
        image: None,
    }
}

fn client(body: &str) -> (tempfile::TempDir, AppleVfBackend) {
    let dir = tempfile::tempdir().unwrap();
    let path = script(&dir, body);
    (
        dir,
        AppleVfBackend::with_supervisor(path, Duration::from_secs(5)),
    )
}

#[test]
fn sends_the_request_and_returns_the_event() {
    // The stand-in checks it received our halt request, then answers.
    let (dir, c) = client(
        r#"req=$(cat); case "$req" in *'"command":"halt"'*'"runtimeID":"ws"'*) ;; *) echo "bad request: $req" >&2; exit 3;; esac
echo '{"ok":true,"backend":"apple-vf","event":{"identity":{"requestID":"r1","runtimeID":"ws","role":"workspace","backend":"apple-vf"},"state":"halted","detail":"","observedAt":"2026-11-24T00:00:00.000Z"}}'"#,
    );
    let outcome = c.halt(&halt()).unwrap();
    assert_eq!(outcome.event.unwrap().state, vmkit_protocol::State::Halted);
    drop(dir);
}

#[test]
fn a_failure_response_is_returned_as_its_error() {
    let (_d, c) = client(
        r#"cat >/dev/null; echo '{"ok":false,"backend":"apple-vf","error":{"code":"invalidState","message":"not running"}}'; exit 1"#,
    );
    let err = c.halt(&halt()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidState);
    assert_eq!(err.message, "not running");
}

#[test]
fn hostile_or_broken_supervisors_are_errors_not_panics() {
    let cases = [
        ("cat >/dev/null; echo 'not json'", "not a protocol response"),
        ("cat >/dev/null; echo '{\"ok\":true,\"backend\":\"apple-vf\"}'; exit 1", "exited"),
        (
            "cat >/dev/null; echo '{\"ok\":true,\"backend\":\"apple-vf\",\"error\":{\"code\":\"internal\",\"message\":\"x\"}}'",
            "disagree",
        ),
        ("cat >/dev/null; echo '{\"ok\":true,\"backend\":\"qemu\"}'", "backend qemu"),
        ("cat >/dev/null; head -c 2000000 /dev/zero", "exceeds"),
        ("cat >/dev/null; echo boom >&2; exit 2", "boom"),
    ];
    for (body, expected) in cases {
        let (_d, c) = client(body);
        let err = c.halt(&halt()).unwrap_err();
        assert!(
            err.message.contains(expected),
            "{body}: {:?} should mention {expected:?}",
            err.message
        );
    }
}

#[test]
fn a_hanging_supervisor_times_out_and_a_missing_one_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(&dir, "sleep 30");
    let c = AppleVfBackend::with_supervisor(path, Duration::from_millis(300));
    let err = c.halt(&halt()).unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout);

    let c = AppleVfBackend::with_supervisor("/nonexistent/supervisor", Duration::from_secs(1));
    assert_eq!(c.halt(&halt()).unwrap_err().code, ErrorCode::Unavailable);
}

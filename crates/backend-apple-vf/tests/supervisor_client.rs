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
        snapshot: None,
        from_snapshot: None,
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

/// A small deterministic generator, so a failure can be replayed.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn mutated_supervisor_answers_are_errors_or_well_formed_never_panics() {
    // What a supervisor prints is untrusted: the client parses it with the
    // protocol's types and cross-checks ok/error/backend. Mutations of a
    // real answer go through the same parsing the client does.
    let good = br#"{"ok":true,"backend":"apple-vf","event":{"identity":{"requestID":"r1","runtimeID":"ws","role":"workspace","backend":"apple-vf"},"state":"halted","detail":"","observedAt":"2026-11-24T00:00:00.000Z"}}"#;
    let mut state = 15u64;
    let mut rejected = 0;
    for _ in 0..20_000 {
        let mut bytes = good.to_vec();
        for _ in 0..=(next(&mut state) % 4) {
            if bytes.is_empty() {
                break;
            }
            let at = (next(&mut state) as usize) % bytes.len();
            match next(&mut state) % 3 {
                0 => bytes[at] = next(&mut state) as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at),
            }
        }
        match serde_json::from_slice::<vmkit_protocol::Response>(&bytes) {
            // Whatever parses is a response that survives a round trip.
            Ok(r) => {
                let back: vmkit_protocol::Response =
                    serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
                assert_eq!(back, r);
            }
            Err(_) => rejected += 1,
        }
    }
    assert!(rejected > 10_000, "the mutations do produce bad input");
}

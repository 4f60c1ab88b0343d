//! The wire contract, checked against JSON written by hand from DESIGN.md.
//! If one of these fails, the field names changed: that breaks every
//! supervisor written in another language.

use std::fs;
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use vmkit_protocol::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses a fixture and serializes it back: the JSON must be unchanged.
fn round_trip<T: Serialize + DeserializeOwned>(name: &str) -> T {
    let bytes = fixture(name);
    let value: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let original: Value = serde_json::from_slice(&bytes).unwrap();
    let back = serde_json::to_value(&value).unwrap();
    assert_eq!(back, original, "{name} did not round-trip");
    value
}

/// `request-run.json` sets every config field, so the conformance kit
/// catches a supervisor whose mirror of the protocol lacks one. The
/// destructuring has no `..`: a new field fails to compile here until the
/// fixture (and this list) carries it.
#[test]
fn the_run_fixture_sets_every_config_field() {
    let config = Request::from_json(&fixture("request-run.json"))
        .unwrap()
        .config
        .unwrap();
    let MachineConfig {
        kernel_path: _,
        rootfs_path: _,
        state_dir: _,
        memory_mib: _,
        cpu_count: _,
        disks: _,
        volumes,
        kernel_args,
        hostname,
        arch,
        workload,
        network,
        publish,
    } = config;
    assert!(!volumes.is_empty() && !publish.is_empty());
    assert!(kernel_args.is_some() && hostname.is_some() && arch.is_some() && workload.is_some());
    assert!(!network.is_default());
}

#[test]
fn requests_round_trip_and_validate() {
    for name in [
        "request-start.json",
        "request-run.json",
        "request-halt.json",
        "request-host.json",
        "request-pause.json",
        "request-snapshot.json",
    ] {
        let r: Request = round_trip(name);
        Request::from_json(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        r.validate().unwrap();
    }
    let start = Request::from_json(&fixture("request-start.json")).unwrap();
    assert_eq!(start.command, Command::Start);
    assert_eq!(start.identity.runtime_id, "agent-7");
    let config = start.config.unwrap();
    assert_eq!(config.memory_mib, 512);
    assert_eq!(config.disks[1].mode, DiskMode::Ro);
    let pause = Request::from_json(&fixture("request-pause.json")).unwrap();
    assert_eq!(pause.command, Command::Pause);
    assert!(!pause.command.needs_config());
    let resume = edit("request-pause.json", |v| v["command"] = "resume".into());
    assert_eq!(
        Request::from_json(&resume).unwrap().command,
        Command::Resume
    );
    let halt = Request::from_json(&fixture("request-halt.json")).unwrap();
    assert_eq!(halt.identity.backend, BackendKind::AppleVf);
    assert_eq!(halt.state_dir(), Some("/Users/me/.microagent"));
}

#[test]
fn responses_and_events_round_trip() {
    let r: Response = round_trip("response-start.json");
    assert_eq!(r.event.unwrap().state, State::Running);
    let r: Response = round_trip("response-run.json");
    assert_eq!(r.result.unwrap().exit_code, Some(7));
    let r: Response = round_trip("response-host.json");
    assert_eq!(r.host.unwrap().accelerator, Accelerator::Tcg);
    let r: Response = round_trip("response-error.json");
    assert!(!r.ok);
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidState);
    let r: Response = round_trip("response-signal.json");
    let result = r.result.unwrap();
    assert_eq!(result.signal, Some(9));
    assert!(result.timed_out);
    let e: Event = round_trip("event.json");
    assert_eq!(e.state, State::Halted);
}

fn edit(name: &str, f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture(name)).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

fn rejects(bytes: &[u8], expected: &str) {
    let err = Request::from_json(bytes).expect_err("should be rejected");
    assert_eq!(err.code, ErrorCode::InvalidRequest);
    assert!(
        err.message.contains(expected),
        "error {:?} should mention {expected:?}",
        err.message
    );
}

#[test]
fn validation_errors_name_the_field() {
    rejects(
        &edit("request-start.json", |v| {
            v["config"]["disks"][1]["mode"] = "rx".into()
        }),
        "disks[1].mode",
    );
    rejects(
        &edit("request-start.json", |v| {
            v["config"]["memoryMiB"] = 1.into()
        }),
        "config.memoryMiB",
    );
    rejects(
        &edit("request-start.json", |v| v["config"]["cpuCount"] = 0.into()),
        "config.cpuCount",
    );
    rejects(
        &edit("request-start.json", |v| {
            v["config"]["kernelPath"] = "vmlinux".into()
        }),
        "config.kernelPath must be an absolute path",
    );
    rejects(
        &edit("request-start.json", |v| {
            v["config"]["hostname"] = "my_ws".into()
        }),
        "config.hostname must be",
    );
    rejects(
        &edit("request-start.json", |v| {
            v["config"]["disks"][1]["name"] = "data".into()
        }),
        "disks[1].name",
    );
    rejects(
        &edit("request-start.json", |v| {
            v["config"]["disks"][0]["mountpoint"] = "/../etc".into()
        }),
        "disks[0].mountpoint",
    );
    rejects(
        &edit("request-start.json", |v| {
            v["identity"]["runtimeID"] = "../x".into()
        }),
        "identity.runtimeID",
    );
    rejects(
        &edit("request-start.json", |v| {
            v["identity"]["backend"] = "vbox".into()
        }),
        "identity.backend",
    );
    rejects(
        &edit("request-start.json", |v| v["command"] = "explode".into()),
        "command",
    );
    rejects(
        &edit("request-start.json", |v| v["surprise"] = 1.into()),
        "surprise",
    );
    rejects(
        &edit("request-start.json", |v| {
            v.as_object_mut().unwrap().remove("config");
        }),
        "command start needs config",
    );
    rejects(
        &edit("request-halt.json", |v| {
            v.as_object_mut().unwrap().remove("stateDir");
        }),
        "needs stateDir",
    );
    rejects(
        &edit("request-run.json", |v| {
            v["config"]["workload"]["exec"] = " ".into()
        }),
        "workload.exec",
    );
    rejects(
        &edit("request-run.json", |v| {
            v["config"]["workload"]["timeoutSeconds"] = u64::MAX.into()
        }),
        "workload.timeoutSeconds must be between 1 and 2592000",
    );
    rejects(
        &edit("request-run.json", |v| v["image"] = "x".repeat(4097).into()),
        "image must be 1-4096 bytes",
    );
    rejects(
        &edit("request-run.json", |v| v["image"] = "a\nb".into()),
        "image must not contain control characters",
    );
    rejects(
        &edit("request-pause.json", |v| {
            v.as_object_mut().unwrap().remove("stateDir");
        }),
        "command pause needs stateDir",
    );
    rejects(
        &edit("request-snapshot.json", |v| {
            v["snapshot"]["tag"] = "../x".into()
        }),
        "snapshot tag must be",
    );
    rejects(
        &edit("request-snapshot.json", |v| {
            v["snapshot"].as_object_mut().unwrap().remove("tag");
        }),
        "snapshot.tag is required",
    );
    rejects(
        &edit("request-snapshot.json", |v| {
            v["snapshot"]["action"] = "list".into()
        }),
        "diskOnly applies to create only",
    );
    rejects(
        &edit("request-snapshot.json", |v| {
            v.as_object_mut().unwrap().remove("snapshot");
        }),
        "command snapshot needs snapshot",
    );
    rejects(
        &edit("request-pause.json", |v| {
            v["fromSnapshot"] = serde_json::json!({"runtimeID": "src", "tag": "t"})
        }),
        "fromSnapshot is only for",
    );
    rejects(
        &edit("request-start.json", |v| {
            v["fromSnapshot"] = serde_json::json!({"runtimeID": "src", "tag": "a/b"})
        }),
        "snapshot tag must be",
    );
    Request::from_json(&edit("request-start.json", |v| {
        v["fromSnapshot"] = serde_json::json!({"runtimeID": "src", "tag": "t"})
    }))
    .unwrap();
}

#[test]
fn the_image_travels_in_its_own_field_whatever_its_length() {
    let request = Request::from_json(&fixture("request-run.json")).unwrap();
    let image = request.image.unwrap();
    assert!(image.len() > 64 && image.contains("@sha256:"));
    assert_eq!(request.identity.role, "run");
}

#[test]
fn garbage_truncated_and_oversized_input_is_an_error_not_a_panic() {
    rejects(b"", "malformed request");
    rejects(b"not json", "malformed request");
    let full = fixture("request-start.json");
    for cut in [1, full.len() / 3, full.len() / 2, full.len() - 2] {
        assert!(Request::from_json(&full[..cut]).is_err());
    }
    let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
    rejects(&huge, "limit");
    rejects(b"[1,2,3]", "");
    rejects(b"{\"command\":\"inspect\",\"stateDir\":\"/s\"}", "identity");
}

#[test]
fn host_needs_no_identity() {
    let r = Request::from_json(b"{\"command\":\"host\"}").unwrap();
    assert_eq!(r.command, Command::Host);
    assert_eq!(r.identity, Identity::host_probe());
    assert_eq!(r.identity.backend, BackendKind::native());
    rejects(b"{\"command\":\"host\",\"surprise\":1}", "surprise");
}

#[test]
fn arch_is_optional_and_checked() {
    let r = Request::from_json(&edit("request-start.json", |v| {
        v["config"]["arch"] = "aarch64".into()
    }))
    .unwrap();
    assert_eq!(r.config.unwrap().guest_arch(), GuestArch::Aarch64);
    let r = Request::from_json(&fixture("request-start.json")).unwrap();
    assert_eq!(r.config.unwrap().guest_arch(), GuestArch::host());
    rejects(
        &edit("request-start.json", |v| {
            v["config"]["arch"] = "riscv64".into()
        }),
        "config.arch",
    );
}

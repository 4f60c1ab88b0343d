//! The lifecycle's commands over a [`FakeMachine`]: real state store, real
//! channel, a fake VMM process and a thread playing the guest init.

use std::sync::atomic::Ordering;

use vmkit_channel::{ExecRequest, PROTOCOL_VERSION};
use vmkit_protocol::{
    Backend, BackendKind, Command, ErrorCode, Identity, MachineConfig, Request, RunResult, State,
    Workload,
};
use vmkit_state::StateStore;

use crate::fake::{FakeMachine, Guest};
use crate::{ExecOptions, Lifecycle};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lc")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(dir.path().join("root.img"), b"a root disk").unwrap();
        Fixture { dir }
    }

    fn config(&self, workload: Option<Workload>) -> MachineConfig {
        MachineConfig {
            workload,
            // No NIC: these tests are about the lifecycle, and the fake
            // machine has no network helper to talk to.
            network: vmkit_protocol::Network {
                mode: vmkit_protocol::NetworkMode::None,
                ..Default::default()
            },
            ..MachineConfig::new(
                "/nonexistent/vmlinux",
                self.dir.path().join("root.img").to_string_lossy(),
                self.dir.path().to_string_lossy(),
                128,
                1,
            )
        }
    }

    fn request(&self, command: Command, name: &str, workload: Option<Workload>) -> Request {
        Request {
            command,
            identity: Identity {
                request_id: "r1".into(),
                runtime_id: name.into(),
                role: "workspace".into(),
                backend: BackendKind::Qemu,
            },
            config: Some(self.config(workload)),
            state_dir: None,
            image: None,
        }
    }

    fn store(&self) -> StateStore {
        StateStore::open(self.dir.path()).unwrap()
    }
}

fn workload(exec: &str, timeout_seconds: Option<u64>) -> Workload {
    Workload {
        exec: exec.into(),
        timeout_seconds,
        ..Workload::default()
    }
}

fn exit_zero() -> RunResult {
    RunResult {
        exit_code: Some(0),
        ..RunResult::default()
    }
}

#[test]
fn start_boots_to_running_and_exec_and_halt_use_the_announced_port() {
    let fx = Fixture::new();
    let lc = Lifecycle::new(FakeMachine::new(Guest::Workspace {
        protocol_version: PROTOCOL_VERSION,
        exec_port: 7777,
    }));
    lc.prepare(&fx.request(Command::Prepare, "ws", None))
        .unwrap();
    let started = lc.start(&fx.request(Command::Start, "ws", None)).unwrap();
    assert_eq!(started.event.unwrap().state, State::Running);
    let record = fx.store().peek("ws").unwrap().unwrap();
    assert_eq!(record.exec_port, Some(7777));
    let vmm = record.vmm.unwrap();
    assert!(vmm.is_alive());

    // The fake guest answers CONNECT only on 7777: this succeeds only if
    // exec used the announced port, not the default.
    let mut out = Vec::new();
    let options = ExecOptions {
        request: ExecRequest {
            argv: vec!["echo".into(), "hi".into()],
            ..ExecRequest::default()
        },
        stdin: None,
        handle: vmkit_channel::host::ExecHandle::new(),
    };
    let result = lc
        .exec_streaming(fx.dir.path(), "ws", options, &mut out, &mut Vec::new())
        .unwrap();
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(out, b"echo hi");

    let halted = lc.halt(&fx.request(Command::Halt, "ws", None)).unwrap();
    let event = halted.event.unwrap();
    assert_eq!(event.state, State::Halted, "{}", event.detail);
    assert_eq!(event.detail, "guest powered off");
    assert!(!vmm.is_alive());
    let record = fx.store().peek("ws").unwrap().unwrap();
    assert_eq!(record.exec_port, None);
}

#[test]
fn start_refuses_an_incompatible_guest_init_naming_both_versions() {
    let fx = Fixture::new();
    let lc = Lifecycle::new(FakeMachine::new(Guest::Workspace {
        protocol_version: 99,
        exec_port: 7777,
    }));
    lc.prepare(&fx.request(Command::Prepare, "ws", None))
        .unwrap();
    let err = lc
        .start(&fx.request(Command::Start, "ws", None))
        .unwrap_err();
    assert!(err.message.contains("version 99"), "{}", err.message);
    assert!(
        err.message
            .contains(&format!("speaks version {PROTOCOL_VERSION}")),
        "{}",
        err.message
    );
    let record = fx.store().peek("ws").unwrap().unwrap();
    assert_eq!(record.state, State::Failed);
    assert!(record.vmm.is_none());
}

#[test]
fn start_refuses_an_exec_port_that_cannot_be_one() {
    let fx = Fixture::new();
    let lc = Lifecycle::new(FakeMachine::new(Guest::Workspace {
        protocol_version: PROTOCOL_VERSION,
        exec_port: 0,
    }));
    lc.prepare(&fx.request(Command::Prepare, "ws", None))
        .unwrap();
    let err = lc
        .start(&fx.request(Command::Start, "ws", None))
        .unwrap_err();
    assert!(err.message.contains("exec port 0"), "{}", err.message);
}

#[test]
fn a_vmm_that_dies_during_boot_fails_the_workspace() {
    let fx = Fixture::new();
    let lc = Lifecycle::new(FakeMachine::new(Guest::Dies));
    lc.prepare(&fx.request(Command::Prepare, "ws", None))
        .unwrap();
    let err = lc
        .start(&fx.request(Command::Start, "ws", None))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::GuestFailure);
    assert!(
        err.message.contains("exited during boot"),
        "{}",
        err.message
    );
    let events = fx.store().events("ws").unwrap().read_all().unwrap();
    let states: Vec<State> = events.iter().map(|e| e.state).collect();
    assert_eq!(states, [State::Prepared, State::Starting, State::Failed]);
}

#[test]
fn a_failed_launch_fails_the_workspace_and_it_can_start_again() {
    let fx = Fixture::new();
    let lc = Lifecycle::new(FakeMachine::new(Guest::LaunchFails));
    lc.prepare(&fx.request(Command::Prepare, "ws", None))
        .unwrap();
    let err = lc
        .start(&fx.request(Command::Start, "ws", None))
        .unwrap_err();
    assert_eq!(err.message, "fake launch failed");
    assert_eq!(fx.store().peek("ws").unwrap().unwrap().state, State::Failed);
    let lc = Lifecycle::new(FakeMachine::new(Guest::Workspace {
        protocol_version: PROTOCOL_VERSION,
        exec_port: 7000,
    }));
    lc.start(&fx.request(Command::Start, "ws", None)).unwrap();
    lc.kill(&fx.request(Command::Kill, "ws", None)).unwrap();
    lc.delete(&fx.request(Command::Delete, "ws", None)).unwrap();
    assert!(fx.store().peek("ws").unwrap().is_none());
}

#[test]
fn run_streams_output_and_removes_the_workspace_unless_kept() {
    let fx = Fixture::new();
    let lc = Lifecycle::new(FakeMachine::new(Guest::Run {
        stdout: b"out".to_vec(),
        result: exit_zero(),
    }));
    let request = fx.request(Command::Run, "once", Some(workload("true", Some(60))));
    let mut out = Vec::new();
    let output = lc
        .run_streaming(&request, false, &mut out, &mut Vec::new())
        .unwrap();
    assert_eq!(output.result, exit_zero());
    assert_eq!(out, b"out");
    assert!(fx.store().peek("once").unwrap().is_none());
}

#[test]
fn a_kept_run_records_its_image_not_its_role() {
    let fx = Fixture::new();
    let lc = Lifecycle::new(FakeMachine::new(Guest::Run {
        stdout: vec![],
        result: exit_zero(),
    }));
    let image = format!("oci-layout:/{}/image:tag", "a-long-folder-name".repeat(5));
    let mut request = fx.request(Command::Run, "kept", Some(workload("true", None)));
    request.identity.role = "run".into();
    request.image = Some(image.clone());
    lc.run_streaming(&request, true, &mut Vec::new(), &mut Vec::new())
        .unwrap();
    let record = fx.store().peek("kept").unwrap().unwrap();
    assert_eq!(record.image, image);
    assert!(record.keep);
    assert_eq!(record.state, State::Stopped);
    assert_eq!(record.last_result, Some(exit_zero()));
}

#[test]
fn an_absurd_run_timeout_is_refused_before_anything_starts() {
    let fx = Fixture::new();
    let machine = FakeMachine::new(Guest::Run {
        stdout: vec![],
        result: exit_zero(),
    });
    let launches = machine.launches.clone();
    let lc = Lifecycle::new(machine);
    let request = fx.request(Command::Run, "t", Some(workload("true", Some(u64::MAX))));
    let err = lc
        .run_streaming(&request, false, &mut Vec::new(), &mut Vec::new())
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest);
    assert!(err.message.contains("timeoutSeconds"), "{}", err.message);
    assert_eq!(launches.load(Ordering::SeqCst), 0);
    assert!(fx.store().peek("t").unwrap().is_none());
}

#[test]
fn exec_needs_a_running_workspace() {
    let fx = Fixture::new();
    let lc = Lifecycle::new(FakeMachine::new(Guest::Dies));
    lc.prepare(&fx.request(Command::Prepare, "ws", None))
        .unwrap();
    let options = ExecOptions {
        request: ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        },
        stdin: None,
        handle: vmkit_channel::host::ExecHandle::new(),
    };
    let err = lc
        .exec_streaming(
            fx.dir.path(),
            "ws",
            options,
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidState);
    assert!(err.message.contains("is prepared"), "{}", err.message);
    // Halting what is not running reports where it is, changing nothing.
    let event = lc
        .stop(&fx.request(Command::Stop, "ws", None))
        .unwrap()
        .event
        .unwrap();
    assert_eq!(event.state, State::Prepared);
}

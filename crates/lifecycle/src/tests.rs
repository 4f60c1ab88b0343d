//! The lifecycle's commands over a [`FakeMachine`]: real state store, real
//! channel, a fake VMM process and a thread playing the guest init.

use std::sync::atomic::Ordering;

use vmkit_channel::{ExecRequest, PROTOCOL_VERSION};
use vmkit_protocol::{
    Backend, BackendKind, Command, ErrorCode, Identity, MachineConfig, Request, RunResult,
    SnapshotAction, SnapshotRef, SnapshotRequest, State, Workload,
};
use vmkit_state::StateStore;

use crate::fake::{FakeMachine, Guest, FAKE_STATE};
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
        std::fs::write(dir.path().join("vmlinux"), b"a kernel").unwrap();
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
                self.dir.path().join("vmlinux").to_string_lossy(),
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
            snapshot: None,
            from_snapshot: None,
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
    // The VMM's own reason is quoted from its log.
    assert!(
        err.message
            .contains("last vmm.log lines:\n  fake vmm: cannot open the root disk\n"),
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

fn snapshot_request(fx: &Fixture, action: SnapshotAction, tag: Option<&str>) -> Request {
    Request {
        snapshot: Some(SnapshotRequest {
            action,
            tag: tag.map(str::to_owned),
            disk_only: false,
        }),
        state_dir: Some(fx.dir.path().to_string_lossy().into_owned()),
        config: None,
        ..fx.request(Command::Snapshot, "ws", None)
    }
}

fn listed(lc: &Lifecycle, fx: &Fixture) -> Vec<String> {
    lc.snapshot(&snapshot_request(fx, SnapshotAction::List, None))
        .unwrap()
        .snapshots
        .unwrap()
        .into_iter()
        .map(|s| s.tag)
        .collect()
}

fn running_workspace(fx: &Fixture, save_fails: bool) -> (Lifecycle, FakeMachineHandles) {
    let mut machine = FakeMachine::new(Guest::Workspace {
        protocol_version: PROTOCOL_VERSION,
        exec_port: 7777,
    });
    machine.save_fails = save_fails;
    let handles = (
        machine.pauses.clone(),
        machine.launches.clone(),
        machine.freezes.clone(),
    );
    let lc = Lifecycle::new(machine);
    lc.prepare(&fx.request(Command::Prepare, "ws", None))
        .unwrap();
    lc.start(&fx.request(Command::Start, "ws", None)).unwrap();
    (lc, handles)
}

type FakeMachineHandles = (
    std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
);

#[test]
fn a_failed_snapshot_leaves_nothing_and_the_workspace_runs_on() {
    let fx = Fixture::new();
    let (lc, (pauses, _, _)) = running_workspace(&fx, true);
    let err = lc
        .snapshot(&snapshot_request(&fx, SnapshotAction::Create, Some("t")))
        .unwrap_err();
    assert!(
        err.message.contains("No space left on device"),
        "{}",
        err.message
    );
    assert!(listed(&lc, &fx).is_empty());
    let snapshots = fx.dir.path().join("workspaces/ws/snapshots");
    let left: Vec<_> = std::fs::read_dir(&snapshots)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Paused for the snapshot, resumed after its failure.
    assert_eq!(*pauses.lock().unwrap(), [true, false]);
    let record = fx.store().peek("ws").unwrap().unwrap();
    assert_eq!(record.state, State::Running);
    assert!(record.vmm.unwrap().is_alive());
    lc.kill(&fx.request(Command::Kill, "ws", None)).unwrap();
}

#[test]
fn a_restore_that_does_not_fit_is_refused_and_nothing_starts() {
    let fx = Fixture::new();
    let (lc, (pauses, launches, _)) = running_workspace(&fx, false);
    let made = lc
        .snapshot(&snapshot_request(&fx, SnapshotAction::Create, Some("t")))
        .unwrap();
    assert_eq!(made.snapshots.unwrap()[0].tag, "t");
    assert_eq!(*pauses.lock().unwrap(), [true, false]);
    assert_eq!(listed(&lc, &fx), ["t"]);
    lc.kill(&fx.request(Command::Kill, "ws", None)).unwrap();
    let launched = launches.load(Ordering::SeqCst);

    let restore = |memory_mib: u32| {
        let mut start = fx.request(Command::Start, "ws", None);
        start.config.as_mut().unwrap().memory_mib = memory_mib;
        start.from_snapshot = Some(SnapshotRef {
            runtime_id: "ws".into(),
            tag: "t".into(),
        });
        lc.start(&start)
    };
    let err = restore(256).unwrap_err();
    assert!(
        err.message
            .contains("the snapshot has 128 MiB of memory, the workspace 256 MiB"),
        "{}",
        err.message
    );
    std::fs::remove_file(
        fx.dir
            .path()
            .join("workspaces/ws/snapshots/t")
            .join(FAKE_STATE),
    )
    .unwrap();
    let err = restore(128).unwrap_err();
    assert!(
        err.message.contains("state.fake is missing"),
        "{}",
        err.message
    );
    std::fs::write(fx.dir.path().join("vmlinux"), b"another kernel").unwrap();
    let err = restore(128).unwrap_err();
    assert!(
        err.message
            .contains("the kernel changed since the snapshot"),
        "{}",
        err.message
    );
    // Refused before anything ran: still stopped, no launch.
    assert_eq!(launches.load(Ordering::SeqCst), launched);
    let record = fx.store().peek("ws").unwrap().unwrap();
    assert_eq!(record.state, State::Stopped);

    lc.snapshot(&snapshot_request(&fx, SnapshotAction::Delete, Some("t")))
        .unwrap();
    assert!(listed(&lc, &fx).is_empty());

    // A stopped workspace can have a disk-only snapshot; starting from it
    // is a fresh boot from that disk.
    let mut disk_only = snapshot_request(&fx, SnapshotAction::Create, Some("d"));
    disk_only.snapshot.as_mut().unwrap().disk_only = true;
    let made = lc.snapshot(&disk_only).unwrap().snapshots.unwrap();
    assert!(made[0].disk_only);
    // ... which any kernel can boot.
    std::fs::write(fx.dir.path().join("vmlinux"), b"a third kernel").unwrap();
    let mut start = fx.request(Command::Start, "ws", None);
    start.from_snapshot = Some(SnapshotRef {
        runtime_id: "ws".into(),
        tag: "d".into(),
    });
    let started = lc.start(&start).unwrap().event.unwrap();
    assert_eq!(started.state, State::Running);
    assert_eq!(started.detail, "exec service ready");
    lc.kill(&fx.request(Command::Kill, "ws", None)).unwrap();
    let err = lc
        .snapshot(&snapshot_request(&fx, SnapshotAction::Delete, Some("t")))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[path = "snapshot_tests.rs"]
mod snapshot_tests;

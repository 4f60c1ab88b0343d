//! `FirecrackerMachine::launch` against a stand-in `firecracker` on PATH
//! whose API checks every request against Firecracker's swagger file.

mod mock;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use mock::plan;
use mock::server::{Behaviour, FakeFirecracker};
use mock::swagger::Spec;
use vmkit_firecracker::FirecrackerMachine;
use vmkit_lifecycle::Machine;
use vmkit_protocol::{Disk, DiskMode, ErrorCode};

/// PATH is process-wide: tests that set it take turns.
fn path_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec() -> Arc<Spec> {
    static SPEC: OnceLock<Arc<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| Arc::new(Spec::load())).clone()
}

/// The stand-in, behaving so, first on PATH until the guard returned
/// with it is dropped.
fn stand_in(behaviour: Behaviour) -> (MutexGuard<'static, ()>, FakeFirecracker) {
    let guard = path_lock();
    let fake = FakeFirecracker::install(spec(), behaviour);
    set_path(fake.bin_dir());
    (guard, fake)
}

fn set_path(dir: &Path) {
    // Only `firecracker` is looked up during a launch; the script itself
    // needs sh, sleep, dirname, mv and printf from the system folders.
    std::env::set_var("PATH", format!("{}:/usr/bin:/bin", dir.display()));
}

fn disk(state: &Path, name: &str, mode: DiskMode) -> Disk {
    Disk {
        name: name.into(),
        path: state.join(format!("{name}.img")).display().to_string(),
        mountpoint: format!("/mnt/{name}"),
        mode,
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; launch reaps what it kills.
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The session id, field 6 of /proc/<pid>/stat (after the `(comm)`).
fn session_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(3).unwrap().parse().unwrap()
}

#[test]
fn launch_configures_two_extra_disks_and_starts() {
    let (_path, fake) = stand_in(Behaviour::default());
    let state = tempfile::tempdir().unwrap();
    let disks = vec![
        disk(state.path(), "data", DiskMode::Ro),
        disk(state.path(), "scratch", DiskMode::Rw),
    ];
    let plan = plan(state.path(), "ws_1", disks, false);

    let mut launched = FirecrackerMachine::new().launch(&plan).unwrap();
    assert_eq!(launched.vmm.id() as i32, fake.pid());
    assert_eq!(launched.helpers.len(), 1, "the vmm.log relay");
    assert!(launched.vmm.try_wait().unwrap().is_none());

    let socket = plan.paths.dir.join("fc.sock");
    assert_eq!(
        fake.args(),
        ["--api-sock", socket.to_str().unwrap(), "--id", "ws-1"]
    );
    let requests = fake.requests();
    for r in &requests {
        assert_eq!(r.status, 204, "the contract refused {r:?}");
    }
    let sequence: Vec<_> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        sequence,
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/root",
            "PUT /drives/disk0",
            "PUT /drives/disk1",
            "PUT /drives/config",
            "PUT /vsock",
            "PUT /actions",
        ]
    );
    let body = |i: usize| requests[i].body.clone().unwrap();
    assert_eq!(
        body(0),
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256})
    );
    assert_eq!(
        body(1),
        serde_json::json!({
            "kernel_image_path": plan.config.kernel_path,
            "boot_args": format!(
                "{} microagent.exit=reboot {} loglevel=4",
                vmkit_kernel::boot::firecracker_cmdline_base(true),
                plan.kernel_args
            ),
        })
    );
    let drive = |i: usize| {
        let b = body(i);
        (
            b["drive_id"].as_str().unwrap().to_string(),
            b["path_on_host"].as_str().unwrap().to_string(),
            b["is_root_device"].as_bool().unwrap(),
            b["is_read_only"].as_bool().unwrap(),
        )
    };
    let p = |path: &Path| path.display().to_string();
    assert_eq!(drive(2), ("root".into(), p(&plan.root_disk), true, false));
    assert_eq!(
        drive(3),
        (
            "disk0".into(),
            plan.config.disks[0].path.clone(),
            false,
            true
        )
    );
    assert_eq!(
        drive(4),
        (
            "disk1".into(),
            plan.config.disks[1].path.clone(),
            false,
            false
        )
    );
    assert_eq!(
        drive(5),
        ("config".into(), p(&plan.paths.config_disk), false, true)
    );
    assert_eq!(
        body(6),
        serde_json::json!({"guest_cid": 3, "uds_path": p(&plan.paths.vsock)})
    );
    assert_eq!(body(7), serde_json::json!({"action_type": "InstanceStart"}));

    // A one-shot run's VMM is in its own process group, not a new session.
    assert_ne!(session_of(fake.pid()), fake.pid());

    // Pause and resume are PATCH /vm, which the contract accepts after boot.
    let machine = FirecrackerMachine::new();
    machine.set_paused(&plan.paths, true).unwrap();
    machine.set_paused(&plan.paths, false).unwrap();
    let requests = fake.requests();
    let patches: Vec<_> = requests[8..]
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.status, r.body.clone()))
        .collect();
    assert_eq!(
        patches,
        [
            (
                "PATCH",
                "/vm",
                204,
                Some(serde_json::json!({"state": "Paused"}))
            ),
            (
                "PATCH",
                "/vm",
                204,
                Some(serde_json::json!({"state": "Resumed"}))
            ),
        ]
    );
    // stdout is the serial console; stderr and our notes are vmm.log,
    // complete once Firecracker is gone and the relays have drained.
    launched.shut_down();
    let console = std::fs::read_to_string(&plan.paths.console_log).unwrap();
    assert!(console.contains("serial console line"), "{console}");
    assert!(!console.contains("stderr line"), "{console}");
    let vmm = std::fs::read_to_string(&plan.paths.vmm_log).unwrap();
    assert!(vmm.contains("fake-firecracker: stderr line"), "{vmm}");
    assert!(vmm.contains("microagent: PUT /actions"), "{vmm}");
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
}

#[test]
fn a_firecracker_flooding_its_stderr_costs_the_host_a_bounded_vmm_log() {
    let (_path, _fake) = stand_in(Behaviour {
        flood_stderr: true,
        ..Behaviour::default()
    });
    let state = tempfile::tempdir().unwrap();
    let plan = plan(state.path(), "w", Vec::new(), false);
    let mut launched = FirecrackerMachine::new().launch(&plan).unwrap();
    // The flood is written before the stand-in serves its API, so it has
    // all passed through the relay once Firecracker is gone and the relay
    // has drained.
    launched.vmm.kill().unwrap();
    launched.vmm.wait().unwrap();
    launched.helpers[0].wait().unwrap();
    vmkit_testkit::logs::assert_capped(
        &plan.paths.dir,
        "vmm.log",
        vmkit_lifecycle::vmm_files::CONSOLE_FILE_CAP,
    );
    launched.shut_down();
}

#[test]
fn a_detached_launch_gets_its_own_session_and_a_fresh_console() {
    let (_path, fake) = stand_in(Behaviour::default());
    let state = tempfile::tempdir().unwrap();
    let plan = plan(state.path(), "keep", Vec::new(), true);
    std::fs::write(&plan.paths.console_log, "previous boot\n").unwrap();
    // A socket left by a VMM that died must not stop the next one.
    drop(std::os::unix::net::UnixListener::bind(plan.paths.dir.join("fc.sock")).unwrap());

    let mut launched = FirecrackerMachine::new().launch(&plan).unwrap();
    assert_eq!(session_of(fake.pid()), fake.pid());
    let drives: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/drives/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(drives, ["/drives/root", "/drives/config"]);
    // Each boot's console starts afresh; the relay caps it from there.
    let console = vmkit_lifecycle::vmm_files::read_console(&plan.paths.console_log);
    assert!(!String::from_utf8_lossy(&console).contains("previous boot"));
    launched.vmm.kill().unwrap();
    launched.vmm.wait().unwrap();
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
}

#[test]
fn an_api_fault_kills_firecracker_and_is_quoted() {
    let fault = "Unable to create the block device: BackingFile(Os { code: 2, kind: NotFound })";
    let (_path, fake) = stand_in(Behaviour {
        fail: Some(("/drives/disk1".into(), fault.into())),
        ..Behaviour::default()
    });
    let state = tempfile::tempdir().unwrap();
    let disks = vec![
        disk(state.path(), "a", DiskMode::Rw),
        disk(state.path(), "b", DiskMode::Ro),
    ];
    let plan = plan(state.path(), "w", disks, false);

    let err = FirecrackerMachine::new().launch(&plan).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(
        err.message.contains(&format!(
            "firecracker refused PUT /drives/disk1 (HTTP 400): {fault}"
        )),
        "{err}"
    );
    assert!(!alive(fake.pid()), "firecracker was left running");
    assert!(!plan.paths.dir.join("fc.sock").exists());
    let last = fake.requests().last().cloned().unwrap();
    assert_eq!((last.path.as_str(), last.status), ("/drives/disk1", 400));
    assert!(fake.requests().iter().all(|r| r.path != "/actions"));
    let vmm = std::fs::read_to_string(&plan.paths.vmm_log).unwrap();
    assert!(vmm.contains("microagent: launch failed"), "{vmm}");
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
}

#[test]
fn a_fault_at_instance_start_kills_firecracker_too() {
    let fault = "Start microvm error: Cannot create VM: Error creating KVM object";
    let (_path, fake) = stand_in(Behaviour {
        fail: Some(("/actions".into(), fault.into())),
        ..Behaviour::default()
    });
    let state = tempfile::tempdir().unwrap();
    let plan = plan(state.path(), "w", Vec::new(), true);
    let err = FirecrackerMachine::new().launch(&plan).unwrap_err();
    assert!(err.message.contains("PUT /actions"), "{err}");
    assert!(err.message.ends_with(fault), "{err}");
    assert!(!alive(fake.pid()));
}

#[test]
fn firecracker_dying_mid_configuration_is_reported() {
    let (_path, fake) = stand_in(Behaviour {
        crash_on: Some("/drives/root".into()),
        ..Behaviour::default()
    });
    let state = tempfile::tempdir().unwrap();
    let plan = plan(state.path(), "w", Vec::new(), false);
    let err = FirecrackerMachine::new().launch(&plan).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(
        err.message
            .starts_with("firecracker exited during PUT /drives/root (signal: 9"),
        "{err}"
    );
    assert!(
        err.message
            .contains("last output: fake-firecracker: serial console line"),
        "{err}"
    );
    assert!(!alive(fake.pid()));
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
}

#[test]
fn firecracker_exiting_at_start_is_reported_with_its_last_words() {
    let (_path, _fake) = stand_in(Behaviour {
        exit_at_start: true,
        ..Behaviour::default()
    });
    let state = tempfile::tempdir().unwrap();
    let plan = plan(state.path(), "w", Vec::new(), false);
    let err = FirecrackerMachine::new().launch(&plan).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.message.contains("firecracker exited at start"), "{err}");
    assert!(
        err.message.contains("Error: fake failure at start"),
        "{err}"
    );
}

#[test]
fn a_missing_binary_is_unavailable() {
    let _guard = path_lock();
    let empty = tempfile::tempdir().unwrap();
    set_path(empty.path());
    let state = tempfile::tempdir().unwrap();
    let plan = plan(state.path(), "w", Vec::new(), false);
    let err = FirecrackerMachine::new().launch(&plan).unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(
        err.message.contains("firecracker not found in PATH"),
        "{err}"
    );
    // Nothing was started, so nothing was written.
    assert!(!plan.paths.vmm_log.exists());
}

#[test]
fn check_refuses_without_kvm_then_without_the_binary() {
    let _guard = path_lock();
    let empty = tempfile::tempdir().unwrap();
    set_path(empty.path());
    let state = tempfile::tempdir().unwrap();
    let plan = plan(state.path(), "w", Vec::new(), false);
    let err = FirecrackerMachine::new().check(&plan.config).unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    // Hosts differ in KVM, not in the order of the refusals.
    let expected = if vmkit_host::probe_kvm().usable() {
        "firecracker not found in PATH"
    } else {
        "firecracker needs usable KVM"
    };
    assert!(err.message.contains(expected), "{err}");
}

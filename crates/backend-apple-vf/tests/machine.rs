//! The apple-vf machine's launch: the plan it writes is one the real Swift
//! supervisor reads (on Linux it then refuses to boot: no framework), the
//! status handshake, and a supervisor that never says `running`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::swift_supervisor;
use vmkit_apple_vf::{AppleVfBackend, AppleVfMachine, VmPlan};
use vmkit_lifecycle::{BootPlan, Machine, Nic, WorkspacePaths};
use vmkit_protocol::{ErrorCode, MachineConfig};

fn boot_plan(dir: &Path) -> BootPlan {
    let config: MachineConfig = serde_json::from_value(serde_json::json!({
        "kernelPath": "/k/Image",
        "rootfsPath": "/r/rootfs.ext4",
        "stateDir": dir,
        "memoryMiB": 512,
        "cpuCount": 2,
        "kernelArgs": "quiet",
        "disks": [
            {"name": "data", "path": "/srv/data.ext4", "mountpoint": "/data", "mode": "rw"},
            {"name": "refs", "path": "/srv/refs.ext4", "mountpoint": "/refs", "mode": "ro"}
        ],
        "volumes": [
            {"hostPath": "/src", "guestPath": "/work", "readOnly": false},
            {"hostPath": "/docs", "guestPath": "/docs", "readOnly": true}
        ]
    }))
    .unwrap();
    let paths = WorkspacePaths::new(dir).unwrap();
    let nic = Some(Nic::Datagram {
        socket: paths.net_socket.clone(),
        vmm_socket: paths.net_vmm_socket.clone(),
        mac: "52:54:00:12:34:56".into(),
    });
    BootPlan {
        config,
        root_disk: paths.disk.clone(),
        paths,
        kernel_args: "root=/dev/vda rw init=/sbin/microagent-init microagent.config=/dev/vdd"
            .into(),
        detached: false,
        nic,
        restore: None,
    }
}

fn machine(program: &Path) -> AppleVfMachine {
    AppleVfMachine::with_client(AppleVfBackend::with_supervisor(
        program,
        Duration::from_secs(60),
    ))
}

#[test]
fn the_plan_lists_disks_in_guest_order_with_the_console_on_hvc0() {
    let dir = tempfile::tempdir().unwrap();
    let plan = VmPlan::for_boot(&boot_plan(dir.path()));
    let disks: Vec<(&str, bool)> = plan
        .disks
        .iter()
        .map(|d| (d.path.as_str(), d.read_only))
        .collect();
    let root = dir.path().join("rootfs.ext4");
    let config = dir.path().join("config.img");
    assert_eq!(
        disks,
        [
            (root.to_str().unwrap(), false),
            ("/srv/data.ext4", false),
            ("/srv/refs.ext4", true),
            (config.to_str().unwrap(), true)
        ]
    );
    assert!(
        plan.command_line.starts_with("console=hvc0 "),
        "{}",
        plan.command_line
    );
    assert!(plan.command_line.contains("microagent.config=/dev/vdd"));
    assert!(plan.command_line.ends_with(" quiet"));
    assert_eq!(plan.host_ports, [10000]);
    assert_eq!(plan.vsock_path, dir.path().join("v.sock").to_str().unwrap());
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["memoryMiB"], 512);
    assert_eq!(json["disks"][2]["readOnly"], true);
}

#[test]
fn the_plan_carries_the_nic_volumes_and_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::to_value(VmPlan::for_boot(&boot_plan(dir.path()))).unwrap();
    let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    assert_eq!(
        json["network"],
        serde_json::json!({"stackSocket": at("n.sock"), "vmSocket": at("nv.sock"), "macAddress": "52:54:00:12:34:56"})
    );
    // Tags as the guest init mounts them (vmkit_lifecycle::volumes::tag).
    assert_eq!(
        json["volumes"],
        serde_json::json!([
            {"tag": "vol0", "path": "/src", "readOnly": false},
            {"tag": "vol1", "path": "/docs", "readOnly": true}
        ])
    );
    assert_eq!(json["controlSocket"], at("vm-control.sock"));
    assert!(json.get("restoreFrom").is_none(), "{json}");
    let mut no_nic = boot_plan(dir.path());
    no_nic.nic = None;
    let json = serde_json::to_value(VmPlan::for_boot(&no_nic)).unwrap();
    assert!(json.get("network").is_none(), "{json}");
}

#[test]
fn a_snapshot_is_the_vm_processs_save_verb_and_a_restore_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = WorkspacePaths::new(dir.path()).unwrap();
    let snapshot = dir.path().join("snap");
    std::fs::create_dir(&snapshot).unwrap();
    let server = control_stand_in(&paths, "{\"ok\":true,\"state\":\"paused\"}\n");
    let config = boot_plan(dir.path()).config;
    machine(Path::new("/unused"))
        .save_state(&config, &paths, &snapshot)
        .unwrap();
    let asked: serde_json::Value = serde_json::from_str(&server.join().unwrap()).unwrap();
    assert_eq!(
        asked,
        serde_json::json!({"verb": "save", "path": snapshot.join("vm.vzstate")})
    );
    std::fs::remove_file(vmkit_apple_vf::control_socket(&paths)).unwrap();

    // Restoring from a folder without the state file is refused up front.
    let mut plan = boot_plan(dir.path());
    plan.restore = Some(snapshot.clone());
    let err = machine(swift_supervisor()).launch(&plan).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest, "{err:?}");
    assert!(err.message.contains("vm.vzstate"), "{err:?}");
    // With it, the plan names it, and the real Swift supervisor reads that
    // plan (then, on Linux, has no framework to restore into).
    std::fs::write(snapshot.join("vm.vzstate"), b"state").unwrap();
    let json = serde_json::to_value(VmPlan::for_boot(&plan)).unwrap();
    assert_eq!(
        json["restoreFrom"],
        snapshot.join("vm.vzstate").to_str().unwrap()
    );
    let err = machine(swift_supervisor()).launch(&plan).unwrap_err();
    if cfg!(target_os = "linux") {
        assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
        assert!(!err.message.contains("not a VM plan"), "{err:?}");
    }
}

/// A stand-in for the per-VM process's control socket (Swift
/// `ControlServer`: one JSON line in, one out), answering with `answer`
/// and handing back what it was asked.
fn control_stand_in(paths: &WorkspacePaths, answer: &str) -> std::thread::JoinHandle<String> {
    let answer = answer.to_owned();
    use std::io::{BufRead, Write};
    let listener =
        std::os::unix::net::UnixListener::bind(vmkit_apple_vf::control_socket(paths)).unwrap();
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&conn).read_line(&mut line).unwrap();
        (&conn).write_all(answer.as_bytes()).unwrap();
        line
    })
}

#[test]
fn pause_and_resume_are_the_vm_processs_control_verbs() {
    let dir = tempfile::tempdir().unwrap();
    let paths = WorkspacePaths::new(dir.path()).unwrap();
    let vf = machine(Path::new("/unused"));
    let cases: [(bool, &str, &str); 2] = [
        (
            true,
            r#"{"ok":true,"state":"paused"}"#,
            r#"{"verb":"pause"}"#,
        ),
        (
            false,
            r#"{"ok":true,"state":"running"}"#,
            r#"{"verb":"resume"}"#,
        ),
    ];
    for (paused, answer, asked) in cases {
        let server = control_stand_in(&paths, &format!("{answer}\n"));
        vf.set_paused(&paths, paused).unwrap();
        assert_eq!(server.join().unwrap().trim_end(), asked);
        std::fs::remove_file(vmkit_apple_vf::control_socket(&paths)).unwrap();
    }
}

#[test]
fn a_refusing_or_misbehaving_vm_process_is_an_error_and_no_process_is_invalid_state() {
    let dir = tempfile::tempdir().unwrap();
    let paths = WorkspacePaths::new(dir.path()).unwrap();
    let vf = machine(Path::new("/unused"));
    let err = vf.set_paused(&paths, true).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidState, "{err:?}");
    assert!(err.message.contains("vm-control.sock"), "{err:?}");
    for (answer, code, says) in [
        (
            "{\"ok\":false,\"error\":{\"code\":\"internal\",\"message\":\"the framework said no\"}}\n",
            ErrorCode::Internal,
            "the framework said no",
        ),
        ("{\"ok\":true,\"state\":\"running\"}\n", ErrorCode::Internal, "not paused"),
        ("{\"ok\":true}\n", ErrorCode::Internal, "incomplete"),
        ("garbage\n", ErrorCode::Internal, "control response"),
        ("", ErrorCode::Internal, "control response"),
    ] {
        let server = control_stand_in(&paths, answer);
        let err = vf.set_paused(&paths, true).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.code, code, "{answer}: {err:?}");
        assert!(err.message.contains(says), "{answer}: {err:?}");
        std::fs::remove_file(vmkit_apple_vf::control_socket(&paths)).unwrap();
    }
}

#[test]
fn the_swift_supervisor_reads_the_plan_and_refuses_without_the_framework() {
    let dir = tempfile::tempdir().unwrap();
    let err = machine(swift_supervisor())
        .launch(&boot_plan(dir.path()))
        .unwrap_err();
    if cfg!(target_os = "linux") {
        // "not available" comes from the driver, after the plan parsed.
        assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
        assert!(
            err.message
                .contains("Virtualization.framework is not available"),
            "{err:?}"
        );
        assert!(!err.message.contains("not a VM plan"), "{err:?}");
    }
    assert!(dir.path().join("vm-plan.json").is_file());
}

#[test]
fn without_the_framework_the_machine_is_unavailable_with_the_remedy() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let err = machine(swift_supervisor()).available().unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(err.message.contains("macOS"), "{err:?}");
}

fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("supervisor");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_running_status_hands_back_the_process_and_silence_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for the framework half: checks its arguments, says running, lives on.
    let running = script(
        dir.path(),
        r#"[ "$1" = vm-host ] && [ -f "$2" ] || exit 3; echo running; exec sleep 30"#,
    );
    let mut launched = machine(&running).launch(&boot_plan(dir.path())).unwrap();
    assert!(
        launched.vmm.try_wait().unwrap().is_none(),
        "the VM process runs"
    );
    launched.shut_down();

    let silent = script(dir.path(), "exit 0");
    let err = machine(&silent).launch(&boot_plan(dir.path())).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.message.contains("exited or hung"), "{err:?}");

    let failing = script(
        dir.path(),
        "echo 'failed the disk is locked'; exec sleep 30",
    );
    let err = machine(&failing)
        .launch(&boot_plan(dir.path()))
        .unwrap_err();
    assert!(err.message.contains("the disk is locked"), "{err:?}");
}

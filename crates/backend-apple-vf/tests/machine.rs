//! The apple-vf machine's launch: the plan it writes is one the real Swift
//! supervisor reads (on Linux it then refuses to boot: no framework), the
//! status handshake, and a supervisor that never says `running`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::swift_supervisor;
use vmkit_apple_vf::{AppleVfBackend, AppleVfMachine, VmPlan};
use vmkit_lifecycle::{BootPlan, Machine, WorkspacePaths};
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
        ]
    }))
    .unwrap();
    let paths = WorkspacePaths::new(dir).unwrap();
    BootPlan {
        config,
        root_disk: paths.disk.clone(),
        paths,
        kernel_args: "root=/dev/vda rw init=/sbin/microagent-init microagent.config=/dev/vdd"
            .into(),
        detached: false,
        nic: None,
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

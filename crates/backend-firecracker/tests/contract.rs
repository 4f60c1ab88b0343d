//! The request bodies the backend builds, and the validator the stand-in
//! uses, checked against Firecracker's swagger file directly.

mod mock;

use std::path::Path;

use mock::swagger::Spec;
use serde_json::json;
use vmkit_firecracker::config;
use vmkit_lifecycle::{BootPlan, WorkspacePaths};
use vmkit_protocol::{Disk, DiskMode, MachineConfig};

fn plan(disks: usize, cpus: u32) -> BootPlan {
    let paths = WorkspacePaths::new(Path::new("/var/lib/m/workspaces/w")).unwrap();
    BootPlan {
        config: MachineConfig {
            disks: (0..disks)
                .map(|i| Disk {
                    name: format!("d{i}"),
                    path: format!("/d/{i}.img"),
                    mountpoint: format!("/mnt/{i}"),
                    mode: if i % 2 == 0 {
                        DiskMode::Ro
                    } else {
                        DiskMode::Rw
                    },
                })
                .collect(),
            ..MachineConfig::new("/k/vmlinux", "/r.ext4", "/var/lib/m", 2048, cpus)
        },
        root_disk: paths.disk.clone(),
        paths,
        kernel_args: "root=/dev/vda rw".into(),
        detached: false,
        nic: None,
        restore: None,
    }
}

#[test]
fn every_body_the_backend_builds_follows_the_contract() {
    let spec = Spec::load();
    for (disks, cpus, tap) in [(0, 1, false), (2, 2, true), (5, 32, false)] {
        let mut plan = plan(disks, cpus);
        if tap {
            plan.nic = Some(vmkit_lifecycle::Nic::Tap {
                name: "ma0123abcd".into(),
                mac: "52:54:00:12:34:56".into(),
            });
        }
        let calls = config::configuration(&plan).unwrap();
        assert_eq!(calls.len(), 5 + disks + usize::from(tap));
        for call in calls.iter().chain([&config::instance_start()]) {
            let body = serde_json::to_vec(&call.body).unwrap();
            assert_eq!(call.method, "PUT");
            spec.check_request("PUT", &call.path, Some(&body))
                .unwrap_or_else(|e| panic!("PUT {} {}: {e}", call.path, call.body));
            assert_eq!(spec.success_status("PUT", &call.path), Some(204));
            // Configuration must come before InstanceStart, which is not.
            assert_eq!(
                spec.pre_boot_only("PUT", &call.path),
                call.path != "/actions",
                "{}",
                call.path
            );
        }
    }
}

#[test]
fn pause_and_resume_follow_the_contract() {
    let spec = Spec::load();
    for paused in [true, false] {
        let call = config::vm_state(paused);
        assert_eq!(call.method, "PATCH");
        let body = serde_json::to_vec(&call.body).unwrap();
        spec.check_request(call.method, &call.path, Some(&body))
            .unwrap_or_else(|e| panic!("{} {} {}: {e}", call.method, call.path, call.body));
        assert_eq!(spec.success_status(call.method, &call.path), Some(204));
        assert!(!spec.pre_boot_only(call.method, &call.path));
    }
    // A state the file does not list is refused.
    assert!(spec
        .check_request("PATCH", "/vm", Some(br#"{"state": "Frozen"}"#))
        .is_err());
}

#[test]
fn snapshot_create_and_restore_follow_the_contract() {
    let spec = Spec::load();
    let create = vmkit_firecracker::snapshot::create(Path::new("/s/w/snapshots/t")).unwrap();
    let mut calls = vec![create];
    let mut restore = plan(2, 1);
    restore.restore = Some("/s/w/snapshots/t".into());
    // The fork's own TAP device replaces the source's.
    restore.nic = Some(vmkit_lifecycle::Nic::Tap {
        name: "ma0fork000".into(),
        mac: "52:54:00:12:34:56".into(),
    });
    calls.extend(
        vmkit_firecracker::snapshot::restore(&restore, Path::new("/s/w/snapshots/t")).unwrap(),
    );
    let sequence: Vec<String> = calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(
        sequence,
        [
            "PUT /snapshot/create",
            "PUT /snapshot/load",
            "PATCH /drives/root",
            "PATCH /drives/disk0",
            "PATCH /drives/disk1",
            "PATCH /drives/config",
            "PATCH /vm",
        ]
    );
    for call in &calls {
        let body = serde_json::to_vec(&call.body).unwrap();
        spec.check_request(call.method, &call.path, Some(&body))
            .unwrap_or_else(|e| panic!("{} {} {}: {e}", call.method, call.path, call.body));
        assert_eq!(spec.success_status(call.method, &call.path), Some(204));
    }
    // Loading is pre-boot only; the drive patches and resume come after.
    assert!(spec.pre_boot_only("PUT", "/snapshot/load"));
    assert!(!spec.pre_boot_only("PATCH", "/drives/root"));
    assert_eq!(
        calls[1].body["vsock_override"]["uds_path"],
        json!(restore.paths.vsock.to_str().unwrap())
    );
    assert_eq!(calls[1].body["resume_vm"], json!(false));
    assert_eq!(
        calls[1].body["network_overrides"],
        json!([{"iface_id": "eth0", "host_dev_name": "ma0fork000"}])
    );
    assert_eq!(
        calls[2].body["path_on_host"],
        json!(restore.root_disk.to_str().unwrap())
    );
}

/// The validator must say no, or the launch tests prove nothing.
#[test]
fn the_validator_refuses_what_firecracker_would() {
    let spec = Spec::load();
    let put = |path: &str, body: serde_json::Value| {
        spec.check_request("PUT", path, Some(body.to_string().as_bytes()))
    };
    let drive = json!({"drive_id": "root", "path_on_host": "/r", "is_root_device": true, "is_read_only": false});
    put("/drives/root", drive.clone()).unwrap();

    let mut unknown = drive.clone();
    unknown["readonly"] = json!(true);
    assert!(put("/drives/root", unknown)
        .unwrap_err()
        .contains("unknown field `readonly`"));
    let mut missing = drive.clone();
    missing.as_object_mut().unwrap().remove("is_root_device");
    assert!(put("/drives/root", missing)
        .unwrap_err()
        .contains("missing field `is_root_device`"));
    let mut wrong_type = drive.clone();
    wrong_type["is_read_only"] = json!("false");
    assert!(put("/drives/root", wrong_type)
        .unwrap_err()
        .contains("expected boolean"));
    let mut bad_enum = drive.clone();
    bad_enum["cache_type"] = json!("WriteThrough");
    assert!(put("/drives/root", bad_enum)
        .unwrap_err()
        .contains("is not one of"));
    assert!(put("/drives/other", drive.clone())
        .unwrap_err()
        .contains("does not match"));

    assert!(put(
        "/machine-config",
        json!({"vcpu_count": 33, "mem_size_mib": 128})
    )
    .unwrap_err()
    .contains("above the maximum"));
    assert!(put(
        "/machine-config",
        json!({"vcpu_count": 2.5, "mem_size_mib": 128})
    )
    .unwrap_err()
    .contains("expected integer"));
    assert!(put("/vsock", json!({"guest_cid": 2, "uds_path": "/v"}))
        .unwrap_err()
        .contains("below the minimum"));
    assert!(put("/actions", json!({"action_type": "Boot"}))
        .unwrap_err()
        .contains("is not one of"));
    assert!(put("/boot-source", json!({"boot_args": "x"}))
        .unwrap_err()
        .contains("missing field `kernel_image_path`"));
    // Nested definitions are followed.
    assert!(put(
        "/drives/root",
        json!({"drive_id": "root", "is_root_device": true, "rate_limiter": {"ops": {"size": 1}}})
    )
    .unwrap_err()
    .contains("missing field `refill_time`"));

    assert!(put("/drive/root", drive.clone())
        .unwrap_err()
        .contains("Invalid request"));
    assert!(spec
        .check_request("DELETE", "/vsock", None)
        .unwrap_err()
        .contains("Invalid request"));
    assert!(spec
        .check_request("PUT", "/vsock", None)
        .unwrap_err()
        .contains("required"));
    assert!(spec
        .check_request("PUT", "/vsock", Some(b"{not json"))
        .unwrap_err()
        .contains("deserializing"));
    assert!(spec
        .check_request("GET", "/", Some(b"{}"))
        .unwrap_err()
        .contains("takes no body"));
    spec.check_request("GET", "/", None).unwrap();
}

#[test]
fn the_error_answer_follows_the_contract() {
    let spec = Spec::load();
    let schema = spec.response_schema("PUT", "/drives/root", 400).unwrap();
    spec.validate(schema, &json!({"fault_message": "x"}), "400", false)
        .unwrap();
    assert!(spec
        .validate(schema, &json!({"message": "x"}), "400", false)
        .is_err());
}

#[test]
fn the_vendored_contract_is_the_reference_one() {
    mock::swagger::check_vendored_copy();
}

//! The QEMU command line and the machine's refusals, without a VM.

use super::*;
use vmkit_lifecycle::WorkspacePaths;
use vmkit_protocol::Disk;

/// Splits a QEMU option string the way QEMU does: on single commas,
/// with `,,` a literal comma.
fn qemu_options(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                out.last_mut().unwrap().push(',');
            } else {
                out.push(String::new());
            }
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

fn option<'a>(options: &'a [String], key: &str) -> Option<&'a str> {
    options
        .iter()
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn every_path_in_an_option_string_survives_commas() {
    let dir = Path::new("/tmp/a,b/ws,1");
    let paths = WorkspacePaths::new(dir).unwrap();
    let disk = "/data/x,y.img";
    let plan = BootPlan {
        config: MachineConfig {
            disks: vec![Disk {
                name: "d".into(),
                path: disk.into(),
                mountpoint: "/d".into(),
                mode: DiskMode::Ro,
            }],
            ..MachineConfig::new("/k,ernel", paths.disk.to_string_lossy(), "/tmp/a,b", 128, 1)
        },
        paths: paths.clone(),
        root_disk: paths.disk.clone(),
        kernel_args: String::new(),
        detached: false,
        nic: None,
        restore: None,
    };
    let vhost = dir.join("vhost.sock");
    let args = QemuMachine::new().qemu_args(&plan, Transport::Vsock, &vhost);
    let values = |flag: &str| -> Vec<Vec<String>> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| qemu_options(&w[1]))
            .collect()
    };
    let files: Vec<String> = values("-drive")
        .iter()
        .map(|o| option(o, "file").unwrap().to_owned())
        .collect();
    assert_eq!(
        files,
        [
            paths.disk.to_string_lossy().into_owned(),
            disk.to_owned(),
            paths.config_disk.to_string_lossy().into_owned()
        ]
    );
    let sockets: Vec<String> = values("-chardev")
        .iter()
        .filter_map(|o| option(o, "path").map(str::to_owned))
        .collect();
    assert_eq!(sockets, [vhost.to_string_lossy().into_owned()]);
    // -kernel takes a plain path.
    let kernel = args.iter().position(|a| a == "-kernel").unwrap();
    assert_eq!(args[kernel + 1], "/k,ernel");
}

#[test]
fn a_memory_snapshot_of_a_vm_with_volumes_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let paths = WorkspacePaths::new(dir.path()).unwrap();
    let config = MachineConfig {
        volumes: vec![vmkit_protocol::Volume {
            host_path: "/srv/data".into(),
            guest_path: "/data".into(),
            read_only: false,
        }],
        ..MachineConfig::new("/k", "/r", "/s", 256, 1)
    };
    let err = QemuMachine::new()
        .save_state(&config, &paths, dir.path())
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
    assert!(err.message.contains("vhost-user-fs"), "{}", err.message);
    assert!(err.message.contains("--disk-only"), "{}", err.message);
}

#[test]
fn a_datagram_nic_is_qemus_dgram_netdev_between_the_two_sockets() {
    let nic = Nic::Datagram {
        socket: "/w,1/n.sock".into(),
        vmm_socket: "/w,1/nv.sock".into(),
        mac: "52:54:00:12:34:56".into(),
    };
    let args = nic_args(Some(&nic));
    assert_eq!(args[0], "-netdev");
    let netdev = qemu_options(&args[1]);
    assert_eq!(netdev[0], "dgram");
    assert_eq!(option(&netdev, "local.path"), Some("/w,1/nv.sock"));
    assert_eq!(option(&netdev, "remote.path"), Some("/w,1/n.sock"));
    assert_eq!(option(&netdev, "local.type"), Some("unix"));
    assert_eq!(
        args[3],
        "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"
    );
}

//! The API calls that configure and start one Firecracker microVM, built
//! from a [`BootPlan`] and checked once, up front, before any process runs.
//!
//! Each body type mirrors a definition in Firecracker's swagger file
//! (`firecracker.yaml`), field for field, carrying only the fields
//! microagent sets; the tests check every body against that file.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use vmkit_lifecycle::BootPlan;
use vmkit_protocol::{DiskMode, ProtocolError};

/// The guest's vsock context ID. Each Firecracker process has its own
/// vsock device and Unix socket, so every guest can use the same one
/// (2 is the host; 3 is the first guest CID).
pub const GUEST_CID: u32 = 3;
/// Firecracker's vCPU range (`MachineConfiguration.vcpu_count`).
pub const MAX_VCPUS: u32 = 32;
/// How long configuring calls may take.
pub const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `InstanceStart` may take: Firecracker loads the kernel and
/// sets up memory and devices before answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `MachineConfiguration`: vCPUs and memory. SMT, dirty-page tracking,
/// CPU templates and huge pages keep Firecracker's defaults (off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineConfiguration {
    /// Number of vCPUs, 1 to [`MAX_VCPUS`].
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
}

/// `BootSource`: the kernel and its command line (no initrd: the root
/// disk carries the guest init).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    /// Host path of the uncompressed `vmlinux`.
    pub kernel_image_path: String,
    /// The kernel command line; Firecracker appends its
    /// `virtio_mmio.device=` entries to it.
    pub boot_args: String,
}

/// `Drive`: one virtio-block device backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    /// The drive's id; also the last segment of its `/drives/{drive_id}` path.
    pub drive_id: String,
    /// Host path of the image.
    pub path_on_host: String,
    /// Whether this is the root device (Firecracker puts it first).
    pub is_root_device: bool,
    /// Whether the guest sees it read-only.
    pub is_read_only: bool,
}

/// `Vsock`: the hybrid-vsock device (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    /// The guest's CID ([`GUEST_CID`]).
    pub guest_cid: u32,
    /// The Unix socket Firecracker listens on for host-initiated
    /// connections; guest-initiated ones go to `<uds_path>_<port>`.
    pub uds_path: String,
}

/// `NetworkInterface`: the guest NIC on a TAP device, whose other end the
/// VM's network helper reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterface {
    /// The interface's id; also the last segment of its API path.
    pub iface_id: String,
    /// The host TAP device.
    pub host_dev_name: String,
    /// The guest NIC's MAC address.
    pub guest_mac: String,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionType {
    /// Boots the configured microVM.
    InstanceStart,
}

/// `InstanceActionInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

/// `Vm.state`: the run state `PATCH /vm` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VmState {
    /// vCPUs stopped.
    Paused,
    /// vCPUs running.
    Resumed,
}

/// `Vm`: the body of `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Vm {
    /// The run state wanted.
    pub state: VmState,
}

/// One API request: a `PUT` of the boot sequence, or a `PATCH` to a
/// running VM.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCall {
    /// `PUT` or `PATCH`.
    pub method: &'static str,
    /// The request path, e.g. `/drives/root`.
    pub path: String,
    /// The JSON body.
    pub body: serde_json::Value,
    /// How long Firecracker may take to answer.
    pub timeout: Duration,
}

impl ApiCall {
    pub(crate) fn new(path: impl Into<String>, body: impl Serialize, timeout: Duration) -> Self {
        ApiCall {
            method: "PUT",
            path: path.into(),
            // These are plain structs of strings, numbers and booleans;
            // serializing them to a Value cannot fail.
            body: serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
            timeout,
        }
    }
}

/// The drive id of the root disk.
pub const ROOT_DRIVE: &str = "root";
/// The drive id of the config disk.
pub const CONFIG_DRIVE: &str = "config";
/// The guest NIC's interface id.
pub const IFACE_ID: &str = "eth0";

/// The drive id of extra disk `i` (Firecracker allows letters, digits
/// and `_` in ids; the user's disk names may hold `-`, so they are not used).
pub fn disk_drive_id(i: usize) -> String {
    format!("disk{i}")
}

/// The kernel command line: Firecracker's base (console, reboot and panic
/// behaviour), the guest init's cue to end the VM by reboot (Firecracker has
/// no ACPI power-off), then microagent's arguments, then the user's
/// `kernelArgs`.
pub fn boot_args(plan: &BootPlan) -> String {
    let mut line = vmkit_kernel::boot::firecracker_cmdline_base(true);
    line.push(' ');
    line.push_str(vmkit_channel::CMDLINE_EXIT_BY_REBOOT);
    if let Some(arg) = plan
        .nic
        .as_ref()
        .and_then(vmkit_lifecycle::Nic::guest_kernel_arg)
    {
        line.push(' ');
        line.push_str(arg);
    }
    for part in [
        Some(plan.kernel_args.as_str()),
        plan.config.kernel_args.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        let part = part.trim();
        if !part.is_empty() {
            line.push(' ');
            line.push_str(part);
        }
    }
    line
}

/// Checks what Firecracker would refuse beyond what the protocol already
/// validates (its vCPU limit is lower), with a message that names the
/// request field rather than an API path.
pub fn validate(config: &vmkit_protocol::MachineConfig) -> Result<(), ProtocolError> {
    if !(1..=MAX_VCPUS).contains(&config.cpu_count) {
        return Err(ProtocolError::invalid(format!(
            "config.cpuCount {} is out of range: firecracker runs 1 to {MAX_VCPUS} vCPUs",
            config.cpu_count
        )));
    }
    refuse_volumes(&config.volumes)
}

/// Firecracker has no virtio-fs: any volume is refused, with the way out.
pub fn refuse_volumes(volumes: &[vmkit_protocol::Volume]) -> Result<(), ProtocolError> {
    if let Some(v) = volumes.first() {
        return Err(ProtocolError::invalid(format!(
            "the firecracker backend has no virtio-fs, so host folders cannot be volumes \
             (-v {}:{}); put the files on an ext4 image and attach it with \
             --disk NAME=IMAGE:{}:rw, or use --backend qemu",
            v.host_path, v.guest_path, v.guest_path
        )));
    }
    Ok(())
}

/// The configuring calls for `plan`, in the order they must be made:
/// machine, kernel, drives (root, the extra disks in request order, the
/// config disk), vsock, the NIC if any. Drive order is device order: Firecracker lays out
/// its virtio-mmio devices in the order the drives were added, with the
/// root device moved first, so the guest sees `/dev/vda` root, `/dev/vdb`
/// on for the extra disks, and the config disk last, as the shared
/// lifecycle's boot spec expects.
pub fn configuration(plan: &BootPlan) -> Result<Vec<ApiCall>, ProtocolError> {
    let config = &plan.config;
    validate(config)?;
    let mut calls = vec![
        ApiCall::new(
            "/machine-config",
            MachineConfiguration {
                vcpu_count: config.cpu_count,
                mem_size_mib: config.memory_mib,
            },
            CONFIGURE_TIMEOUT,
        ),
        ApiCall::new(
            "/boot-source",
            BootSource {
                kernel_image_path: utf8(Path::new(&config.kernel_path), "config.kernelPath")?,
                boot_args: boot_args(plan),
            },
            CONFIGURE_TIMEOUT,
        ),
    ];
    let mut drive = |id: String, path: &Path, root: bool, read_only: bool, field: &str| {
        let body = Drive {
            drive_id: id.clone(),
            path_on_host: utf8(path, field)?,
            is_root_device: root,
            is_read_only: read_only,
        };
        calls.push(ApiCall::new(
            format!("/drives/{id}"),
            body,
            CONFIGURE_TIMEOUT,
        ));
        Ok::<_, ProtocolError>(())
    };
    drive(
        ROOT_DRIVE.into(),
        &plan.root_disk,
        true,
        false,
        "the root disk",
    )?;
    for (i, d) in config.disks.iter().enumerate() {
        drive(
            disk_drive_id(i),
            Path::new(&d.path),
            false,
            d.mode == DiskMode::Ro,
            &format!("config.disks[{i}].path"),
        )?;
    }
    drive(
        CONFIG_DRIVE.into(),
        &plan.paths.config_disk,
        false,
        true,
        "the config disk",
    )?;
    calls.push(ApiCall::new(
        "/vsock",
        Vsock {
            guest_cid: GUEST_CID,
            uds_path: utf8(&plan.paths.vsock, "the vsock socket")?,
        },
        CONFIGURE_TIMEOUT,
    ));
    match &plan.nic {
        Some(vmkit_lifecycle::Nic::Tap { name, mac }) => calls.push(ApiCall::new(
            "/network-interfaces/eth0",
            NetworkInterface {
                iface_id: IFACE_ID.into(),
                host_dev_name: name.clone(),
                guest_mac: mac.clone(),
            },
            CONFIGURE_TIMEOUT,
        )),
        Some(other) => {
            return Err(ProtocolError::invalid(format!(
                "firecracker attaches a NIC only through a TAP device, not {other:?}"
            )))
        }
        None => {}
    }
    Ok(calls)
}

/// The call that boots the configured VM.
pub fn instance_start() -> ApiCall {
    ApiCall::new(
        "/actions",
        InstanceActionInfo {
            action_type: ActionType::InstanceStart,
        },
        START_TIMEOUT,
    )
}

/// The call that pauses (or resumes) a running VM: `PATCH /vm`.
pub fn vm_state(paused: bool) -> ApiCall {
    let state = if paused {
        VmState::Paused
    } else {
        VmState::Resumed
    };
    ApiCall {
        method: "PATCH",
        ..ApiCall::new("/vm", Vm { state }, CONFIGURE_TIMEOUT)
    }
}

/// Firecracker's `--id`: letters, digits and `-`, 1 to 64 characters
/// (its own rule); anything else in the workspace name becomes `-`.
pub fn instance_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    if id.is_empty() {
        "microagent".into()
    } else {
        id
    }
}

/// JSON strings are UTF-8, so a path that is not cannot be sent.
fn utf8(path: &Path, what: &str) -> Result<String, ProtocolError> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        ProtocolError::invalid(format!(
            "{what} {} is not valid UTF-8, which the firecracker API cannot carry",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmkit_lifecycle::WorkspacePaths;
    use vmkit_protocol::{Disk, MachineConfig};

    fn plan(disks: Vec<Disk>) -> BootPlan {
        let paths = WorkspacePaths::new(Path::new("/s/workspaces/w1")).unwrap();
        BootPlan {
            config: MachineConfig {
                disks,
                kernel_args: Some("quiet loglevel=3".into()),
                ..MachineConfig::new("/k/vmlinux", "/s/workspaces/w1/rootfs.ext4", "/s", 512, 2)
            },
            root_disk: paths.disk.clone(),
            paths,
            kernel_args: "root=/dev/vda rw init=/sbin/microagent-init".into(),
            detached: false,
            nic: None,
            restore: None,
        }
    }

    fn disk(name: &str, mode: DiskMode) -> Disk {
        Disk {
            name: name.into(),
            path: format!("/d/{name}.img"),
            mountpoint: format!("/mnt/{name}"),
            mode,
        }
    }

    #[test]
    fn drives_go_root_then_disks_in_order_then_config() {
        let calls = configuration(&plan(vec![
            disk("a", DiskMode::Ro),
            disk("b", DiskMode::Rw),
        ]))
        .unwrap();
        let paths: Vec<_> = calls.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/machine-config",
                "/boot-source",
                "/drives/root",
                "/drives/disk0",
                "/drives/disk1",
                "/drives/config",
                "/vsock"
            ]
        );
        let ro: Vec<_> = calls[2..6]
            .iter()
            .map(|c| {
                (
                    c.body["is_root_device"].clone(),
                    c.body["is_read_only"].clone(),
                )
            })
            .collect();
        assert_eq!(
            ro,
            [
                (true.into(), false.into()),
                (false.into(), true.into()),
                (false.into(), false.into()),
                (false.into(), true.into())
            ]
        );
        assert_eq!(calls[3].body["path_on_host"], "/d/a.img");
        assert_eq!(calls[6].body["uds_path"], "/s/workspaces/w1/v.sock");
        assert_eq!(calls[6].body["guest_cid"], 3);
    }

    #[test]
    fn boot_args_are_base_then_ours_then_the_users() {
        assert_eq!(
            boot_args(&plan(vec![])),
            format!(
                "{} microagent.exit=reboot root=/dev/vda rw init=/sbin/microagent-init quiet loglevel=3",
                vmkit_kernel::boot::firecracker_cmdline_base(true)
            )
        );
        // With a NIC, the guest's TSO is off (no offload super-frames for
        // the stack behind the TAP; partial checksums it completes).
        let mut p = plan(vec![]);
        p.nic = Some(vmkit_lifecycle::Nic::Tap {
            name: "ma0".into(),
            mac: "52:54:00:12:34:56".into(),
        });
        assert!(
            boot_args(&p).contains(" virtio_net.gso=0 "),
            "{}",
            boot_args(&p)
        );
        assert!(!boot_args(&plan(vec![])).contains("virtio_net"));
    }

    #[test]
    fn out_of_range_machines_are_refused_up_front() {
        let mut p = plan(vec![]);
        p.config.cpu_count = 33;
        let e = configuration(&p).unwrap_err();
        assert!(e.message.contains("cpuCount 33"), "{e}");
        p.config.cpu_count = 0;
        assert!(configuration(&p).is_err());
        p.config.cpu_count = 32;
        assert!(configuration(&p).is_ok());
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let mut p = plan(vec![]);
        p.root_disk = Path::new(std::ffi::OsStr::from_bytes(b"/s/\xff.ext4")).to_owned();
        let e = configuration(&p).unwrap_err();
        assert!(e.message.contains("root disk"), "{e}");
    }

    #[test]
    fn instance_ids_follow_firecrackers_rule() {
        assert_eq!(instance_id("my_ws.1"), "my-ws-1");
        assert_eq!(instance_id(""), "microagent");
        assert_eq!(instance_id(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn start_is_instance_start() {
        let call = instance_start();
        assert_eq!(call.path, "/actions");
        assert_eq!(
            call.body,
            serde_json::json!({"action_type": "InstanceStart"})
        );
    }
}

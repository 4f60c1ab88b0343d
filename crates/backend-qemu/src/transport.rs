//! How a QEMU guest reaches the host: the helper process that serves the
//! hybrid-vsock Unix-socket convention on the workspace's `v.sock`, and the
//! QEMU devices and memory backend that go with it.
//!
//! - [`Transport::Serial`] (the default): a virtio-serial port on a chardev
//!   socket, streams multiplexed over it, served by microagent's own relay
//!   (`microagent channel-relay`, [`vmkit_channel::relay`]). QEMU can
//!   migrate such a VM, so it can be paused to a snapshot and forked. Guest
//!   RAM is a shared file in the workspace folder (`memory-backend-file`),
//!   so a snapshot leaves it in place (`x-ignore-shared`) and a fork is a
//!   sparse copy of it.
//! - [`Transport::Vsock`]: `vhost-user-vsock-device` served by
//!   `vhost-device-vsock`: real AF_VSOCK in the guest, as on Firecracker and
//!   Apple VF, but QEMU refuses to migrate it. Chosen with
//!   `MICROAGENT_QEMU_TRANSPORT=vsock`; kept so the guest's vsock path is
//!   exercised by tests on this host.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmkit_host::{find_in_path, Tool};
use vmkit_protocol::{ErrorCode, ProtocolError};

/// The environment variable that picks the transport (`serial`, `vsock`).
pub const TRANSPORT_ENV: &str = "MICROAGENT_QEMU_TRANSPORT";
/// The environment variable naming the relay program (default: the
/// running executable, i.e. `microagent`).
pub const RELAY_ENV: &str = "MICROAGENT_CHANNEL_RELAY";
/// The relay's subcommand of `microagent`.
pub const RELAY_SUBCOMMAND: &str = "channel-relay";
/// The guest's RAM file in a snapshot folder (in the workspace folder it
/// is `WorkspacePaths::memory`).
pub const MEMORY_FILE: &str = "memory.ram";
/// The guest's vsock context ID (vsock transport). Each VM has its own
/// vhost-device-vsock, so every guest can use the same one.
const GUEST_CID: u32 = 3;

/// The host<->guest transport of a QEMU VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// virtio-serial with multiplexed streams: migratable.
    Serial,
    /// vhost-user-vsock: real AF_VSOCK, not migratable.
    Vsock,
}

impl Transport {
    /// From [`TRANSPORT_ENV`]; serial when unset.
    pub fn from_env() -> Result<Transport, ProtocolError> {
        match std::env::var(TRANSPORT_ENV).as_deref() {
            Err(_) | Ok("") | Ok("serial") => Ok(Transport::Serial),
            Ok("vsock") => Ok(Transport::Vsock),
            Ok(other) => Err(ProtocolError::invalid(format!(
                "{TRANSPORT_ENV}={other:?}: expected serial or vsock"
            ))),
        }
    }

    /// The helper's socket in the workspace folder (QEMU's chardev).
    pub fn helper_socket(self, dir: &Path) -> PathBuf {
        dir.join(match self {
            Transport::Serial => "serial.sock",
            Transport::Vsock => "vhost.sock",
        })
    }

    /// The guest RAM backend (`-object` value); QEMU's `id=mem`.
    pub fn memory_backend(self, file: &Path, size: &str) -> String {
        match self {
            // vhost-user maps guest memory: a shared memfd.
            Transport::Vsock => format!("memory-backend-memfd,id=mem,size={size},share=on"),
            Transport::Serial => format!(
                "memory-backend-file,id=mem,size={size},share=on,mem-path={}",
                crate::machine::qemu_escape(file)
            ),
        }
    }

    /// The devices that carry the channel: virtio-mmio ones (`-M microvm`)
    /// or, with `pci`, virtio-pci ones (`-M virt` for arm64 guests).
    pub fn device_args(self, helper_socket: &Path, pci: bool) -> Vec<String> {
        let bus = if pci { "pci" } else { "device" };
        let chardev = |id: &str| {
            format!(
                "socket,id={id},path={}",
                crate::machine::qemu_escape(helper_socket)
            )
        };
        match self {
            Transport::Vsock => vec![
                "-chardev".into(),
                chardev("vsock"),
                "-device".into(),
                format!("vhost-user-vsock-{bus},chardev=vsock"),
            ],
            Transport::Serial => vec![
                "-device".into(),
                format!("virtio-serial-{bus},max_ports=2"),
                "-chardev".into(),
                chardev("channel"),
                "-device".into(),
                format!(
                    "virtserialport,chardev=channel,name={}",
                    vmkit_channel::mux::SERIAL_PORT_NAME
                ),
            ],
        }
    }

    /// The guest's part of the kernel command line.
    pub fn kernel_arg(self) -> String {
        let name = match self {
            Transport::Serial => "serial",
            Transport::Vsock => "vsock",
        };
        format!("{}={name}", vmkit_channel::mux::CMDLINE_TRANSPORT_KEY)
    }

    /// Whether this host has what the transport needs.
    pub fn available(self) -> Result<(), ProtocolError> {
        match self {
            Transport::Vsock => tool(
                Tool::VhostDeviceVsock,
                "install it (cargo install --locked vhost-device-vsock)",
            )
            .map(|_| ()),
            Transport::Serial => relay_program().map(|_| ()),
        }
    }

    /// What the helper is called in messages.
    pub fn helper_name(self) -> &'static str {
        match self {
            Transport::Vsock => "vhost-device-vsock",
            Transport::Serial => "the channel relay",
        }
    }

    /// The helper's command: it listens on `socket` (QEMU's chardev) and
    /// serves the hybrid-vsock convention on `uds` (the workspace's
    /// `v.sock`).
    pub fn helper_command(self, socket: &Path, uds: &Path) -> Result<Command, ProtocolError> {
        Ok(match self {
            Transport::Vsock => {
                let mut c = Command::new(tool(
                    Tool::VhostDeviceVsock,
                    "install it (cargo install --locked vhost-device-vsock)",
                )?);
                // Separate flags, not `--vm key=value,...`: a path may hold
                // a comma.
                c.arg("--guest-cid")
                    .arg(GUEST_CID.to_string())
                    .arg("--socket")
                    .arg(socket)
                    .arg("--uds-path")
                    .arg(uds);
                c
            }
            Transport::Serial => {
                let mut c = Command::new(relay_program()?);
                c.arg(RELAY_SUBCOMMAND)
                    .arg("--serial")
                    .arg(socket)
                    .arg("--uds")
                    .arg(uds);
                c
            }
        })
    }
}

/// The program that serves [`RELAY_SUBCOMMAND`].
fn relay_program() -> Result<PathBuf, ProtocolError> {
    if let Some(p) = std::env::var_os(RELAY_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| internal(format!("finding microagent: {e}")))?;
    if exe.file_name().is_some_and(|n| n == "microagent") {
        return Ok(exe);
    }
    find_in_path("microagent").ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::Unavailable,
            format!("the QEMU channel relay (`microagent {RELAY_SUBCOMMAND}`) was not found: put microagent in PATH or set {RELAY_ENV}"),
        )
    })
}

pub(crate) fn tool(tool: Tool, remedy: &str) -> Result<PathBuf, ProtocolError> {
    find_in_path(tool.program()).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::Unavailable,
            format!("{} not found in PATH; {remedy}", tool.program()),
        )
    })
}

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

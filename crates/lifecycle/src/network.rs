//! The guest's network, lifecycle side: checks a config's rules and
//! published ports before anything is created, and at each boot starts the
//! VM's `microagent-net` helper (the userspace stack behind the NIC, and
//! the published-port forwarder), waits for its `ready` line, and tells
//! the VMM (which NIC) and the guest init (which addresses, which
//! forwards) what it needs. The helper is supervised like the VMM: its pid
//! and start time are recorded with the other helpers, so every stop and
//! failure path, and `gc`, end it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vmkit_channel::{GuestNetwork, PublishSpec, DEFAULT_FORWARD_PORT};
use vmkit_net::{Frontend, NetConfig, PublishConfig, Rule};
use vmkit_protocol::{
    BackendKind, ErrorCode, MachineConfig, Network, NetworkMode, ProtocolError, PublishedPort,
};

use crate::process::spawn_supervised_passing;
use crate::vmm_files::{clone_log, spawn_log_relay};
use crate::{Supervision, WorkspacePaths};

/// The helper binary's name.
pub const HELPER: &str = "microagent-net";
/// The descriptor the helper finds its stream socket on.
const LISTEN_FD: std::os::fd::RawFd = 3;
/// How long the helper may take to say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How the guest's NIC reaches the VM's stack; the backend turns it into
/// its own device configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// A Unix stream socket the helper listens on (QEMU `-netdev stream`).
    Stream {
        /// The socket.
        socket: PathBuf,
        /// The guest NIC's MAC address.
        mac: String,
    },
    /// A TAP device whose frames the helper reads and writes (Firecracker).
    Tap {
        /// The TAP interface's name.
        name: String,
        /// The guest NIC's MAC address.
        mac: String,
    },
    /// A Unix datagram socket the helper has bound, one frame per datagram
    /// (Apple VF's `VZFileHandleNetworkDeviceAttachment`): the VMM binds
    /// `vmm_socket` and connects it to `socket`.
    Datagram {
        /// The helper's socket.
        socket: PathBuf,
        /// Where the VMM binds its end.
        vmm_socket: PathBuf,
        /// The guest NIC's MAC address.
        mac: String,
    },
}

impl Nic {
    /// What the guest kernel must be told for this NIC, if anything. A TAP
    /// VMM (Firecracker; QEMU with a TAP) offers checksum and segmentation
    /// offload: the helper completes partial checksums, but it cannot take
    /// 64 KiB segmentation super-frames, so the guest's virtio-net driver
    /// starts with TSO off (`gso=0`; software GSO still segments).
    pub fn guest_kernel_arg(&self) -> Option<&'static str> {
        match self {
            Nic::Tap { .. } => Some("virtio_net.gso=0"),
            Nic::Stream { .. } | Nic::Datagram { .. } => None,
        }
    }
}

/// `MICROAGENT_QEMU_NIC=tap`: QEMU opens the helper's TAP, as Firecracker
/// does, instead of the stream socket (a host that wants a TAP; and the TAP
/// path tested with a real VMM where Firecracker cannot run).
pub const QEMU_NIC_ENV: &str = "MICROAGENT_QEMU_NIC";

/// What a boot gets from the network setup.
#[derive(Debug, Default)]
pub(crate) struct NetworkBoot {
    /// The NIC for the VMM; `None` with mode `none`.
    pub nic: Option<Nic>,
    /// eth0's configuration for the boot spec.
    pub guest: Option<GuestNetwork>,
    /// Published ports for the boot spec.
    pub publish: Option<PublishSpec>,
    /// The running helper and its log relay, if a helper was needed.
    pub helpers: Vec<Child>,
    /// The helper's `ready`, to wait for once the VMM is starting.
    pub ready: Option<HelperReady>,
}

/// Checks every `allow`/`deny` rule with the stack's own parser and that
/// every published host port can be listened on now, so bad input is
/// refused before a workspace exists. Errors name the flag and value.
pub fn validate(network: &Network, publish: &[PublishedPort]) -> Result<(), ProtocolError> {
    network.validate()?;
    vmkit_protocol::validate_published(publish)?;
    policy(network)?;
    vmkit_net::publish::check_available(publish).map_err(|e| ProtocolError::invalid(e.to_string()))
}

fn policy(net: &Network) -> Result<vmkit_net::Policy, ProtocolError> {
    let parse = |flag: &str, rules: &[String]| -> Result<Vec<Rule>, ProtocolError> {
        rules
            .iter()
            .map(|r| Rule::parse(r).map_err(|e| ProtocolError::invalid(format!("--{flag}: {e}"))))
            .collect()
    };
    Ok(vmkit_net::Policy {
        mode: match net.mode {
            NetworkMode::Allowlist => vmkit_net::Mode::Allowlist,
            NetworkMode::Public | NetworkMode::None => vmkit_net::Mode::Public,
        },
        allow: parse("allow", &net.allow)?,
        deny: parse("deny", &net.deny)?,
        limits: vmkit_net::Limits::default(),
    })
}

/// Starts the helper for one boot of `config` (none is needed with mode
/// `none` and nothing published) and returns what the VMM and the guest
/// init need. On error nothing is left running.
pub(crate) fn start(
    config: &MachineConfig,
    paths: &WorkspacePaths,
    backend: BackendKind,
    supervision: Supervision,
) -> Result<NetworkBoot, ProtocolError> {
    let with_nic = config.network.mode != NetworkMode::None;
    if !with_nic && config.publish.is_empty() {
        return Ok(NetworkBoot::default());
    }
    let mut command = Command::new(find_helper()?);
    let mut boot = NetworkBoot::default();
    if with_nic {
        let frontend = match backend {
            BackendKind::Firecracker => Frontend::Tap {
                name: tap_name(&paths.dir),
            },
            BackendKind::AppleVf => Frontend::Datagram {
                path: paths.net_socket.clone(),
            },
            BackendKind::Qemu if std::env::var(QEMU_NIC_ENV).as_deref() == Ok("tap") => {
                Frontend::Tap {
                    name: tap_name(&paths.dir),
                }
            }
            BackendKind::Qemu => Frontend::Stream {
                path: paths.net_socket.clone(),
            },
        };
        let _ = std::fs::remove_file(&paths.net_socket);
        let _ = std::fs::remove_file(&paths.net_vmm_socket);
        let mut net = NetConfig::new(frontend.clone());
        net.policy = policy(&config.network)?;
        net.audit_path = Some(paths.egress_log.clone());
        let mac = net.guest_mac.to_string();
        boot.nic = Some(match frontend {
            Frontend::Tap { name } => Nic::Tap { name, mac },
            Frontend::Datagram { path } => Nic::Datagram {
                socket: path,
                vmm_socket: paths.net_vmm_socket.clone(),
                mac,
            },
            Frontend::Stream { .. } => Nic::Stream {
                socket: paths.net_socket.clone(),
                mac,
            },
        });
        boot.guest = Some(guest_network(&net));
        write_json(&paths.net_config, &net)?;
        command.arg("--config").arg(&paths.net_config);
    }
    if !config.publish.is_empty() {
        let publish = PublishConfig {
            vsock_path: paths.vsock.clone(),
            forward_port: DEFAULT_FORWARD_PORT,
            ports: config.publish.clone(),
        };
        write_json(&paths.publish_config, &publish)?;
        command.arg("--publish").arg(&paths.publish_config);
        boot.publish = Some(PublishSpec {
            port: DEFAULT_FORWARD_PORT,
            guest_ports: config.publish.iter().map(|p| p.guest_port).collect(),
        });
    }
    // The stream socket is bound here, not by the helper, and handed to
    // it: the VMM can connect at once (its connection waits in the
    // backlog), so the helper starts while the VMM does rather than before.
    let listener = match &boot.nic {
        Some(Nic::Stream { socket, .. }) => {
            let l = std::os::unix::net::UnixListener::bind(socket)
                .map_err(|e| internal(format!("binding {}: {e}", socket.display())))?;
            command.arg("--listen-fd").arg(LISTEN_FD.to_string());
            Some(l)
        }
        _ => None,
    };
    // Its warnings (denied flows) are the guest's to provoke: the log is
    // capped like the VMM's.
    let (mut relay, log) = spawn_log_relay(&paths.net_log, supervision)?;
    let spawned = spawn_supervised_passing(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(clone_log(&log)?),
        supervision,
        listener
            .as_ref()
            .map(|l| (std::os::fd::AsFd::as_fd(l), LISTEN_FD))
            .as_slice(),
    );
    drop(log);
    drop(listener);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            kill_child(&mut relay);
            return Err(internal(format!("starting {HELPER}: {e}")));
        }
    };
    let ready = HelperReady::watch(&mut child, paths.net_log.clone());
    boot.helpers = vec![child, relay];
    if matches!(boot.nic, Some(Nic::Tap { .. } | Nic::Datagram { .. })) {
        // The helper makes these frontends itself, and the VMM must find
        // them when it starts: Firecracker would create a TAP of its own
        // (and the helper's would then be busy), Apple VF's socket would
        // have nothing to connect to. So the VMM waits for `ready`.
        if let Err(e) = ready.wait(&mut boot.helpers) {
            for h in &mut boot.helpers {
                kill_child(h);
            }
            return Err(e);
        }
    } else {
        boot.ready = Some(ready);
    }
    Ok(boot)
}

/// The helper's `ready` line, read by a thread while the VMM starts.
#[derive(Debug)]
pub(crate) struct HelperReady {
    pid: u32,
    line: mpsc::Receiver<std::io::Result<String>>,
    log: PathBuf,
}

impl HelperReady {
    fn watch(child: &mut Child, log: PathBuf) -> HelperReady {
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        HelperReady {
            pid: child.id(),
            line: rx,
            log,
        }
    }

    /// Waits for `ready` (its socket and published ports are up by then),
    /// or its exit, or the timeout. The helper is one of `helpers`; on
    /// error the caller ends them all.
    pub(crate) fn wait(self, helpers: &mut [Child]) -> Result<(), ProtocolError> {
        match self.line.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) if line == "ready\n" => Ok(()),
            Ok(Ok(line)) if line.is_empty() => {
                let status = helpers
                    .iter_mut()
                    .find(|c| c.id() == self.pid)
                    .and_then(|c| c.wait().ok())
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                Err(refused(format!(
                    "{HELPER} exited before it was ready ({status}): {}",
                    last_line(&self.log)
                )))
            }
            Ok(Ok(line)) => Err(internal(format!("{HELPER} said {line:?} instead of ready"))),
            Ok(Err(e)) => Err(internal(format!("reading {HELPER}'s stdout: {e}"))),
            Err(_) => Err(internal(format!(
                "{HELPER} was not ready within {}s",
                READY_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Kills and reaps a helper (or its relay) that must not outlive a failed
/// start.
pub(crate) fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The helper's own message (it writes one line to stderr, the VMM log,
/// before exiting 125), so a port taken since `create` is named.
fn last_line(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(2048)..]).into_owned();
    text.lines()
        .rev()
        .find(|l| l.starts_with(HELPER))
        .unwrap_or("see net.log in the workspace")
        .to_owned()
}

/// Removes the workspace's TAP (Firecracker) if a helper that was killed
/// outright left it behind; the helper removes it itself on SIGTERM.
pub(crate) fn remove_leftover_tap(paths: &WorkspacePaths) {
    vmkit_net::tap::remove_leftover(&tap_name(&paths.dir));
}

/// A TAP name unique to the workspace folder and at most 15 bytes.
fn tap_name(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    format!("ma{:08x}", h.finish() as u32)
}

/// Finds `microagent-net`: `$MICROAGENT_NET`, else beside the running
/// executable, else the install locations, else `PATH`.
pub fn find_helper() -> Result<PathBuf, ProtocolError> {
    if let Some(p) = std::env::var_os("MICROAGENT_NET") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(unavailable(format!(
                "MICROAGENT_NET={} is not a file",
                p.display()
            )))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(HELPER)));
    let candidates = beside.into_iter().chain([
        PathBuf::from("/usr/local/lib/microagent").join(HELPER),
        PathBuf::from("/usr/lib/microagent").join(HELPER),
    ]);
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    vmkit_host::find_in_path(HELPER).ok_or_else(|| {
        unavailable(format!(
            "{HELPER} (the VM network helper) was not found beside microagent or in PATH; build it with `cargo build --release -p vmkit-net` or set MICROAGENT_NET"
        ))
    })
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), ProtocolError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| internal(e.to_string()))?;
    std::fs::write(path, json).map_err(|e| internal(format!("writing {}: {e}", path.display())))
}

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

fn unavailable(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Unavailable, message)
}

fn refused(message: String) -> ProtocolError {
    ProtocolError::invalid(message)
}

/// How the guest init configures the NIC for `net`.
fn guest_network(net: &NetConfig) -> GuestNetwork {
    GuestNetwork::behind_gateway(
        net.guest_ip,
        net.prefix_len,
        net.gateway_ip,
        u32::from(net.mtu),
    )
}

/// The guest side of every workspace network (the helper's default
/// addresses): what root disks are built for, so that the guest init finds
/// `/etc/resolv.conf` and `/etc/hosts` already written.
pub fn standard_guest_network() -> GuestNetwork {
    guest_network(&NetConfig::new(Frontend::Stream {
        path: PathBuf::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MachineConfig {
        serde_json::from_value(serde_json::json!({
            "kernelPath": "/k", "rootfsPath": "/r", "stateDir": "/s",
            "memoryMiB": 256, "cpuCount": 1,
        }))
        .unwrap()
    }

    #[test]
    fn bad_rules_are_refused_naming_flag_and_value() {
        let mut c = config();
        c.network.allow = vec!["pkg.test".into(), "10.0.0.0/33".into()];
        let e = validate(&c.network, &c.publish).unwrap_err().message;
        assert!(e.contains("--allow") && e.contains("10.0.0.0/33"), "{e}");
        let mut c = config();
        c.network.deny = vec!["host:0".into()];
        let e = validate(&c.network, &c.publish).unwrap_err().message;
        assert!(e.contains("--deny") && e.contains("host:0"), "{e}");
    }

    #[test]
    fn a_published_port_in_use_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = config();
        c.publish = vec![format!("{}:80", taken.local_addr().unwrap().port())
            .parse()
            .unwrap()];
        let e = validate(&c.network, &c.publish).unwrap_err().message;
        assert!(e.contains("--publish 127.0.0.1:"), "{e}");
    }

    /// The VMMs that find their frontend by name (Firecracker's TAP, Apple
    /// VF's datagram socket) are launched only once it exists. Needs root
    /// for the TAP (CI runs as root).
    #[test]
    fn the_tap_and_the_datagram_socket_exist_when_start_returns() {
        std::env::set_var("MICROAGENT_NET", vmkit_testkit::net::helper_binary());
        for backend in [BackendKind::Firecracker, BackendKind::AppleVf] {
            let dir = tempfile::tempdir().unwrap();
            let paths = WorkspacePaths::new(dir.path()).unwrap();
            let mut c = config();
            c.network.mode = NetworkMode::Public;
            let mut boot = start(&c, &paths, backend, Supervision::DiesWithParent).unwrap();
            assert!(boot.ready.is_none(), "{backend}: ready was awaited already");
            let device = match boot.nic.as_ref().unwrap() {
                Nic::Tap { name, .. } => Path::new("/sys/class/net").join(name),
                Nic::Datagram { socket, .. } => socket.clone(),
                other => panic!("{backend}: {other:?}"),
            };
            assert!(
                device.exists(),
                "{backend}: {} is missing",
                device.display()
            );
            // SIGTERM, as every stop path sends: the helper removes it.
            let helper = &mut boot.helpers[0];
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(helper.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            assert!(helper.wait().unwrap().success());
            if backend == BackendKind::Firecracker {
                assert!(!device.exists(), "the TAP went with the helper");
            }
            for h in &mut boot.helpers {
                kill_child(h);
            }
        }
    }

    #[test]
    fn tap_names_fit_ifnamsiz() {
        let n = tap_name(Path::new(
            "/a/very/long/state/folder/workspaces/some-workspace",
        ));
        assert!(n.len() <= 15 && n.starts_with("ma"), "{n}");
    }
}

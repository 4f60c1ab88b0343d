//! A fake [`Machine`] for the lifecycle's unit tests: its "VMM" is a
//! `sleep` process, and a thread plays the guest init over the real
//! channel (the control connection and the hybrid-vsock socket), so boot,
//! run, exec and halt run their real code without a VM. The guest's
//! control connection reaches the host through a `socat` helper process,
//! as a real one comes through the VMM or its vsock helper (the host
//! refuses any other peer).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vmkit_channel::host::listener_path;
use vmkit_channel::{read_message, write_message, Message, Ready, DEFAULT_CONTROL_PORT};
use vmkit_protocol::{
    Accelerator, BackendKind, ErrorCode, HostInfo, MachineConfig, ProtocolError, RunResult,
};
use vmkit_state::ProcessRecord;

use crate::machine::{BootPlan, LaunchGuard, Launched, Machine};
use crate::process::{spawn_supervised, Supervision};

/// What the fake guest does once "booted".
#[derive(Debug, Clone)]
pub(crate) enum Guest {
    /// A workspace: announces `ready` with these values, then serves exec
    /// (echoing its argv) and shutdown on the port it announced.
    Workspace {
        protocol_version: u32,
        exec_port: u32,
    },
    /// A run: prints `stdout`, reports `result`, powers off once acked.
    Run { stdout: Vec<u8>, result: RunResult },
    /// The VMM exits at once; nothing connects.
    Dies,
    /// The launch itself fails.
    LaunchFails,
}

/// The fake machine; counts its launches and records pauses.
pub(crate) struct FakeMachine {
    pub(crate) guest: Guest,
    pub(crate) launches: Arc<AtomicUsize>,
    /// Every `set_paused` asked for, in order.
    pub(crate) pauses: Arc<Mutex<Vec<bool>>>,
    /// `save_state` writes part of its state, then fails as on a full disk.
    pub(crate) save_fails: bool,
    /// What the guest was asked to freeze and thaw, in order: `freeze`,
    /// then `thaw` (asked) or `closed` (the connection ended).
    pub(crate) freezes: Arc<Mutex<Vec<&'static str>>>,
}

/// What the fake machine's `save_state` writes.
pub(crate) const FAKE_STATE: &str = "state.fake";

impl FakeMachine {
    pub(crate) fn new(guest: Guest) -> Self {
        FakeMachine {
            guest,
            launches: Arc::default(),
            pauses: Arc::default(),
            save_fails: false,
            freezes: Arc::default(),
        }
    }
}

pub(crate) fn fake_host() -> HostInfo {
    HostInfo {
        os: "linux".into(),
        arch: "x86_64".into(),
        accelerator: Accelerator::Tcg,
        accelerator_reason: String::new(),
        checks: vec![],
    }
}

impl Machine for FakeMachine {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }
    fn host(&self) -> HostInfo {
        fake_host()
    }
    fn check(&self, _: &MachineConfig) -> Result<(), ProtocolError> {
        Ok(())
    }
    fn set_paused(&self, _: &crate::WorkspacePaths, paused: bool) -> Result<(), ProtocolError> {
        self.pauses.lock().unwrap().push(paused);
        Ok(())
    }
    fn save_state(
        &self,
        _: &MachineConfig,
        _: &crate::WorkspacePaths,
        into: &std::path::Path,
    ) -> Result<(), ProtocolError> {
        std::fs::write(into.join(FAKE_STATE), b"device state").unwrap();
        if self.save_fails {
            return Err(ProtocolError::new(
                ErrorCode::Internal,
                "writing the VM state: No space left on device (os error 28)",
            ));
        }
        Ok(())
    }
    fn launch(&self, plan: &BootPlan) -> Result<Launched, ProtocolError> {
        self.launches.fetch_add(1, Ordering::SeqCst);
        let program = match self.guest {
            Guest::LaunchFails => {
                return Err(ProtocolError::new(
                    ErrorCode::Internal,
                    "fake launch failed",
                ))
            }
            // Says why in its log, as QEMU does on its stderr, and ends.
            Guest::Dies => {
                let log = plan.paths.vmm_log.display();
                [
                    "sh",
                    "-c",
                    &format!("echo 'fake vmm: cannot open the root disk' >> '{log}'"),
                ]
                .map(String::from)
            }
            _ => ["sleep", "600", ""].map(String::from),
        };
        let mut guard = LaunchGuard::new();
        let mut cmd = Command::new(&program[0]);
        cmd.args(program[1..].iter().filter(|a| !a.is_empty()));
        // Even a "detached" fake dies with the test.
        let vmm = guard.vmm(spawn_supervised(&mut cmd, Supervision::DiesWithParent).unwrap());
        let pid = vmm.id() as i32;
        let vsock = plan.paths.vsock.clone();
        // The guest's end of the control connection, relayed by the helper.
        let guest_end = plan.paths.dir.join("g.sock");
        let _ = std::fs::remove_file(&guest_end);
        let guest_listener = UnixListener::bind(&guest_end).unwrap();
        let connect_control = |guard: &mut LaunchGuard| {
            let relay = Command::new("socat")
                .arg(format!(
                    "UNIX-CONNECT:{}",
                    listener_path(&vsock, DEFAULT_CONTROL_PORT).display()
                ))
                .arg(format!("UNIX-CONNECT:{}", guest_end.display()))
                .spawn()
                .unwrap();
            guard.helper(relay);
        };
        match self.guest.clone() {
            Guest::Workspace {
                protocol_version,
                exec_port,
            } => {
                // The hybrid socket exists before the guest says ready.
                let hybrid = UnixListener::bind(&vsock).unwrap();
                connect_control(&mut guard);
                let freezes = self.freezes.clone();
                std::thread::spawn(move || {
                    let (mut control, _) = guest_listener.accept().unwrap();
                    let ready = Ready {
                        protocol_version,
                        exec_port,
                        uptime_ms: None,
                    };
                    write_message(&mut control, &Message::Ready(ready)).unwrap();
                    serve_hybrid(hybrid, exec_port, pid, &freezes);
                });
            }
            Guest::Run { stdout, result } => {
                connect_control(&mut guard);
                std::thread::spawn(move || {
                    let (mut control, _) = guest_listener.accept().unwrap();
                    write_message(&mut control, &Message::Stdout(stdout)).unwrap();
                    write_message(&mut control, &Message::Result(result)).unwrap();
                    let _ack = read_message(&mut control);
                    power_off(pid);
                });
            }
            Guest::Dies | Guest::LaunchFails => {}
        }
        guard.disarm()
    }
}

fn power_off(pid: i32) {
    if let Some(p) = ProcessRecord::of(pid) {
        p.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

/// The VMM's side of hybrid vsock plus the guest's exec service: `CONNECT
/// <port>` is answered only for the announced port.
fn serve_hybrid(
    listener: UnixListener,
    exec_port: u32,
    vmm_pid: i32,
    freezes: &Mutex<Vec<&'static str>>,
) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        if line.trim() != format!("CONNECT {exec_port}") {
            continue; // closed without OK: nothing listens there
        }
        let mut stream = stream;
        writeln!(stream, "OK {exec_port}").unwrap();
        match read_message(&mut reader) {
            Ok(Some(Message::Exec(request))) => {
                let echo = request.argv.join(" ").into_bytes();
                let _ = write_message(&mut stream, &Message::Stdout(echo));
                let result = RunResult {
                    exit_code: Some(0),
                    ..RunResult::default()
                };
                let _ = write_message(&mut stream, &Message::Result(result));
            }
            Ok(Some(Message::Shutdown)) => {
                let _ = write_message(&mut stream, &Message::Ack);
                power_off(vmm_pid);
                return;
            }
            Ok(Some(Message::Freeze(_))) => {
                freezes.lock().unwrap().push("freeze");
                let frozen = Message::Frozen {
                    mountpoints: vec!["/".into()],
                };
                let _ = write_message(&mut stream, &frozen);
                if let Ok(Some(Message::Thaw)) = read_message(&mut reader) {
                    freezes.lock().unwrap().push("thaw");
                    let _ = write_message(&mut stream, &Message::Ack);
                } else {
                    freezes.lock().unwrap().push("closed");
                }
            }
            _ => {}
        }
    }
}

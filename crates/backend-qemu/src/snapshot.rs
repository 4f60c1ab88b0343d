//! Memory snapshots on QEMU: migration to a file and back.
//!
//! Guest RAM is a shared file in the workspace folder (see
//! [`crate::transport`]), and the migration capability `x-ignore-shared`
//! leaves it out of the migration stream: a snapshot is the small device
//! state stream (`migrate` to `exec:cat > file`) plus a sparse or
//! reflinked copy of the RAM file, taken while the VM is stopped. A
//! restore starts QEMU with the same devices and `-incoming defer`, puts a
//! copy of the RAM file in place, sets the same capability and feeds the
//! stream back with `migrate-incoming`. QEMU 7.2 has no `file:` URI, hence
//! `exec:` (the path is ours and single-quoted for the shell).

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::json;
use vmkit_protocol::{ErrorCode, ProtocolError};

use crate::qmp::{QmpClient, QmpError};
use crate::transport::MEMORY_FILE;

/// The device-state stream in a snapshot folder.
pub const STATE_FILE: &str = "state.qemu";
/// How long a migration to or from a file may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restoring QEMU may take to open its QMP socket.
const QMP_READY: Duration = Duration::from_secs(10);

/// Writes the stopped VM's device state and a copy of its RAM into `into`.
/// The RAM is a file only on the serial transport: a VM without one was
/// launched on vhost-user-vsock, which QEMU cannot migrate.
pub fn save_state(qmp_socket: &Path, memory: &Path, into: &Path) -> Result<(), ProtocolError> {
    if !memory.is_file() {
        return Err(vsock_refusal());
    }
    let state = into.join(STATE_FILE);
    let uri = format!("exec:cat > {}", shell_quote(&state)?);
    let mut qmp = QmpClient::connect(qmp_socket, crate::qmp::DEFAULT_TIMEOUT).map_err(qmp_err)?;
    set_ignore_shared(&mut qmp)?;
    qmp.execute("migrate", Some(json!({ "uri": uri })))
        .map_err(qmp_err)?;
    wait_migration(&mut qmp, "saving the VM state")?;
    vmkit_disk_clone::clone_disk(memory, &into.join(MEMORY_FILE))
        .map_err(|e| internal(format!("copying guest memory into the snapshot: {e}")))?;
    Ok(())
}

/// Why a VM on the vsock transport has no memory snapshots.
pub fn vsock_refusal() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unsupported,
        "QEMU cannot migrate a VM with vhost-user-vsock (MICROAGENT_QEMU_TRANSPORT=vsock); memory snapshots need the serial transport (the default)",
    )
}

/// Before a restoring launch: the workspace gets its own copy of the
/// snapshot's RAM file at `memory`; returns QEMU's extra arguments.
pub fn prepare_restore(snapshot: &Path, memory: &Path) -> Result<Vec<String>, ProtocolError> {
    for f in [STATE_FILE, MEMORY_FILE] {
        if !snapshot.join(f).is_file() {
            return Err(ProtocolError::invalid(format!(
                "the snapshot in {} has no {f}; nothing was started",
                snapshot.display()
            )));
        }
    }
    vmkit_disk_clone::clone_disk(&snapshot.join(MEMORY_FILE), memory)
        .map_err(|e| internal(format!("copying the snapshot's memory: {e}")))?;
    Ok(vec!["-incoming".into(), "defer".into()])
}

/// After a restoring launch: feeds the state stream to QEMU and lets the
/// vCPUs run.
pub fn complete_restore(
    qmp_socket: &Path,
    snapshot: &Path,
    vmm: &mut Child,
) -> Result<(), ProtocolError> {
    let deadline = Instant::now() + QMP_READY;
    let mut qmp = loop {
        match QmpClient::connect(qmp_socket, crate::qmp::DEFAULT_TIMEOUT) {
            Ok(q) => break q,
            Err(e) => {
                if let Ok(Some(status)) = vmm.try_wait() {
                    return Err(internal(format!(
                        "QEMU exited while restoring ({status}); see vmm.log"
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(qmp_err(e));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    set_ignore_shared(&mut qmp)?;
    let uri = format!("exec:cat {}", shell_quote(&snapshot.join(STATE_FILE))?);
    qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .map_err(qmp_err)?;
    wait_migration(&mut qmp, "restoring the VM state")?;
    if qmp.status().map_err(qmp_err)? != "running" {
        qmp.execute("cont", None).map_err(qmp_err)?;
    }
    Ok(())
}

fn set_ignore_shared(qmp: &mut QmpClient) -> Result<(), ProtocolError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })),
    )
    .map(|_| ())
    .map_err(qmp_err)
}

/// Polls `query-migrate` until the migration completed or failed.
fn wait_migration(qmp: &mut QmpClient, what: &str) -> Result<(), ProtocolError> {
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    loop {
        let info = qmp.execute("query-migrate", None).map_err(qmp_err)?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = info
                    .get("error-desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or("no reason given");
                return Err(internal(format!("{what}: QEMU says {why}")));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(internal(format!(
                "{what}: not done within {}s",
                MIGRATE_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Single-quotes a path for `sh -c`; refuses one holding a quote.
fn shell_quote(path: &Path) -> Result<String, ProtocolError> {
    let text = path
        .to_str()
        .ok_or_else(|| ProtocolError::invalid(format!("{} is not UTF-8", path.display())))?;
    if text.contains('\'') {
        return Err(ProtocolError::invalid(format!(
            "snapshot paths may not contain a single quote: {text}"
        )));
    }
    Ok(format!("'{text}'"))
}

fn qmp_err(e: QmpError) -> ProtocolError {
    internal(e.to_string())
}

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_or_refused() {
        assert_eq!(
            shell_quote(Path::new("/s/w s/state.qemu")).unwrap(),
            "'/s/w s/state.qemu'"
        );
        assert!(shell_quote(Path::new("/s/it's")).is_err());
    }
}

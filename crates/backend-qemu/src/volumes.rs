//! Host folders as volumes on QEMU: one `virtiofsd` per volume (the
//! rust-vmm file server from crates.io), speaking vhost-user to QEMU's
//! `vhost-user-fs-device` over a socket in the workspace folder. Guest
//! memory is already shared (the RAM file, or a memfd for vhost-user-vsock).
//!
//! Read-only volumes are enforced here, by the host: `virtiofsd
//! --readonly` refuses every write request whatever the guest mounts.

use std::path::Path;
use std::process::{Command, Stdio};

use vmkit_host::{find_in_path, Tool};
use vmkit_lifecycle::vmm_files::clone_log;
use vmkit_lifecycle::{spawn_supervised, volumes, BootPlan, LaunchGuard, Supervision};
use vmkit_protocol::{ErrorCode, ProtocolError};

/// Starts a file server per volume and waits until each listens; each is
/// handed to `guard`, which ends them all if the launch fails later.
pub fn start_servers(
    plan: &BootPlan,
    log: &std::fs::File,
    supervision: Supervision,
    guard: &mut LaunchGuard,
) -> Result<(), ProtocolError> {
    if plan.config.volumes.is_empty() {
        return Ok(());
    }
    let program = find_in_path(Tool::Virtiofsd.program()).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::Unavailable,
            "virtiofsd not found in PATH; volumes need it (cargo install --locked virtiofsd)",
        )
    })?;
    // The namespace sandbox (virtiofsd's default) needs root; unprivileged
    // runs serve without one.
    let sandbox = if nix::unistd::geteuid().is_root() {
        "namespace"
    } else {
        "none"
    };
    for (i, v) in plan.config.volumes.iter().enumerate() {
        let socket = volumes::socket(&plan.paths.dir, i);
        let _ = std::fs::remove_file(&socket);
        guard.remove_on_failure(&socket);
        let mut cmd = Command::new(&program);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&v.host_path)
            .args([
                "--sandbox",
                sandbox,
                "--cache",
                "auto",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(clone_log(log)?)
            .stderr(clone_log(log)?);
        if v.read_only {
            cmd.arg("--readonly");
        }
        let child = spawn_supervised(&mut cmd, supervision).map_err(|e| {
            ProtocolError::new(ErrorCode::Internal, format!("starting virtiofsd: {e}"))
        })?;
        let child = guard.helper(child);
        crate::machine::wait_for_socket(&socket, child, "virtiofsd")?;
        guard.checkpoint("virtiofsd ready")?;
    }
    Ok(())
}

/// QEMU's arguments for the volumes: a vhost-user-fs device per volume,
/// tagged as the guest init expects.
pub fn qemu_args(workspace_dir: &Path, count: usize) -> Vec<String> {
    let mut args = Vec::new();
    for i in 0..count {
        args.extend([
            "-chardev".into(),
            format!(
                "socket,id=fs{i},path={}",
                volumes::socket(workspace_dir, i).display()
            ),
            "-device".into(),
            format!("vhost-user-fs-device,chardev=fs{i},tag={}", volumes::tag(i)),
        ]);
    }
    args
}

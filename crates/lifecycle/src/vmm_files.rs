//! Files around a VMM process that every backend handles the same way: its
//! log, the console log's rotation and stale sockets. (What a failed launch
//! started is ended by [`crate::LaunchGuard`].)

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use vmkit_protocol::{ErrorCode, ProtocolError};

use crate::Supervision;

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

/// Opens a VMM log for appending (0600: it may echo guest output).
pub fn open_log(path: &Path) -> Result<File, ProtocolError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| internal(format!("opening {}: {e}", path.display())))
}

/// Another handle on a log, for a child's stdout or stderr.
pub fn clone_log(log: &File) -> Result<File, ProtocolError> {
    log.try_clone()
        .map_err(|e| internal(format!("duplicating the VMM log handle: {e}")))
}

/// Most bytes kept of one console file; the relay keeps two (`console.log`
/// and `console.log.1`, written in turn), so a guest printing without end
/// costs at most twice this on the host.
pub const CONSOLE_FILE_CAP: u64 = 1 << 20;

/// Starts each boot's console log afresh (the files of the previous boot
/// are removed).
pub fn rotate_console(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("log.1"));
}

/// Starts the console relay: the guest's serial console is the VMM's
/// stdout, which goes to Apache's `rotatelogs` (package apache2-utils), and
/// it writes `path` and `path.1` in turn, each capped at
/// [`CONSOLE_FILE_CAP`]. The guest is hostile: a file QEMU wrote itself
/// could grow without bound. Returns the relay and the VMM's stdout.
pub fn spawn_console_relay(
    path: &Path,
    supervision: Supervision,
) -> Result<(Child, Stdio), ProtocolError> {
    let (child, stdin) = spawn_rotatelogs(path, supervision)?;
    Ok((child, Stdio::from(stdin)))
}

/// Like [`spawn_console_relay`], for a VMM log (`vmm.log`) that several
/// processes share: what a guest makes its VMM warn about (bad virtio
/// requests, say) is capped like the console. Returns the relay, to keep
/// with the VM's helpers, and the write end to clone with [`clone_log`]
/// for each child's stdout or stderr; the relay ends when all are closed.
pub fn spawn_log_relay(
    path: &Path,
    supervision: Supervision,
) -> Result<(Child, File), ProtocolError> {
    let (child, stdin) = spawn_rotatelogs(path, supervision)?;
    Ok((child, File::from(std::os::fd::OwnedFd::from(stdin))))
}

fn spawn_rotatelogs(
    path: &Path,
    supervision: Supervision,
) -> Result<(Child, std::process::ChildStdin), ProtocolError> {
    let program = vmkit_host::find_in_path("rotatelogs").ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::Unavailable,
            "rotatelogs not found in PATH (it caps the guest console log); install apache2-utils",
        )
    })?;
    let mut cmd = Command::new(program);
    cmd.args(["-n", "2", "-f"])
        .arg(path)
        .arg(format!("{}K", CONSOLE_FILE_CAP / 1024))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: umask is async-signal-safe and only changes the child's mask,
    // between fork and exec: the console may hold secrets, keep it 0600.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let mut child = crate::spawn_supervised(&mut cmd, supervision).map_err(|e| {
        internal(format!(
            "starting the log relay for {}: {e}",
            path.display()
        ))
    })?;
    let stdin = child.stdin.take().expect("piped");
    Ok((child, stdin))
}

/// Waits (up to a second) for the console relay to end after its VMM
/// exited, so the VMM's last words are in the console log before anyone
/// quotes them. The relay ends by itself at its input's end-of-file.
pub fn settle_relay(relay: &mut Child) {
    crate::process::wait_child(relay, std::time::Duration::from_secs(1));
}

/// The current boot's console output, oldest first (the relay writes its
/// two files in turn, so the newer one is the later part).
pub fn read_console(path: &Path) -> Vec<u8> {
    let mut parts: Vec<(std::time::SystemTime, Vec<u8>)> =
        [path.to_owned(), path.with_extension("log.1")]
            .iter()
            .filter_map(|p| {
                let modified = std::fs::metadata(p).and_then(|m| m.modified()).ok()?;
                Some((modified, std::fs::read(p).ok()?))
            })
            .collect();
    parts.sort_by_key(|(t, _)| *t);
    parts.into_iter().flat_map(|(_, b)| b).collect()
}

/// Removes a socket a dead VMM left behind; refuses to touch anything that
/// is not a socket.
pub fn remove_stale_socket(path: &Path) -> Result<(), ProtocolError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| internal(format!("removing the stale {}: {e}", path.display()))),
        Ok(_) => Err(internal(format!(
            "{} exists and is not a socket; remove it",
            path.display()
        ))),
        Err(_) => Ok(()),
    }
}

/// Removes every `<uds>_<port>` entry beside the hybrid vsock socket `uds`.
/// The VMM forwards a guest's connection to port P to whatever listens on
/// `<uds>_P`, so nothing may be there but the listeners the host binds
/// itself afterwards (a socket planted there, or a symlink to a host
/// socket, would let the guest reach it).
pub fn remove_guest_listeners(uds: &Path) {
    let (Some(dir), Some(name)) = (uds.parent(), uds.file_name()) else {
        return;
    };
    let mut prefix = name.as_encoded_bytes().to_vec();
    prefix.push(b'_');
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().as_encoded_bytes().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_sockets_go_other_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        drop(listener);
        remove_stale_socket(&sock).unwrap();
        assert!(!sock.exists());
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(remove_stale_socket(&file).is_err());
        assert!(file.exists());
        remove_stale_socket(&dir.path().join("absent")).unwrap();
    }

    #[test]
    fn a_flooded_vmm_log_is_capped_like_the_console() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vmm.log");
        let (mut relay, file) = spawn_log_relay(&log, Supervision::DiesWithParent).unwrap();
        // Two writers share it, as vhost-device-vsock and QEMU do.
        let mut writers: Vec<Child> = (0..2)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "head -c 3145728 /dev/zero | tr '\\0' w"])
                    .stdout(clone_log(&file).unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect();
        drop(file);
        for w in &mut writers {
            w.wait().unwrap();
        }
        relay.wait().unwrap();
        assert_capped(dir.path(), "vmm.log");
    }

    fn assert_capped(dir: &Path, log: &str) {
        vmkit_testkit::logs::assert_capped(dir, log, CONSOLE_FILE_CAP);
    }

    #[test]
    fn only_the_hosts_own_guest_listeners_may_exist() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vm.vsock");
        let host_socket = dir.path().join("docker.sock");
        let _l = std::os::unix::net::UnixListener::bind(&host_socket).unwrap();
        // Planted: a symlink to a host socket on a port the guest may dial,
        // and a stray socket.
        std::os::unix::fs::symlink(&host_socket, dir.path().join("vm.vsock_2375")).unwrap();
        let _s = std::os::unix::net::UnixListener::bind(dir.path().join("vm.vsock_22")).unwrap();
        std::fs::write(dir.path().join("vm.vsockish"), b"").unwrap();
        remove_guest_listeners(&uds);
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!left.iter().any(|n| n.starts_with("vm.vsock_")), "{left:?}");
        assert!(host_socket.exists() && dir.path().join("vm.vsockish").exists());
    }

    #[test]
    fn the_relay_caps_what_a_flooding_console_costs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(dir.path().join("console.log.1"), b"previous boot").unwrap();
        rotate_console(&log);
        let (mut relay, stdio) = spawn_console_relay(&log, Supervision::DiesWithParent).unwrap();
        // 5 MiB through the relay, the way a VMM writes: into its stdout.
        let mut writer = Command::new("sh")
            .args(["-c", "head -c 5242880 /dev/zero | tr '\\0' x"])
            .stdout(stdio)
            .spawn()
            .unwrap();
        writer.wait().unwrap();
        relay.wait().unwrap();
        assert_capped(dir.path(), "console.log");
        let text = read_console(&log);
        assert!(text.iter().all(|b| *b == b'x'), "only this boot's output");
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

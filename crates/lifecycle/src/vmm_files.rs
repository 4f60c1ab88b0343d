//! Files around a VMM process that every backend handles the same way: its
//! log, the console log's rotation, stale sockets, and killing a child that
//! failed half-way through a launch.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::process::Child;

use vmkit_protocol::{ErrorCode, ProtocolError};

fn internal(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

/// Opens a VMM log for appending (0600: it may echo guest output).
pub fn open_log(path: &Path) -> Result<File, ProtocolError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| internal(format!("opening {}: {e}", path.display())))
}

/// Another handle on a log, for a child's stdout or stderr.
pub fn clone_log(log: &File) -> Result<File, ProtocolError> {
    log.try_clone()
        .map_err(|e| internal(format!("duplicating the VMM log handle: {e}")))
}

/// Keeps one previous console log; each boot starts a fresh one, so the
/// log's size is bounded by what one boot prints (the kernel is quiet and
/// command output travels over vsock, not the console).
pub fn rotate_console(path: &Path) {
    if path.exists() {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
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

/// Kills and reaps a child started during a launch that then failed.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
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
    fn rotation_keeps_one_previous_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"boot 1").unwrap();
        rotate_console(&log);
        assert!(!log.exists());
        assert_eq!(
            std::fs::read(dir.path().join("console.log.1")).unwrap(),
            b"boot 1"
        );
    }
}

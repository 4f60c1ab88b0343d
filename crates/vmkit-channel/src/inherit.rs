//! Listening sockets handed to a helper process by the one that spawns it.
//!
//! The spawner binds a helper's sockets itself and passes the descriptors
//! on, so the VMM can connect the moment it starts (the connection waits in
//! the backlog) instead of after the helper has started and bound them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Adopts descriptor `fd` as a Unix listener. It is checked, not trusted:
/// it must be open, a listening socket, and bound to `path`.
pub fn inherited_listener(fd: RawFd, path: &Path) -> io::Result<UnixListener> {
    let refuse = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} {why} {}", path.display()),
        )
    };
    // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is not
    // open fails with EBADF, refused here before anything owns it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(refuse("is not open; expected a socket listening on"));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process to own; nothing else in it uses that number.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`.
    let r = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    let bound = listener.local_addr().ok();
    let on_path = bound.as_ref().and_then(|a| a.as_pathname()) == Some(path);
    if r != 0 || accepting == 0 || !on_path {
        return Err(refuse("is not a socket listening on"));
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn only_a_listener_on_the_path_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
        let l = inherited_listener(fd, &path).unwrap();
        let _c = UnixStream::connect(&path).unwrap();
        l.accept().unwrap();

        let fd = UnixListener::bind(dir.path().join("b.sock"))
            .unwrap()
            .into_raw_fd();
        let e = inherited_listener(fd, &path).unwrap_err();
        assert!(e.to_string().contains("not a socket listening on"), "{e}");

        let (a, _b) = UnixStream::pair().unwrap();
        let e = inherited_listener(a.into_raw_fd(), &path).unwrap_err();
        assert!(e.to_string().contains("not a socket listening on"), "{e}");

        let e = inherited_listener(4000, &path).unwrap_err();
        assert!(e.to_string().contains("not open"), "{e}");
    }
}

//! The host side of the channel on Unix hosts, for every VMM that speaks
//! Firecracker's hybrid vsock convention (Firecracker itself, and QEMU through
//! `vhost-device-vsock`):
//!
//! - host -> guest: connect to the VMM's `uds_path`, send `CONNECT <port>\n`,
//!   read `OK <n>\n`; the stream is then the guest's port ([`connect`]).
//! - guest -> host: the guest connects to CID 2 port P; the VMM forwards it to
//!   the Unix socket `<uds_path>_<P>`, which the host must already listen on
//!   ([`HostListener`]).
//!
//! On top of that: [`Control`] (in `control.rs`), the host end of the
//! connection the guest init opens at boot (run results, workspace
//! `ready`), and [`ExecClient`] (in `exec.rs`), the client of the guest's
//! exec service, which also freezes the guest's filesystems
//! ([`FrozenGuest`], in `freeze.rs`). Every wait takes a timeout, and
//! everything the guest sends goes through the bounded reader of
//! [`crate::frame`].

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmkit_protocol::RunResult;

use crate::frame::{read_message, write_message, FrameError};
use crate::message::Message;

mod control;
mod exec;

pub use control::{Control, RunOutcome, RunReport};
pub use exec::{exec_over, shutdown_over, ExecClient};

mod copy;
mod freeze;
mod session;
pub use copy::{copy_in_over, copy_out_over};
pub use freeze::{freeze_over, FrozenGuest};
pub use session::ExecHandle;

/// Why a host-side channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The peer sent a bad frame, or the stream broke mid-frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A wait exceeded its timeout.
    #[error("timed out {0}")]
    Timeout(String),
    /// The VMM's vsock socket did not answer `CONNECT` with `OK`.
    #[error("vsock handshake: {0}")]
    Handshake(String),
    /// The VMM closed the connection instead of answering `OK`: nothing
    /// listens on that guest port (yet).
    #[error("the VMM closed the connection before OK: nothing listens on guest port {port}")]
    PortClosed {
        /// The guest port.
        port: u32,
    },
    /// The guest sent a message that does not fit the conversation.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The guest reported an error and closed the connection.
    #[error("guest error: {0}")]
    Guest(String),
    /// Writing output to the caller's sink failed.
    #[error("writing command output: {0}")]
    Sink(#[source] io::Error),
    /// The request is invalid; nothing was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A process other than the VMM (or its vsock helper) connected to a
    /// guest listener; the connection was closed unread.
    #[error("refused a connection from pid {pid}, which is not the VMM or its vsock helper")]
    WrongPeer {
        /// The peer's pid (`SO_PEERCRED`), 0 if unknown.
        pid: i32,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ChannelError {
    let context = context.into();
    move |source| ChannelError::Io { context, source }
}

/// `now + timeout`, saturating: an absurd timeout means "no deadline", not a panic.
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

pub(crate) fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Opens a stream to guest vsock `port` through the VMM's hybrid vsock
/// socket `uds_path`.
///
/// Retries until `timeout` while the socket does not exist yet, refuses, or
/// the guest port is not listening yet (the VMM then closes without `OK`), so
/// it can be called right after the VMM starts. Returns a blocking stream
/// without timeouts.
pub fn connect(uds_path: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ChannelError> {
    let deadline = deadline_after(timeout);
    loop {
        let last_error = match try_connect(uds_path, port, deadline) {
            Ok(s) => return Ok(s),
            // A wrong answer will not get better by asking again.
            Err(e @ ChannelError::Handshake(_)) => return Err(e),
            Err(e) => e,
        };
        match remaining(deadline) {
            Some(left) => std::thread::sleep(left.min(Duration::from_millis(50))),
            None => {
                return Err(ChannelError::Timeout(format!(
                    "connecting to guest port {port} via {}: last error: {last_error}",
                    uds_path.display()
                )))
            }
        }
    }
}

fn try_connect(uds_path: &Path, port: u32, deadline: Instant) -> Result<UnixStream, ChannelError> {
    let ctx = || format!("connecting to {}", uds_path.display());
    let mut s = UnixStream::connect(uds_path).map_err(io_err(ctx()))?;
    let left = remaining(deadline).ok_or_else(|| ChannelError::Timeout("connecting".into()))?;
    s.set_read_timeout(Some(left)).map_err(io_err(ctx()))?;
    s.set_write_timeout(Some(left)).map_err(io_err(ctx()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err(ctx()))?;
    // Read byte by byte: anything after the newline already belongs to the guest.
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => return Err(ChannelError::PortClosed { port }),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= 32 => {
                return Err(ChannelError::Handshake("answer line too long".into()))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(ctx())(e)),
        }
    }
    let ok = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .is_some_and(|n| n.trim().parse::<u32>().is_ok());
    if !ok {
        return Err(ChannelError::Handshake(format!(
            "expected \"OK <port>\", got {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    s.set_read_timeout(None).map_err(io_err(ctx()))?;
    s.set_write_timeout(None).map_err(io_err(ctx()))?;
    Ok(s)
}

/// The Unix socket where guest-initiated connections to host port `port`
/// arrive: `<uds_path>_<port>`.
pub fn listener_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = uds_path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Listens for guest-initiated connections to host port `port`. Bind it
/// before starting the VM. The socket file is removed on drop.
#[derive(Debug)]
pub struct HostListener {
    listener: UnixListener,
    path: PathBuf,
}

impl HostListener {
    /// Binds `<uds_path>_<port>`, replacing a stale socket left by a dead run.
    pub fn bind(uds_path: &Path, port: u32) -> Result<Self, ChannelError> {
        let path = listener_path(uds_path, port);
        let ctx = || format!("binding {}", path.display());
        match std::fs::symlink_metadata(&path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                std::fs::remove_file(&path).map_err(io_err(ctx()))?;
            }
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(io_err(ctx()))?;
        listener.set_nonblocking(true).map_err(io_err(ctx()))?;
        Ok(HostListener { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for the guest to connect. The returned stream
    /// is blocking, without timeouts.
    pub fn accept(&self, timeout: Duration) -> Result<UnixStream, ChannelError> {
        let deadline = deadline_after(timeout);
        let ctx = || format!("accepting on {}", self.path.display());
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(io_err(ctx()))?;
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(ctx())(e)),
            }
            let left = remaining(deadline).ok_or_else(|| {
                ChannelError::Timeout(format!(
                    "after {timeout:?} waiting for the guest to connect to {}",
                    self.path.display()
                ))
            })?;
            poll_readable(self.listener.as_raw_fd(), left).map_err(io_err(ctx()))?;
        }
    }
}

impl HostListener {
    /// Like [`HostListener::accept`], but only a connection from one of
    /// `peers` (the VMM and vsock helper pids: they alone forward the
    /// guest's connections) is taken. Any other process that reached the
    /// socket is refused with [`ChannelError::WrongPeer`] and its
    /// connection closed; the caller may wait again.
    pub fn accept_from(
        &self,
        timeout: Duration,
        peers: &[i32],
    ) -> Result<UnixStream, ChannelError> {
        let stream = self.accept(timeout)?;
        let pid = peer_pid(&stream).unwrap_or(0);
        if pid != 0 && peers.contains(&pid) {
            Ok(stream)
        } else {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Err(ChannelError::WrongPeer { pid })
        }
    }
}

/// The pid of the process at the other end of a Unix stream (`SO_PEERCRED`:
/// the process that connected, as of the connect).
pub fn peer_pid(stream: &UnixStream) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given and
    // outlive the call; the fd belongs to `stream` for the call's duration.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}

impl Drop for HostListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn poll_readable(fd: std::os::fd::RawFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfd` is a valid, initialised pollfd array of length 1 that
    // outlives the call; `fd` is owned by the caller for the call's duration.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// A reader whose every `read` honours one overall deadline: a peer that
/// trickles bytes cannot stretch a wait past it.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = remaining(self.deadline)
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))?;
        self.stream.set_read_timeout(Some(left))?;
        (&*self.stream).read(buf)
    }
}

pub(crate) fn recv(
    stream: &UnixStream,
    deadline: Instant,
    what: &str,
) -> Result<Message, ChannelError> {
    let mut r = DeadlineReader { stream, deadline };
    match read_message(&mut r) {
        Ok(Some(Message::Error { mut message })) => {
            vmkit_protocol::truncate_text(&mut message, RunResult::MAX_ERROR_BYTES);
            Err(ChannelError::Guest(message))
        }
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(ChannelError::Protocol(format!(
            "guest closed the connection {what}"
        ))),
        Err(e) if e.is_timeout() => Err(ChannelError::Timeout(what.to_string())),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn send(
    stream: &UnixStream,
    msg: &Message,
    timeout: Duration,
) -> Result<(), ChannelError> {
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io_err("setting a write timeout"))?;
    let mut w = stream;
    match write_message(&mut w, msg) {
        Err(e) if e.is_timeout() => Err(ChannelError::Timeout(format!(
            "sending {} to the guest",
            msg.kind()
        ))),
        other => Ok(other?),
    }
}

pub(crate) fn sink(w: &mut dyn Write, bytes: &[u8]) -> Result<(), ChannelError> {
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(ChannelError::Sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_speaks_the_hybrid_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vm.vsock");
        let server = UnixListener::bind(&uds).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"CONNECT 5000\n");
            s.write_all(b"OK 1073741824\nguest").unwrap();
        });
        let mut s = connect(&uds, 5000, Duration::from_secs(5)).unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"guest");
        t.join().unwrap();
    }

    #[test]
    fn absurd_timeouts_do_not_overflow() {
        assert!(deadline_after(Duration::MAX) > Instant::now());
        let (host, _guest) = UnixStream::pair().unwrap();
        host.set_nonblocking(false).unwrap();
        let mut c = Control::from_stream(host);
        drop(_guest);
        assert!(c.wait_ready(Duration::MAX).is_err());
    }

    #[test]
    fn connect_times_out_when_nothing_listens() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = connect(&dir.path().join("none"), 1, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ChannelError::Timeout(_)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn connect_refuses_a_bad_answer() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vm.vsock");
        let server = UnixListener::bind(&uds).unwrap();
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = server.accept() {
                let _ = s.write_all(b"NOPE\n");
            }
        });
        let err = connect(&uds, 1, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("NOPE"), "{err}");
    }

    #[test]
    fn listener_accepts_with_timeout_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vm.vsock");
        let l = HostListener::bind(&uds, 10000).unwrap();
        assert_eq!(l.path(), dir.path().join("vm.vsock_10000"));
        let err = l.accept(Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, ChannelError::Timeout(_)));
        let path = l.path().to_owned();
        let t = std::thread::spawn(move || UnixStream::connect(path).unwrap());
        let _s = l.accept(Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        let path = l.path().to_owned();
        drop(l);
        assert!(!path.exists());
        // A stale socket from a dead run is replaced.
        let _a = HostListener::bind(&uds, 7).unwrap();
        std::mem::forget(_a);
        let _b = HostListener::bind(&uds, 7).unwrap();
    }
}

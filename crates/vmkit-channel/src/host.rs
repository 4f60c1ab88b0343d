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
//! On top of that: [`Control`], the host end of the connection the guest
//! init opens at boot (run results, workspace `ready`), and [`ExecClient`],
//! the client of the guest's exec service. Every wait takes a timeout, and
//! everything the guest sends goes through the bounded reader of
//! [`crate::frame`].

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmkit_protocol::RunResult;

use crate::frame::{read_message, write_message, FrameError};
use crate::message::{ExecRequest, Message, Ready, SetupStep, CHUNK_SIZE};

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

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ChannelError {
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

fn remaining(deadline: Instant) -> Option<Duration> {
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

fn recv(stream: &UnixStream, deadline: Instant, what: &str) -> Result<Message, ChannelError> {
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

fn send(stream: &UnixStream, msg: &Message, timeout: Duration) -> Result<(), ChannelError> {
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

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Setup succeeded and the exec command ran (or could not start: see `error`).
    Completed(RunResult),
    /// A setup command failed; exec did not run.
    SetupFailed(SetupStep),
}

/// Everything a run reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The setup commands that succeeded, in order.
    pub setup: Vec<SetupStep>,
    /// How it ended.
    pub outcome: RunOutcome,
}

/// The host end of the connection the guest init opens at boot to the
/// control port (see [`crate::BootSpec::control_port`]).
#[derive(Debug)]
pub struct Control {
    stream: UnixStream,
}

impl Control {
    /// Waits up to `timeout` for the guest init to connect to `listener`.
    pub fn accept(listener: &HostListener, timeout: Duration) -> Result<Self, ChannelError> {
        Ok(Control {
            stream: listener.accept(timeout)?,
        })
    }

    /// Wraps an already connected stream (tests, other transports).
    pub fn from_stream(stream: UnixStream) -> Self {
        Control { stream }
    }

    /// Workspace boots: waits for the guest's `ready`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, ChannelError> {
        let deadline = deadline_after(timeout);
        match recv(&self.stream, deadline, "waiting for the guest to be ready")? {
            Message::Ready(r) => Ok(r),
            other => Err(ChannelError::Protocol(format!(
                "expected ready, got {}",
                other.kind()
            ))),
        }
    }

    /// Run boots: copies the guest's stdout and stderr to the sinks as they
    /// arrive (flushing each chunk) and returns how the run ended. Output is
    /// never buffered here beyond one frame. `setup` is the list of setup
    /// commands the host sent: the guest may report on exactly those, in
    /// order, and the report carries the host's copy of each command, so a
    /// hostile guest cannot make the host hold more than one frame plus a
    /// bounded result per command. `timeout` bounds the whole run; make it
    /// longer than the run's own `timeoutMs`, which the guest enforces.
    ///
    /// On success the guest is acknowledged, and it then powers off.
    pub fn receive_run(
        &mut self,
        setup: &[String],
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        timeout: Duration,
    ) -> Result<RunReport, ChannelError> {
        let deadline = deadline_after(timeout);
        let mut done = Vec::new();
        let outcome = loop {
            match recv(&self.stream, deadline, "waiting for the run to finish")? {
                Message::Stdout(b) => sink(stdout, &b)?,
                Message::Stderr(b) => sink(stderr, &b)?,
                Message::SetupStarted { index, .. } => {
                    expect_setup_index(index, done.len(), setup.len(), "setupStarted")?;
                }
                Message::SetupResult(step) => {
                    done.push(checked_step(step, done.len(), setup, "setupResult")?);
                }
                Message::SetupFailed(step) => {
                    break RunOutcome::SetupFailed(checked_step(
                        step,
                        done.len(),
                        setup,
                        "setupFailed",
                    )?)
                }
                Message::Result(r) => break RunOutcome::Completed(checked_result(r)?),
                Message::Ping => {
                    send(&self.stream, &Message::Pong, Duration::from_secs(5)).map_err(|e| {
                        // A guest that stops reading is a broken channel, not
                        // a command that ran out of time.
                        ChannelError::Protocol(format!("answering the guest's ping: {e}"))
                    })?
                }
                other => {
                    return Err(ChannelError::Protocol(format!(
                        "unexpected {} during a run",
                        other.kind()
                    )))
                }
            }
        };
        // Best effort: without the ack the guest powers off after its own timeout.
        let _ = send(&self.stream, &Message::Ack, Duration::from_secs(2));
        Ok(RunReport {
            setup: done,
            outcome,
        })
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// The guest may only speak of the next setup command the host sent.
fn expect_setup_index(
    index: u32,
    next: usize,
    sent: usize,
    what: &str,
) -> Result<(), ChannelError> {
    if usize::try_from(index).ok() == Some(next) && next < sent {
        Ok(())
    } else {
        Err(ChannelError::Protocol(format!(
            "{what} for setup command {index}, but the host sent {sent} and expected {}",
            if next < sent {
                format!("command {next}")
            } else {
                "no more".to_owned()
            }
        )))
    }
}

/// A setup report checked against what the host sent, with the host's copy
/// of the command in place of the guest's.
fn checked_step(
    step: SetupStep,
    next: usize,
    setup: &[String],
    what: &str,
) -> Result<SetupStep, ChannelError> {
    expect_setup_index(step.index, next, setup.len(), what)?;
    Ok(SetupStep {
        index: step.index,
        command: setup[next].clone(),
        result: checked_result(step.result)?,
    })
}

/// A guest's result, refused if it is inconsistent, its `error` bounded.
fn checked_result(mut result: RunResult) -> Result<RunResult, ChannelError> {
    result
        .validate()
        .map_err(|e| ChannelError::Protocol(e.message))?;
    result.truncate_error();
    Ok(result)
}

fn sink(w: &mut dyn Write, bytes: &[u8]) -> Result<(), ChannelError> {
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(ChannelError::Sink)
}

/// Client of the guest's exec service, reached through the VMM's hybrid
/// vsock socket. Each call opens its own connection, so one client can run
/// several execs at once from several threads.
#[derive(Debug, Clone)]
pub struct ExecClient {
    uds_path: PathBuf,
    port: u32,
    connect_timeout: Duration,
}

impl ExecClient {
    /// A client for the exec service on guest `port` behind `uds_path`.
    pub fn new(uds_path: impl Into<PathBuf>, port: u32) -> Self {
        ExecClient {
            uds_path: uds_path.into(),
            port,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// How long to keep trying to connect (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Runs `req` in the guest, copying its output to the sinks as it
    /// arrives. `stdin`, if given, is streamed to the command from a helper
    /// thread (so a command that prints before reading cannot deadlock).
    /// `timeout` is the host's backstop for the whole exec: make it longer
    /// than `req.timeout_ms`, which the guest enforces by killing the command.
    pub fn exec(
        &self,
        req: &ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        timeout: Duration,
    ) -> Result<RunResult, ChannelError> {
        let stream = connect(&self.uds_path, self.port, self.connect_timeout)?;
        exec_over(stream, req, stdin, stdout, stderr, timeout)
    }

    /// Asks the guest to sync and power off; returns once it acknowledged.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), ChannelError> {
        let stream = connect(&self.uds_path, self.port, self.connect_timeout)?;
        shutdown_over(&stream, timeout)
    }

    /// Checks that the exec service answers.
    pub fn ping(&self, timeout: Duration) -> Result<(), ChannelError> {
        let stream = connect(&self.uds_path, self.port, self.connect_timeout)?;
        let deadline = deadline_after(timeout);
        send(&stream, &Message::Ping, timeout)?;
        match recv(&stream, deadline, "waiting for pong")? {
            Message::Pong => Ok(()),
            other => Err(ChannelError::Protocol(format!(
                "expected pong, got {}",
                other.kind()
            ))),
        }
    }
}

/// [`ExecClient::shutdown`] over an already connected stream.
pub fn shutdown_over(stream: &UnixStream, timeout: Duration) -> Result<(), ChannelError> {
    let deadline = deadline_after(timeout);
    send(stream, &Message::Shutdown, timeout)?;
    match recv(
        stream,
        deadline,
        "waiting for the guest to acknowledge shutdown",
    )? {
        Message::Ack => Ok(()),
        other => Err(ChannelError::Protocol(format!(
            "expected ack, got {}",
            other.kind()
        ))),
    }
}

/// [`ExecClient::exec`] over an already connected stream (tests, other
/// transports). Consumes the stream: one exec per connection.
pub fn exec_over(
    stream: UnixStream,
    req: &ExecRequest,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    timeout: Duration,
) -> Result<RunResult, ChannelError> {
    let deadline = deadline_after(timeout);
    let mut req = req.clone();
    req.stdin = stdin.is_some();
    req.validate().map_err(ChannelError::Invalid)?;
    send(&stream, &Message::Exec(req), timeout)?;
    // No write timeout for stdin: backpressure from a slow command is normal,
    // and the thread ends when the connection is shut down below.
    stream
        .set_write_timeout(None)
        .map_err(io_err("clearing the write timeout"))?;
    let feeder = match stdin {
        Some(mut input) => {
            let mut w = stream.try_clone().map_err(io_err("cloning the stream"))?;
            Some(std::thread::spawn(move || {
                let mut buf = vec![0u8; CHUNK_SIZE];
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if write_message(&mut w, &Message::Stdin(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                let _ = write_message(&mut w, &Message::StdinEof);
            }))
        }
        None => None,
    };
    let result = loop {
        match recv(&stream, deadline, "waiting for the command to finish") {
            Ok(Message::Stdout(b)) => {
                if let Err(e) = sink(stdout, &b) {
                    break Err(e);
                }
            }
            Ok(Message::Stderr(b)) => {
                if let Err(e) = sink(stderr, &b) {
                    break Err(e);
                }
            }
            Ok(Message::Result(r)) => break checked_result(r),
            Ok(other) => {
                break Err(ChannelError::Protocol(format!(
                    "unexpected {} during an exec",
                    other.kind()
                )))
            }
            Err(e) => break Err(e),
        }
    };
    // Closing tells the guest to kill the command if it is still running
    // (timeouts, sink errors) and unblocks the stdin thread's writes.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Some(f) = feeder {
        // The thread may sit in a read of the caller's stdin: do not wait for it
        // unless it has already finished.
        if f.is_finished() {
            let _ = f.join();
        }
    }
    result
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

    #[test]
    fn run_receiver_streams_and_acks() {
        let (host, guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut g = &guest;
            let step = SetupStep {
                index: 0,
                command: "true".into(),
                result: RunResult {
                    exit_code: Some(0),
                    ..Default::default()
                },
            };
            for m in [
                Message::SetupStarted {
                    index: 0,
                    command: "true".into(),
                },
                Message::Stdout(b"a".to_vec()),
                Message::SetupResult(step),
                Message::Stderr(b"b".to_vec()),
                Message::Stdout(b"c".to_vec()),
                Message::Result(RunResult {
                    exit_code: Some(4),
                    ..Default::default()
                }),
            ] {
                write_message(&mut g, &m).unwrap();
            }
            read_message(&mut g).unwrap()
        });
        let mut c = Control::from_stream(host);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let report = c
            .receive_run(&["true".into()], &mut out, &mut err, Duration::from_secs(5))
            .unwrap();
        assert_eq!(out, b"ac");
        assert_eq!(err, b"b");
        assert_eq!(report.setup.len(), 1);
        assert!(matches!(
            report.outcome,
            RunOutcome::Completed(RunResult {
                exit_code: Some(4),
                ..
            })
        ));
        assert_eq!(t.join().unwrap(), Some(Message::Ack));
    }

    #[test]
    fn run_receiver_times_out_on_a_silent_guest() {
        let (host, _guest) = UnixStream::pair().unwrap();
        let mut c = Control::from_stream(host);
        let err = c
            .receive_run(
                &[],
                &mut io::sink(),
                &mut io::sink(),
                Duration::from_millis(100),
            )
            .unwrap_err();
        assert!(matches!(err, ChannelError::Timeout(_)), "{err}");
    }

    #[test]
    fn run_receiver_rejects_garbage() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        guest.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut c = Control::from_stream(host);
        let err = c
            .receive_run(
                &[],
                &mut io::sink(),
                &mut io::sink(),
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert!(
            matches!(err, ChannelError::Frame(FrameError::Oversized { .. })),
            "{err}"
        );
    }
}

//! The exec service and run mode, written over any byte stream so the host
//! can test them over Unix sockets while the guest uses vsock.
//!
//! Every connection is handled in its own thread, and nothing a peer sends
//! can panic it: a bad frame gets an `error` reply and that connection is
//! closed; the service keeps accepting.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use vmkit_channel::{read_message, write_message, ExecRequest, Message, RunSpec, SetupStep};
use vmkit_protocol::RunResult;

use crate::command::{failed_to_start, finish, start, Launch, DEFAULT_KILL_GRACE};
use crate::image::Defaults;
use crate::reaper::Reaper;

/// How long a new connection may take to send its first message, and a
/// started frame to arrive in full.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long run mode waits for the host's `ack` before powering off anyway.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A bidirectional stream the service can run over.
pub trait Connection: Read + Write + AsFd + Send + 'static + Sized {
    /// A second handle to the same stream (one thread reads, one writes).
    fn try_clone(&self) -> io::Result<Self>;
    /// Shuts both directions down, waking any thread blocked on it.
    fn shutdown(&self);
    /// Bounds blocking reads (`None`: no bound).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Connection for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self) {
        let _ = UnixStream::shutdown(self, std::net::Shutdown::Both);
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
}

/// Writes frames from several threads without interleaving them.
struct Writer<C>(Mutex<C>);

impl<C: Connection> Writer<C> {
    fn send(&self, msg: &Message) -> io::Result<()> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        write_message(&mut *c, msg).map_err(|e| io::Error::other(e.to_string()))
    }
}

/// The exec service: answers `exec`, copies, `freeze`, `shutdown` and
/// `ping` on each connection.
pub struct Service {
    defaults: Defaults,
    kill_grace: Duration,
    frame_timeout: Duration,
    max_connections: usize,
    active: AtomicUsize,
    shutdown: Mutex<Option<Sender<()>>>,
    freezer: Option<crate::freeze::Freezer>,
}

impl Service {
    /// A service running commands with `defaults`; a `shutdown` request is
    /// acknowledged and then signalled on `shutdown` (the caller powers off).
    pub fn new(defaults: Defaults, shutdown: Option<Sender<()>>) -> Service {
        Service {
            defaults,
            kill_grace: DEFAULT_KILL_GRACE,
            frame_timeout: FRAME_TIMEOUT,
            max_connections: 256,
            active: AtomicUsize::new(0),
            shutdown: Mutex::new(shutdown),
            freezer: None,
        }
    }

    /// What a `freeze` freezes (without it, `freeze` is refused).
    pub fn with_freezer(mut self, freezer: crate::freeze::Freezer) -> Self {
        self.freezer = Some(freezer);
        self
    }

    /// Time between SIGTERM and SIGKILL when an exec times out.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// How long a connection may stay silent before its first message, and
    /// how long a frame may take to arrive once started (default 30 s); a
    /// peer that stalls gets an `error` and is disconnected.
    pub fn with_frame_timeout(mut self, timeout: Duration) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// At most this many connections are served at once; more are refused
    /// with an `error` (a thread per connection must stay bounded).
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Accepts connections forever, each in its own thread.
    pub fn serve<C: Connection>(
        self: &Arc<Self>,
        mut accept: impl FnMut() -> io::Result<C>,
    ) -> io::Result<()> {
        loop {
            match accept() {
                Ok(c) => self.spawn_handler(c),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of fds or memory for a moment: do not spin, do not die.
                    crate::log(&format!("exec service: accept: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Handles `conn` in a new thread.
    pub fn spawn_handler<C: Connection>(self: &Arc<Self>, mut conn: C) {
        if self.active.fetch_add(1, Ordering::SeqCst) >= self.max_connections {
            self.active.fetch_sub(1, Ordering::SeqCst);
            let _ = write_message(
                &mut conn,
                &Message::Error {
                    message: "too many concurrent connections".into(),
                },
            );
            conn.shutdown();
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("exec".into())
            .spawn(move || {
                // A bug must cost one connection, not the service.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| me.handle(conn)));
                me.active.fetch_sub(1, Ordering::SeqCst);
                if r.is_err() {
                    crate::log("exec service: a connection handler panicked");
                }
            });
        if let Err(e) = spawned {
            self.active.fetch_sub(1, Ordering::SeqCst);
            crate::log(&format!("exec service: cannot start a thread: {e}"));
        }
    }

    /// Serves one connection to its end in the calling thread.
    pub fn handle<C: Connection>(&self, mut conn: C) {
        let _ = conn.set_read_timeout(Some(self.frame_timeout));
        let first = read_message(&mut conn);
        let _ = conn.set_read_timeout(None);
        let reply = match first {
            Ok(None) => None,
            Ok(Some(Message::Exec(req))) => {
                self.exec(conn, req);
                return;
            }
            Ok(Some(Message::CopyIn(req))) => {
                crate::copy::copy_in(conn, &req, self.frame_timeout);
                return;
            }
            Ok(Some(Message::CopyOut(req))) => {
                crate::copy::copy_out(conn, &req);
                return;
            }
            Ok(Some(Message::Freeze(req))) => match &self.freezer {
                Some(f) => {
                    f.session(conn, &req);
                    return;
                }
                None => Some(Message::Error {
                    message: "this guest has no filesystems to freeze".into(),
                }),
            },
            Ok(Some(Message::Ping)) => Some(Message::Pong),
            Ok(Some(Message::Shutdown)) => {
                let _ = write_message(&mut conn, &Message::Ack);
                if let Some(tx) = self
                    .shutdown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    let _ = tx.send(());
                }
                None
            }
            Ok(Some(other)) => Some(Message::Error {
                message: format!(
                    "expected exec, copyIn, copyOut, freeze, shutdown or ping, got {}",
                    other.kind()
                ),
            }),
            Err(e) => Some(Message::Error {
                message: format!("bad frame: {e}"),
            }),
        };
        if let Some(r) = reply {
            let _ = write_message(&mut conn, &r);
        }
        conn.shutdown();
    }

    fn exec<C: Connection>(&self, conn: C, req: ExecRequest) {
        let reader = match conn.try_clone() {
            Ok(r) => r,
            Err(e) => {
                crate::log(&format!("exec service: cannot clone a connection: {e}"));
                conn.shutdown();
                return;
            }
        };
        let writer = Writer(Mutex::new(conn));
        if let Err(e) = req.validate() {
            let _ = writer.send(&Message::Error { message: e });
            reader.shutdown();
            return;
        }
        let result = match Launch::from_request(&req, &self.defaults).and_then(|mut l| {
            l.kill_grace = self.kill_grace;
            let s = start(&l, Reaper::global())?;
            Ok((l, s))
        }) {
            Err(e) => failed_to_start(e),
            Ok((launch, mut started)) => {
                let note = Mutex::new(None);
                let handle = Arc::clone(&started.handle);
                let stdin = started.stdin.take();
                let resizer = started.resizer.take();
                let tty = launch.tty;
                let done = AtomicBool::new(false);
                // Closed when the command is done, so the feeder wakes at
                // once instead of at its next poll timeout (that wait was
                // added to every exec's latency). Without it (no fds left),
                // the feeder polls as it did.
                // Close-on-exec: a command started meanwhile by another exec
                // must not hold the write end open.
                let (wake_rx, wake_tx) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
                    Ok((rx, tx)) => (Some(rx), Some(tx)),
                    Err(_) => (None, None),
                };
                std::thread::scope(|s| {
                    let (note, done) = (&note, &done);
                    let wake = wake_rx.as_ref().map(|fd| fd.as_fd());
                    let timeout = self.frame_timeout;
                    let input = Input {
                        stdin,
                        tty,
                        resizer,
                    };
                    s.spawn(move || feed(reader, input, &handle, note, done, wake, timeout));
                    let send = |m: Message| writer.send(&m);
                    let r = finish(started, &launch, &send, note);
                    done.store(true, Ordering::SeqCst);
                    drop(wake_tx);
                    r
                })
            }
        };
        let _ = writer.send(&Message::Result(result));
        writer
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .shutdown();
    }
}

/// Where what the host sends during an exec goes.
struct Input {
    /// The command's stdin (pipe or pty master), if the request asked for it.
    stdin: Option<std::fs::File>,
    /// Whether the command runs on a pty.
    tty: bool,
    /// Resizes the pty.
    resizer: Option<crate::pty::Resizer>,
}

/// Reads what the host sends during an exec: stdin, stdin EOF, signals,
/// terminal resizes. The host closing the connection (or sending garbage)
/// before the result means it gave up: the command is killed.
fn feed<C: Connection>(
    mut conn: C,
    input: Input,
    handle: &crate::command::Handle,
    note: &Mutex<Option<String>>,
    done: &AtomicBool,
    wake: Option<std::os::fd::BorrowedFd<'_>>,
    frame_timeout: Duration,
) {
    // A frame that starts must finish within this; a stalled half-frame
    // counts as garbage.
    let _ = conn.set_read_timeout(Some(frame_timeout));
    let Input {
        mut stdin,
        tty,
        resizer,
    } = input;
    if let Some(f) = &stdin {
        // Non-blocking, so a full pipe nobody reads (a background grandchild
        // holding it) cannot keep this thread, and so the exec, alive.
        let _ = nix::fcntl::fcntl(
            f,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
    }
    loop {
        // Poll instead of blocking in read so the thread notices the command
        // finished (it must not outlive the exec, and shutting the socket's
        // read side down could disturb the peer).
        let readable = {
            let mut fds = vec![PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
            fds.extend(wake.map(|w| PollFd::new(w, PollFlags::POLLIN)));
            let timeout = if wake.is_some() { 1000u16 } else { 100 };
            let polled = nix::poll::poll(&mut fds, PollTimeout::from(timeout));
            matches!(polled, Ok(n) if n > 0) && fds[0].revents().is_some_and(|e| !e.is_empty())
        };
        if done.load(Ordering::SeqCst) {
            return;
        }
        if !readable {
            continue;
        }
        match read_message(&mut conn) {
            Ok(Some(Message::Stdin(bytes))) => {
                // A command that closed its stdin just loses the rest.
                if let Some(f) = stdin.as_mut() {
                    if !write_stdin(f, &bytes, done) {
                        stdin = None;
                    }
                }
            }
            Ok(Some(Message::StdinEof)) => {
                if tty {
                    // A tty has no EOF of its own: send the EOF character.
                    if let Some(f) = stdin.as_mut() {
                        let _ = f.write_all(&[4]);
                    }
                }
                stdin = None;
            }
            Ok(Some(Message::Signal { signal })) => handle.signal(signal),
            Ok(Some(Message::Resize(size))) => {
                // Not a tty: nothing to resize, and no reason to fail the exec.
                if let Some(r) = &resizer {
                    r.resize(size);
                }
            }
            Ok(Some(Message::Ping)) => {}
            Ok(None) => {
                handle.signal(libc::SIGKILL);
                return;
            }
            Ok(Some(other)) => {
                *note.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("unexpected {} from host during exec", other.kind()));
                handle.signal(libc::SIGKILL);
                return;
            }
            Err(e) => {
                *note.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("bad frame from host: {e}"));
                handle.signal(libc::SIGKILL);
                return;
            }
        }
    }
}

/// Writes all of `bytes` to the (non-blocking) stdin, waiting for room in
/// short polls; false once the command's stdin is closed or the exec is over.
fn write_stdin(f: &mut std::fs::File, mut bytes: &[u8], done: &AtomicBool) -> bool {
    while !bytes.is_empty() {
        match f.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if done.load(Ordering::SeqCst) {
                    return false;
                }
                let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(_) => return false,
        }
    }
    true
}

/// Run mode over the control connection: setup commands in order (the first
/// failure stops the run), then the exec command, streaming output, then the
/// result; waits for the host's `ack` so nothing is lost to the power-off.
/// `before_report` runs just before the final message (the guest flushes its
/// read-write disks there, so the host may end the VM as soon as it has it).
pub fn run_workload<C: Connection>(
    conn: C,
    spec: &RunSpec,
    defaults: &Defaults,
    kill_grace: Duration,
    before_report: &dyn Fn(),
) -> io::Result<()> {
    let mut reader = conn.try_clone()?;
    let writer = Writer(Mutex::new(conn));
    let send = |m: Message| writer.send(&m);
    let deadline = spec
        .timeout_ms
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
    let run = |command: &str| -> RunResult {
        match Launch::shell(command, defaults, deadline).and_then(|mut l| {
            l.kill_grace = kill_grace;
            let s = start(&l, Reaper::global())?;
            Ok((l, s))
        }) {
            Err(e) => failed_to_start(e),
            Ok((l, s)) => finish(s, &l, &send, &Mutex::new(None)),
        }
    };
    for (i, command) in spec.setup.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        send(Message::SetupStarted {
            index,
            command: command.clone(),
        })?;
        let result = run(command);
        let ok = result.exit_code == Some(0) && result.error.is_none();
        let step = SetupStep {
            index,
            command: command.clone(),
            result,
        };
        if !ok {
            before_report();
            send(Message::SetupFailed(step))?;
            wait_ack(&mut reader);
            return Ok(());
        }
        send(Message::SetupResult(step))?;
    }
    crate::stage("command starting");
    let result = run(&spec.exec);
    crate::stage("command ended");
    before_report();
    send(Message::Result(result))?;
    wait_ack(&mut reader);
    Ok(())
}

fn wait_ack<C: Connection>(reader: &mut C) {
    let _ = reader.set_read_timeout(Some(ACK_TIMEOUT));
    // Whatever comes (ack, EOF, garbage, timeout), the run is over.
    let _ = read_message(reader);
}

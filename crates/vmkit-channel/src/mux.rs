//! Many byte streams over one link: the host<->guest transport QEMU can
//! migrate.
//!
//! vhost-user-vsock blocks QEMU migration, so on QEMU the guest channel can
//! instead run over one virtio-serial port (a plain character device in the
//! guest, a Unix socket on the host, both migratable). This module carries
//! vsock-like streams over such a link: each side may open a stream to a
//! port of the other, and both sides pump bytes between each stream and a
//! local Unix socket. So the code above sees ordinary sockets: the host
//! relay serves the hybrid-vsock convention ([`crate::host`]) on top of it,
//! the guest init hands socketpair ends to its services.
//!
//! Why our own framing and not yamux: yamux is async (a runtime in a static
//! PID 1 and in a small relay), and what is needed is small: open, accept or
//! refuse, data, half-close, reset, per-stream credit, and `hello`, which
//! starts a new session. The relay sends `hello` whenever it connects; a
//! guest that sees a second `hello` has been restored from a snapshot under
//! a new relay, so it resets every stream it had (in-flight execs end with
//! an error) and opens its control connection again.
//!
//! Frame: `kind: u8`, `id: u32`, `len: u32` (big-endian), then `len` bytes.
//! Everything read off the link is checked before use: unknown kinds,
//! oversized lengths and frames for unknown streams are errors or ignored,
//! never a panic; a peer that sends beyond its credit is reset.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// The kernel command-line key that picks the guest's transport:
/// `microagent.transport=serial` (else vsock).
pub const CMDLINE_TRANSPORT_KEY: &str = "microagent.transport";
/// The name of the virtio-serial port carrying the mux (QEMU's
/// `virtserialport,name=`; the guest finds it in /sys/class/virtio-ports).
pub const SERIAL_PORT_NAME: &str = "microagent.channel";

/// Most payload bytes in one frame.
pub const MAX_PAYLOAD: usize = 32 * 1024;
/// Bytes a side may send on one stream before the receiver grants more.
pub const WINDOW: u32 = 256 * 1024;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 9;
/// How long an opened stream waits for the peer to accept it.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A new session: the sender starts afresh (payload: a session id).
    Hello(u64),
    /// Open stream `id` to the receiver's `port`.
    Connect { id: u32, port: u32 },
    /// Stream `id` is open.
    Accept(u32),
    /// Nobody listens on the port of stream `id`.
    Refuse(u32),
    /// Bytes on stream `id`.
    Data(u32, Vec<u8>),
    /// The receiver of stream `id` took `n` more bytes.
    Credit(u32, u32),
    /// The sender will send no more on stream `id` (half-close).
    Close(u32),
    /// Stream `id` is gone.
    Reset(u32),
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The link failed or ended.
    #[error("link: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl Frame {
    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, id, payload): (u8, u32, Vec<u8>) = match self {
            Frame::Hello(session) => (1, 0, session.to_be_bytes().to_vec()),
            Frame::Connect { id, port } => (2, *id, port.to_be_bytes().to_vec()),
            Frame::Accept(id) => (3, *id, Vec::new()),
            Frame::Refuse(id) => (4, *id, Vec::new()),
            Frame::Data(id, bytes) => (5, *id, bytes.clone()),
            Frame::Credit(id, n) => (6, *id, n.to_be_bytes().to_vec()),
            Frame::Close(id) => (7, *id, Vec::new()),
            Frame::Reset(id) => (8, *id, Vec::new()),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.push(kind);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Reads one frame; `Ok(None)` at a clean end of the link.
    pub fn read(link: &mut impl Read) -> Result<Option<Frame>, MuxError> {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match link.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(MuxError::Malformed("truncated header".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let kind = head[0];
        let id = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(MuxError::Malformed(format!(
                "payload of {len} bytes exceeds {MAX_PAYLOAD}"
            )));
        }
        let mut payload = vec![0u8; len];
        link.read_exact(&mut payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                MuxError::Malformed("truncated payload".into())
            } else {
                MuxError::Io(e)
            }
        })?;
        let fixed = |want: usize| -> Result<(), MuxError> {
            if len == want {
                Ok(())
            } else {
                Err(MuxError::Malformed(format!(
                    "frame kind {kind} needs {want} payload bytes, got {len}"
                )))
            }
        };
        let be32 = |p: &[u8]| u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        Ok(Some(match kind {
            1 => {
                fixed(8)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload);
                Frame::Hello(u64::from_be_bytes(b))
            }
            2 => {
                fixed(4)?;
                Frame::Connect {
                    id,
                    port: be32(&payload),
                }
            }
            3 => fixed(0).map(|_| Frame::Accept(id))?,
            4 => fixed(0).map(|_| Frame::Refuse(id))?,
            5 => Frame::Data(id, payload),
            6 => {
                fixed(4)?;
                Frame::Credit(id, be32(&payload))
            }
            7 => fixed(0).map(|_| Frame::Close(id))?,
            8 => fixed(0).map(|_| Frame::Reset(id))?,
            other => return Err(MuxError::Malformed(format!("unknown frame kind {other}"))),
        }))
    }
}

/// What a side does with a stream the peer opens to one of its ports:
/// returns the local socket to pump it to, or `None` to refuse.
pub type Incoming = dyn Fn(u32) -> Option<UnixStream> + Send + Sync;

/// What runs when the peer starts a new session (gets its id).
type SessionHook = Box<dyn Fn(u64) + Send>;

/// Which ids a side allocates: the host odd, the guest even, so streams
/// opened at the same moment from both ends never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host relay.
    Host,
    /// The guest init.
    Guest,
}

struct Stream {
    /// Bytes for the local socket (the writer thread drains it).
    to_local: Option<mpsc::Sender<Vec<u8>>>,
    /// The other end of `to_local` until the writer thread takes it.
    pending: Option<mpsc::Receiver<Vec<u8>>>,
    /// Bytes the peer still lets us send.
    credit: Arc<(Mutex<Option<u32>>, Condvar)>,
    /// Bytes the peer may still send before we grant more.
    peer_window: u32,
    /// The local socket, to shut down on reset.
    local: UnixStream,
    /// Set while an open waits for its answer.
    opening: Option<mpsc::Sender<bool>>,
    /// We sent `close` (the local socket reached end-of-file).
    sent_close: bool,
    /// The peer sent `close`.
    got_close: bool,
}

/// One side of a multiplexed link.
pub struct Mux {
    link: Mutex<Box<dyn Write + Send>>,
    streams: Mutex<HashMap<u32, Stream>>,
    next_id: AtomicU32,
    incoming: Box<Incoming>,
    /// The peer's current session, once it said `hello`.
    session: (Mutex<Option<u64>>, Condvar),
    /// Called when the peer starts a new session after an earlier one.
    on_new_session: Mutex<Option<SessionHook>>,
}

impl Mux {
    /// A mux writing frames to `link`; `incoming` decides about streams the
    /// peer opens. Feed it what the link reads with [`Mux::run`].
    pub fn new(role: Role, link: Box<dyn Write + Send>, incoming: Box<Incoming>) -> Arc<Mux> {
        Arc::new(Mux {
            link: Mutex::new(link),
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(if role == Role::Host { 1 } else { 2 }),
            incoming,
            session: (Mutex::new(None), Condvar::new()),
            on_new_session: Mutex::new(None),
        })
    }

    /// Runs `f` whenever the peer starts a new session after the first
    /// (the guest: it was restored under a new relay).
    /// It gets the new session's id.
    pub fn on_new_session(&self, f: impl Fn(u64) + Send + 'static) {
        *lock(&self.on_new_session) = Some(Box::new(f));
    }

    /// Says `hello` with `session`: the peer drops what it had with us.
    pub fn hello(&self, session: u64) -> io::Result<()> {
        self.send(&Frame::Hello(session))
    }

    /// Waits until the peer has said `hello` (a guest must not open
    /// streams before the relay is there to answer).
    pub fn wait_for_peer(&self, timeout: Duration) -> bool {
        let (m, cv) = &self.session;
        let guard = lock(m);
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.is_some()
    }

    fn send(&self, frame: &Frame) -> io::Result<()> {
        let bytes = frame.encode();
        let mut link = lock(&self.link);
        link.write_all(&bytes)?;
        link.flush()
    }

    /// Opens a stream to the peer's `port` and pumps it to `local`;
    /// `announce` is written to `local` once the peer accepted, before any
    /// of the peer's bytes (the relay's `OK <id>` line).
    pub fn open(
        self: &Arc<Self>,
        port: u32,
        mut local: UnixStream,
        announce: &[u8],
    ) -> io::Result<()> {
        let id = self.next_id.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.insert(id, local.try_clone()?, Some(tx));
        self.send(&Frame::Connect { id, port })?;
        match rx.recv_timeout(OPEN_TIMEOUT) {
            Ok(true) => {
                if let Err(e) = local.write_all(announce) {
                    self.reset(id);
                    return Err(e);
                }
                self.start_pumps(id, local);
                Ok(())
            }
            Ok(false) => {
                self.forget(id);
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nothing listens on port {port} across the link"),
                ))
            }
            Err(_) => {
                self.forget(id);
                let _ = self.send(&Frame::Reset(id));
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("port {port} across the link did not answer"),
                ))
            }
        }
    }

    fn insert(&self, id: u32, local: UnixStream, opening: Option<mpsc::Sender<bool>>) {
        let (tx, rx) = mpsc::channel();
        lock(&self.streams).insert(
            id,
            Stream {
                to_local: Some(tx),
                pending: Some(rx),
                credit: Arc::new((Mutex::new(Some(WINDOW)), Condvar::new())),
                peer_window: WINDOW,
                local,
                opening,
                sent_close: false,
                got_close: false,
            },
        );
    }

    fn forget(&self, id: u32) {
        if let Some(s) = lock(&self.streams).remove(&id) {
            close_stream(&s);
        }
    }

    /// Starts the two pump threads of stream `id`.
    fn start_pumps(self: &Arc<Self>, id: u32, local: UnixStream) {
        let (rx, credit) = {
            let mut streams = lock(&self.streams);
            let Some(s) = streams.get_mut(&id) else {
                return;
            };
            let Some(rx) = s.pending.take() else {
                return;
            };
            (rx, s.credit.clone())
        };
        // Link -> local socket; each chunk written is credit for the peer.
        let mux = self.clone();
        let Ok(mut writer) = local.try_clone() else {
            self.forget(id);
            return;
        };
        let was_reset = credit.clone();
        thread::spawn(move || {
            while let Ok(bytes) = rx.recv() {
                if writer.write_all(&bytes).is_err() {
                    mux.reset(id);
                    return;
                }
                let _ = mux.granted(id, bytes.len() as u32);
            }
            // The peer closed its side: end-of-file after its last bytes.
            // Reset: those bytes still arrive, then the socket is shut.
            let reset = lock(&was_reset.0).is_none();
            let _ = writer.shutdown(if reset {
                Shutdown::Both
            } else {
                Shutdown::Write
            });
        });
        // Local socket -> link, within the peer's credit.
        let mux = self.clone();
        let mut reader = local;
        thread::spawn(move || {
            let mut buf = vec![0u8; MAX_PAYLOAD];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(n) if n > 0 => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // End-of-file, or a reset after the last bytes (a Unix
                    // socket closed with unread input reports ECONNRESET):
                    // everything read was sent, so the peer gets a close.
                    _ => {
                        let _ = mux.send(&Frame::Close(id));
                        mux.finished(id, true);
                        return;
                    }
                };
                if !take_credit(&credit, n as u32) {
                    return; // reset meanwhile
                }
                if mux.send(&Frame::Data(id, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        });
    }

    /// Ends stream `id` here and tells the peer.
    fn reset(&self, id: u32) {
        if lock(&self.streams).contains_key(&id) {
            self.forget(id);
            let _ = self.send(&Frame::Reset(id));
        }
    }

    /// The peer reset stream `id`: what it sent before still reaches the
    /// local socket (the writer thread drains it, then shuts the socket).
    fn reset_by_peer(&self, id: u32) {
        let Some(s) = lock(&self.streams).remove(&id) else {
            return;
        };
        let (m, cv) = &*s.credit;
        *lock(m) = None;
        cv.notify_all();
        if let Some(tx) = &s.opening {
            let _ = tx.send(false);
        }
        if s.pending.is_some() {
            // No writer thread yet: nothing to drain.
            let _ = s.local.shutdown(Shutdown::Both);
        }
    }

    /// Resets every stream (the peer's session ended).
    fn reset_all(&self) {
        let streams: Vec<Stream> = lock(&self.streams).drain().map(|(_, s)| s).collect();
        for s in &streams {
            close_stream(s);
        }
    }

    /// Reads frames from `link` until it ends; returns why it ended.
    pub fn run(self: &Arc<Self>, mut link: impl Read) -> MuxError {
        loop {
            let frame = match Frame::read(&mut link) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.reset_all();
                    return MuxError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the link closed",
                    ));
                }
                Err(e) => {
                    self.reset_all();
                    return e;
                }
            };
            self.handle(frame);
        }
    }

    fn handle(self: &Arc<Self>, frame: Frame) {
        match frame {
            Frame::Hello(session) => {
                let (m, cv) = &self.session;
                let previous = lock(m).replace(session);
                cv.notify_all();
                if previous.is_some_and(|p| p != session) {
                    self.reset_all();
                    if let Some(f) = &*lock(&self.on_new_session) {
                        f(session);
                    }
                }
            }
            Frame::Connect { id, port } => {
                if lock(&self.streams).contains_key(&id) {
                    let _ = self.send(&Frame::Reset(id));
                    return;
                }
                // Deciding may block (a host connect): not on the link thread.
                let mux = self.clone();
                thread::spawn(move || match (mux.incoming)(port) {
                    Some(local) => match local.try_clone() {
                        Ok(copy) => {
                            mux.insert(id, copy, None);
                            mux.start_pumps(id, local);
                            let _ = mux.send(&Frame::Accept(id));
                        }
                        Err(_) => {
                            let _ = mux.send(&Frame::Refuse(id));
                        }
                    },
                    None => {
                        let _ = mux.send(&Frame::Refuse(id));
                    }
                });
            }
            Frame::Accept(id) | Frame::Refuse(id) => {
                let accepted = matches!(frame, Frame::Accept(_));
                let opening = lock(&self.streams)
                    .get_mut(&id)
                    .and_then(|s| s.opening.take());
                match opening {
                    Some(tx) => {
                        let _ = tx.send(accepted);
                    }
                    None if accepted => {
                        let _ = self.send(&Frame::Reset(id));
                    }
                    None => {}
                }
            }
            Frame::Data(id, bytes) => {
                let mut streams = lock(&self.streams);
                let Some(s) = streams.get_mut(&id) else {
                    drop(streams);
                    let _ = self.send(&Frame::Reset(id));
                    return;
                };
                let n = bytes.len() as u32;
                let ok = n <= s.peer_window
                    && s.to_local.as_ref().is_some_and(|tx| tx.send(bytes).is_ok());
                if ok {
                    s.peer_window -= n;
                } else {
                    drop(streams);
                    self.reset(id);
                }
            }
            Frame::Credit(id, n) => {
                if let Some(s) = lock(&self.streams).get(&id) {
                    let (m, cv) = &*s.credit;
                    if let Some(c) = lock(m).as_mut() {
                        *c = c.saturating_add(n).min(WINDOW);
                    }
                    cv.notify_all();
                }
            }
            // Dropping the sender ends the writer thread, which
            // half-closes the local socket after the last bytes.
            Frame::Close(id) => self.finished(id, false),
            Frame::Reset(id) => self.reset_by_peer(id),
        }
    }

    /// Streams open right now (for tests and diagnostics).
    pub fn open_streams(&self) -> usize {
        lock(&self.streams).len()
    }

    /// The local side took `n` bytes of stream `id`: the peer may send
    /// that much more.
    fn granted(&self, id: u32, n: u32) -> io::Result<()> {
        if let Some(s) = lock(&self.streams).get_mut(&id) {
            s.peer_window = s.peer_window.saturating_add(n).min(WINDOW);
        }
        self.send(&Frame::Credit(id, n))
    }

    /// One direction of stream `id` is finished; once both are, the stream
    /// is forgotten (its sockets are already half-closed both ways).
    fn finished(&self, id: u32, ours: bool) {
        let mut streams = lock(&self.streams);
        if let Some(s) = streams.get_mut(&id) {
            if ours {
                s.sent_close = true;
            } else {
                s.got_close = true;
                s.to_local = None;
            }
            if s.sent_close && s.got_close {
                streams.remove(&id);
            }
        }
    }
}

fn close_stream(s: &Stream) {
    let _ = s.local.shutdown(Shutdown::Both);
    let (m, cv) = &*s.credit;
    *lock(m) = None;
    cv.notify_all();
    if let Some(tx) = &s.opening {
        let _ = tx.send(false);
    }
}

/// Waits until `n` bytes of credit are there and takes them; false if the
/// stream was reset meanwhile.
fn take_credit(credit: &(Mutex<Option<u32>>, Condvar), n: u32) -> bool {
    let (m, cv) = credit;
    let mut c = lock(m);
    loop {
        match c.as_mut() {
            None => return false,
            Some(have) if *have >= n => {
                *have -= n;
                return true;
            }
            Some(_) => c = cv.wait(c).unwrap_or_else(|p| p.into_inner()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! The link to the VMM: Ethernet frames in and out.
//!
//! - `stream`: a Unix stream socket (QEMU `-netdev stream`); each frame is a
//!   4-byte big-endian length and the frame. Output frames are appended to
//!   one buffer and written with as few `write` calls as the socket allows.
//! - `tap`: a TAP device that Firecracker owns, reached through a packet
//!   socket on its host side ([`crate::tap`]); one `recv`/`send` is one
//!   frame behind a virtio_net_hdr.
//! - `datagram`: a Unix datagram socket (Apple VF's
//!   `VZFileHandleNetworkDeviceAttachment`); one datagram is one frame.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;

use crate::config::Frontend;
use crate::tap::{self, TapLink, VNET_HDR_LEN};

/// The largest frame accepted or produced (a 9000-byte MTU plus headers).
pub const MAX_FRAME: usize = 9022;
/// How much output may wait for the VMM before the stack stops sending
/// (back-pressure: smoltcp keeps the data until there is room).
const TX_HIGH_WATER: usize = 1 << 20;
/// How much is read from the VMM per wake-up before the stack gets to run.
const RX_CHUNK: usize = 256 << 10;

/// A bound frontend that waits for the VMM.
#[derive(Debug)]
pub enum Listener {
    /// Listening on the stream socket.
    Stream(UnixListener),
    /// The TAP device made for Firecracker and the packet socket on it
    /// (ready at once).
    Tap(TapLink),
    /// A bound datagram socket (ready at once; the peer is whoever sends
    /// the first frame).
    Datagram(UnixDatagram),
}

impl Listener {
    /// Creates the stream socket (replacing a stale one), the datagram
    /// socket, or the TAP device with its packet socket.
    pub fn bind(frontend: &Frontend) -> io::Result<Listener> {
        match frontend {
            Frontend::Stream { path } => {
                remove_stale(path)?;
                Ok(Listener::Stream(UnixListener::bind(path)?))
            }
            Frontend::Tap { name } => Ok(Listener::Tap(TapLink::create(name)?)),
            Frontend::Datagram { path } => {
                remove_stale(path)?;
                let socket = UnixDatagram::bind(path)?;
                socket.set_nonblocking(true)?;
                // What Virtualization.framework asks of the peer's socket,
                // mirrored here: room for bursts both ways.
                let raw = socket2::SockRef::from(&socket);
                raw.set_send_buffer_size(1 << 20)?;
                raw.set_recv_buffer_size(4 << 20)?;
                Ok(Listener::Datagram(socket))
            }
        }
    }

    /// Adopts an inherited, already listening Unix stream socket for the
    /// stream frontend (checked to be listening on the frontend's path).
    pub fn inherited_stream(fd: RawFd, frontend: &Frontend) -> io::Result<Listener> {
        let Frontend::Stream { path } = frontend else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an inherited socket serves only the stream frontend",
            ));
        };
        vmkit_channel::inherit::inherited_listener(fd, path).map(Listener::Stream)
    }

    /// The fd to poll for the VMM's connection.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Stream(l) => l.as_fd(),
            Listener::Tap(t) => t.socket(),
            Listener::Datagram(d) => d.as_fd(),
        }
    }

    /// Waits for the VMM (stream) and returns the frame link.
    pub fn accept(self) -> io::Result<FrameLink> {
        let io = match self {
            Listener::Stream(listener) => {
                let (stream, _) = listener.accept()?;
                stream.set_nonblocking(true)?;
                Io::Stream(stream)
            }
            Listener::Tap(link) => Io::Tap(link),
            Listener::Datagram(socket) => Io::Datagram {
                socket,
                peer: false,
            },
        };
        Ok(FrameLink::new(io))
    }
}

fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[derive(Debug)]
enum Io {
    Stream(UnixStream),
    Tap(TapLink),
    Datagram { socket: UnixDatagram, peer: bool },
}

/// What a read of the link found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Everything available was read.
    Drained,
    /// More may be waiting (the per-wake-up budget ran out).
    More,
    /// The VMM closed the link.
    Closed,
}

/// A connected frame link.
#[derive(Debug)]
pub struct FrameLink {
    io: Io,
    /// Bytes read from a stream and not yet handed out (a partial frame at
    /// most between calls); `rx_len` of them are valid.
    rx: Box<[u8]>,
    rx_len: usize,
    tx: TxQueue,
}

/// The link's output queue: frames waiting for the VMM.
#[derive(Debug)]
pub struct TxQueue {
    /// One frame per `send` (tap, datagram) rather than a byte stream.
    tap: bool,
    /// Zero bytes before each frame (the tap's virtio_net_hdr).
    prefix: usize,
    buf: Vec<u8>,
    start: usize,
    frames: VecDeque<Vec<u8>>,
    frame_bytes: usize,
}

impl TxQueue {
    /// Whether output may be queued now (below the high-water mark).
    pub fn can_send(&self) -> bool {
        self.backlog() < TX_HIGH_WATER
    }

    /// Bytes waiting for the VMM.
    pub fn backlog(&self) -> usize {
        (self.buf.len() - self.start) + self.frame_bytes
    }

    /// Queues one frame of `len` bytes, filled in place by `fill`.
    pub fn queue<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.tap {
            let mut frame = vec![0u8; self.prefix + len];
            let r = fill(&mut frame[self.prefix..]);
            self.frame_bytes += frame.len();
            self.frames.push_back(frame);
            r
        } else {
            let at = self.buf.len();
            self.buf.extend_from_slice(&(len as u32).to_be_bytes());
            self.buf.resize(at + 4 + len, 0);
            fill(&mut self.buf[at + 4..])
        }
    }
}

impl FrameLink {
    /// A link over an already connected stream socket (tests, socketpairs).
    pub fn from_stream(stream: UnixStream) -> io::Result<FrameLink> {
        stream.set_nonblocking(true)?;
        Ok(FrameLink::new(Io::Stream(stream)))
    }

    fn new(io: Io) -> FrameLink {
        let tap = !matches!(io, Io::Stream(_));
        let prefix = if matches!(io, Io::Tap(_)) {
            VNET_HDR_LEN
        } else {
            0
        };
        FrameLink {
            io,
            rx: if tap {
                Box::default()
            } else {
                vec![0; RX_CHUNK + 4 + MAX_FRAME].into_boxed_slice()
            },
            rx_len: 0,
            tx: TxQueue {
                tap,
                prefix,
                buf: Vec::with_capacity(TX_HIGH_WATER),
                start: 0,
                frames: VecDeque::new(),
                frame_bytes: 0,
            },
        }
    }

    /// The output queue.
    pub fn tx(&mut self) -> &mut TxQueue {
        &mut self.tx
    }

    /// The fd to poll.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.io {
            Io::Stream(s) => s.as_fd(),
            Io::Tap(t) => t.socket(),
            Io::Datagram { socket, .. } => socket.as_fd(),
        }
    }

    /// Reads what the VMM sent and hands each frame to `frame`. A stream
    /// whose length prefix is impossible is an error (it cannot be resynced).
    pub fn read_frames(
        &mut self,
        mut frame: impl FnMut(&[u8], &mut TxQueue),
    ) -> io::Result<ReadOutcome> {
        let mut budget = RX_CHUNK;
        match &mut self.io {
            Io::Datagram { socket, peer } => {
                let mut buf = [0u8; MAX_FRAME];
                while budget > 0 {
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            budget = budget.saturating_sub(n.max(64));
                            if !*peer {
                                // The first sender is the VMM; it must have
                                // bound its socket so it can be answered.
                                let Some(path) = from.as_pathname() else {
                                    continue;
                                };
                                socket.connect(path)?;
                                *peer = true;
                            }
                            frame(&buf[..n], &mut self.tx);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(ReadOutcome::Drained)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(ReadOutcome::More)
            }
            Io::Tap(link) => {
                let mut buf = [0u8; VNET_HDR_LEN + MAX_FRAME];
                while budget > 0 {
                    // SAFETY: recv writes at most `buf.len()` bytes into
                    // `buf`; MSG_TRUNC makes it return the frame's real
                    // length, so an oversized one is seen and dropped.
                    let n = unsafe {
                        libc::recv(
                            link.socket().as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_TRUNC,
                        )
                    };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        match e.kind() {
                            io::ErrorKind::WouldBlock => return Ok(ReadOutcome::Drained),
                            io::ErrorKind::Interrupted => continue,
                            _ => return Err(e),
                        }
                    }
                    let n = n as usize;
                    budget = budget.saturating_sub(n.max(64));
                    if n > buf.len() {
                        continue;
                    }
                    if let tap::Received::Frame(f) = tap::receive(&mut buf[..n]) {
                        frame(f, &mut self.tx);
                    }
                }
                Ok(ReadOutcome::More)
            }
            Io::Stream(stream) => {
                while budget > 0 {
                    let space = self.rx.len() - self.rx_len;
                    let n = match stream.read(&mut self.rx[self.rx_len..]) {
                        Ok(0) => return Ok(ReadOutcome::Closed),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(ReadOutcome::Drained)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    self.rx_len += n;
                    budget = budget.saturating_sub(n);
                    // Hand out every complete frame, keep the partial one.
                    let mut at = 0;
                    while self.rx_len - at >= 4 {
                        let head = &self.rx[at..at + 4];
                        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                        if len > MAX_FRAME {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("frontend sent a {len}-byte frame (limit {MAX_FRAME})"),
                            ));
                        }
                        if self.rx_len - at < 4 + len {
                            break;
                        }
                        frame(&self.rx[at + 4..at + 4 + len], &mut self.tx);
                        at += 4 + len;
                    }
                    self.rx.copy_within(at..self.rx_len, 0);
                    self.rx_len -= at;
                    if n < space {
                        // A short read: the socket is empty now (poll is
                        // level-triggered, so nothing is missed).
                        return Ok(ReadOutcome::Drained);
                    }
                }
                Ok(ReadOutcome::More)
            }
        }
    }

    /// Bytes waiting for the VMM.
    pub fn backlog(&self) -> usize {
        self.tx.backlog()
    }

    /// Writes what is queued, as far as the VMM takes it without blocking.
    pub fn flush(&mut self) -> io::Result<()> {
        let tx = &mut self.tx;
        match &mut self.io {
            Io::Stream(stream) => {
                while tx.start < tx.buf.len() {
                    match stream.write(&tx.buf[tx.start..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => tx.start += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if tx.start == tx.buf.len() {
                    tx.buf.clear();
                    tx.start = 0;
                } else if tx.start > TX_HIGH_WATER / 2 {
                    tx.buf.drain(..tx.start);
                    tx.start = 0;
                }
                Ok(())
            }
            Io::Datagram { peer: false, .. } => {
                // Nobody to send to yet: what the stack says unasked (it
                // says nothing before the guest spoke) is dropped.
                tx.frames.clear();
                tx.frame_bytes = 0;
                Ok(())
            }
            Io::Tap(_) | Io::Datagram { .. } => {
                while let Some(frame) = tx.frames.front() {
                    let sent = match &mut self.io {
                        Io::Tap(link) => send_frame(link, frame),
                        Io::Datagram { socket, .. } => socket.send(frame),
                        Io::Stream(_) => unreachable!("stream frames are in the byte buffer"),
                    };
                    match sent {
                        Ok(_) => {
                            tx.frame_bytes -= frame.len();
                            tx.frames.pop_front();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }
}

fn send_frame(link: &TapLink, frame: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads `frame.len()` bytes from `frame`.
    let n = unsafe {
        libc::send(
            link.socket().as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        // No carrier (Firecracker has not opened the TAP yet, or is gone):
        // the frame is lost, as on a wire nobody listens to.
        if e.raw_os_error() == Some(libc::ENETDOWN) || e.raw_os_error() == Some(libc::ENOBUFS) {
            return Ok(frame.len());
        }
        return Err(e);
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_frames_are_split_and_joined_by_length() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut link = FrameLink::from_stream(ours).unwrap();
        let mut wire = Vec::new();
        for len in [60usize, 1514, 14] {
            wire.extend_from_slice(&(len as u32).to_be_bytes());
            wire.extend(std::iter::repeat_n(len as u8, len));
        }
        // Split the wire mid-prefix to show partial reads are kept.
        theirs.write_all(&wire[..70]).unwrap();
        let mut got = Vec::new();
        link.read_frames(|f, _| got.push(f.to_vec())).unwrap();
        theirs.write_all(&wire[70..]).unwrap();
        link.read_frames(|f, _| got.push(f.to_vec())).unwrap();
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![60, 1514, 14]
        );

        link.tx().queue(3, |b| b.copy_from_slice(b"abc"));
        link.flush().unwrap();
        let mut out = [0u8; 7];
        theirs.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"\0\0\0\x03abc");

        theirs.write_all(&100_000u32.to_be_bytes()).unwrap();
        let err = link.read_frames(|_, _| {}).unwrap_err();
        assert!(err.to_string().contains("100000"), "{err}");
        drop(theirs);
    }

    #[test]
    fn a_closed_stream_is_reported() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut link = FrameLink::from_stream(ours).unwrap();
        drop(theirs);
        assert_eq!(link.read_frames(|_, _| {}).unwrap(), ReadOutcome::Closed);
    }

    #[test]
    fn an_inherited_socket_is_checked_before_it_is_served() {
        use std::os::fd::IntoRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let frontend = Frontend::Stream { path: path.clone() };

        let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
        let listener = Listener::inherited_stream(fd, &frontend).unwrap();
        let mut vmm = UnixStream::connect(&path).unwrap();
        let mut link = listener.accept().unwrap();
        vmm.write_all(b"\0\0\0\x01x").unwrap();
        let mut got = Vec::new();
        while got.is_empty() {
            link.read_frames(|f, _| got.push(f.to_vec())).unwrap();
        }
        assert_eq!(got, vec![b"x".to_vec()]);

        // Adoption's checks are vmkit_channel::inherit's, tested there;
        // a datagram frontend cannot take an inherited stream socket.
        let fd = UnixListener::bind(dir.path().join("d.sock"))
            .unwrap()
            .into_raw_fd();
        let datagram = Frontend::Datagram {
            path: dir.path().join("d.sock"),
        };
        assert!(Listener::inherited_stream(fd, &datagram).is_err());
    }
}

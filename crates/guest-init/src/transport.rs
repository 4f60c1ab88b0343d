//! The guest's end of the host channel: AF_VSOCK, or streams multiplexed
//! over a virtio-serial port ([`vmkit_channel::mux`]), chosen by the kernel
//! command line (`microagent.transport=serial`; vsock otherwise).
//!
//! Firecracker and Apple VF give the guest vsock. QEMU can too (through
//! vhost-user-vsock), but such a VM cannot be migrated, so QEMU VMs that
//! may be snapshotted use the serial port, which can. Both give the rest of
//! the init the same thing: a listener for the exec service and a way to
//! reach the host's control port, as [`Stream`]s.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use vmkit_channel::mux::{Mux, Role, CMDLINE_TRANSPORT_KEY, SERIAL_PORT_NAME};

use crate::service::Connection;
use crate::vsock::{VsockListener, VsockStream, HOST_CID};

/// How long the serial port may take to appear and the relay to say hello.
const SERIAL_READY: Duration = Duration::from_secs(30);

/// Listeners of the serial transport, by port.
type PortTable = Arc<Mutex<HashMap<u32, mpsc::Sender<UnixStream>>>>;

/// How this guest reaches the host.
pub enum Transport {
    /// AF_VSOCK to CID 2.
    Vsock,
    /// The multiplexed serial port.
    Serial {
        /// The mux over the port.
        mux: Arc<Mux>,
        /// Who accepts streams the host opens, by port.
        listeners: PortTable,
    },
}

/// A connected stream, whichever the transport.
#[derive(Debug)]
pub enum Stream {
    /// A vsock stream.
    Vsock(VsockStream),
    /// One end of a socket pair the mux pumps.
    Unix(UnixStream),
}

/// A listener, whichever the transport.
pub enum Listener {
    /// A vsock listener.
    Vsock(VsockListener),
    /// Streams the host opened to this port.
    Serial(mpsc::Receiver<UnixStream>),
}

impl Transport {
    /// The transport the kernel command line asks for.
    pub fn from_cmdline(cmdline: &str) -> io::Result<Transport> {
        let wanted = cmdline.split_ascii_whitespace().find_map(|a| {
            a.strip_prefix(CMDLINE_TRANSPORT_KEY)
                .and_then(|r| r.strip_prefix('='))
        });
        match wanted {
            None | Some("vsock") => Ok(Transport::Vsock),
            Some("serial") => Self::serial(),
            Some(other) => Err(io::Error::other(format!(
                "unknown {CMDLINE_TRANSPORT_KEY}={other:?} (vsock or serial)"
            ))),
        }
    }

    fn serial() -> io::Result<Transport> {
        let device = wait_for_port(SERIAL_PORT_NAME)?;
        let port = File::options().read(true).write(true).open(&device)?;
        let listeners: PortTable = Arc::default();
        let table = listeners.clone();
        let mux = Mux::new(
            Role::Guest,
            Box::new(port.try_clone()?),
            Box::new(move |p| {
                let tx = table.lock().ok()?.get(&p)?.clone();
                let (ours, theirs) = UnixStream::pair().ok()?;
                tx.send(theirs).ok()?;
                Some(ours)
            }),
        );
        let m = mux.clone();
        std::thread::spawn(move || {
            let why = m.run(port);
            crate::log(&format!("host channel (serial) ended: {why}"));
        });
        if !mux.wait_for_peer(SERIAL_READY) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the host relay did not answer on {}", device.display()),
            ));
        }
        Ok(Transport::Serial { mux, listeners })
    }

    /// Listens on `port` for streams from the host.
    pub fn listen(&self, port: u32) -> io::Result<Listener> {
        match self {
            Transport::Vsock => Ok(Listener::Vsock(VsockListener::bind(port)?)),
            Transport::Serial { listeners, .. } => {
                let (tx, rx) = mpsc::channel();
                listeners
                    .lock()
                    .map_err(|_| io::Error::other("listener table poisoned"))?
                    .insert(port, tx);
                Ok(Listener::Serial(rx))
            }
        }
    }

    /// Connects to the host's `port`.
    pub fn connect_host(&self, port: u32) -> io::Result<Stream> {
        match self {
            Transport::Vsock => Ok(Stream::Vsock(VsockStream::connect(HOST_CID, port)?)),
            Transport::Serial { mux, .. } => {
                let (ours, theirs) = UnixStream::pair()?;
                mux.open(port, theirs, b"")?;
                Ok(Stream::Unix(ours))
            }
        }
    }

    /// Runs `f` with the host's wall-clock time (ns since the epoch) when a
    /// new relay takes over the serial link: the VM was restored from a
    /// snapshot. Never called on vsock.
    pub fn on_restore(&self, f: impl Fn(u64) + Send + 'static) {
        if let Transport::Serial { mux, .. } = self {
            mux.on_new_session(f);
        }
    }
}

impl Listener {
    /// The next stream from the host.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Vsock(l) => Ok(Stream::Vsock(l.accept()?)),
            Listener::Serial(rx) => rx
                .recv()
                .map(Stream::Unix)
                .map_err(|_| io::Error::other("the host channel ended")),
        }
    }
}

/// `/dev/<vportNpM>` of the virtio-serial port called `name`, once the
/// kernel has announced it (ports are added after the device probes).
fn wait_for_port(name: &str) -> io::Result<PathBuf> {
    let deadline = Instant::now() + SERIAL_READY;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let named = std::fs::read_to_string(e.path().join("name"))
                    .is_ok_and(|n| n.trim_end() == name);
                let dev = PathBuf::from("/dev").join(e.file_name());
                if named && dev.exists() {
                    return Ok(dev);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {name}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Vsock(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Vsock(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Vsock(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Connection for Stream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Stream::Vsock(s) => Stream::Vsock(Connection::try_clone(s)?),
            Stream::Unix(s) => Stream::Unix(UnixStream::try_clone(s)?),
        })
    }
    fn shutdown(&self) {
        match self {
            Stream::Vsock(s) => Connection::shutdown(s),
            Stream::Unix(s) => Connection::shutdown(s),
        }
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Vsock(s) => Connection::set_read_timeout(s, t),
            Stream::Unix(s) => UnixStream::set_read_timeout(s, t),
        }
    }
}

impl vmkit_channel::forward::Duplex for Stream {
    fn try_clone(&self) -> io::Result<Self> {
        Connection::try_clone(self)
    }
    fn shutdown_write(&self) {
        match self {
            Stream::Vsock(s) => vmkit_channel::forward::Duplex::shutdown_write(s),
            Stream::Unix(s) => vmkit_channel::forward::Duplex::shutdown_write(s),
        }
    }
    fn shutdown_both(&self) {
        match self {
            Stream::Vsock(s) => vmkit_channel::forward::Duplex::shutdown_both(s),
            Stream::Unix(s) => vmkit_channel::forward::Duplex::shutdown_both(s),
        }
    }
}

//! The host half of the serial transport: a per-VM relay that serves the
//! hybrid-vsock convention over a [`crate::mux`] link, so the host code
//! ([`crate::host`]) works unchanged whichever transport a VM has.
//!
//! - It listens on `serial` for the VMM's virtio-serial chardev (QEMU
//!   connects at start), says `hello` with the host's wall-clock time in
//!   nanoseconds as the session id (a restored guest sets its clock from it),
//!   then reads frames until the VMM goes away, and exits.
//! - It listens on `uds` (the workspace's `v.sock`): a client sends
//!   `CONNECT <port>\n`, gets `OK <id>\n` once the guest accepted, then the
//!   stream is the guest's port.
//! - A stream the guest opens to host port P is connected to `<uds>_P`, the
//!   listener the host code bound, or refused when nothing listens there.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::host::listener_path;
use crate::mux::{Mux, Role};

/// Longest `CONNECT <port>` line accepted from a host client.
const MAX_CONNECT_LINE: u64 = 32;
/// How long a host client may take to send its `CONNECT` line.
const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's sockets, bound and ready for the VMM and host clients.
#[derive(Debug)]
pub struct Relay {
    serial: UnixListener,
    serial_path: PathBuf,
    clients: UnixListener,
    uds_path: PathBuf,
}

impl Relay {
    /// Binds `serial` (for the VMM) and `uds` (for host clients),
    /// replacing stale sockets.
    pub fn bind(serial: &Path, uds: &Path) -> io::Result<Relay> {
        let _ = std::fs::remove_file(serial);
        let _ = std::fs::remove_file(uds);
        // Clients' socket first: the VMM's appearing means both are there.
        let clients = UnixListener::bind(uds)?;
        let serial_listener = UnixListener::bind(serial)?;
        Ok(Relay {
            serial: serial_listener,
            serial_path: serial.to_owned(),
            clients,
            uds_path: uds.to_owned(),
        })
    }

    /// The relay's sockets bound by its spawner and inherited as `serial_fd`
    /// and `uds_fd` (see [`crate::inherit`]); each must be listening on
    /// its path.
    pub fn inherited(
        serial_fd: std::os::fd::RawFd,
        serial: &Path,
        uds_fd: std::os::fd::RawFd,
        uds: &Path,
    ) -> io::Result<Relay> {
        Ok(Relay {
            serial: crate::inherit::inherited_listener(serial_fd, serial)?,
            serial_path: serial.to_owned(),
            clients: crate::inherit::inherited_listener(uds_fd, uds)?,
            uds_path: uds.to_owned(),
        })
    }

    /// The VMM's and the host clients' listeners, to hand to the process
    /// that will serve them (its spawner bound them).
    pub fn listeners(&self) -> [std::os::fd::BorrowedFd<'_>; 2] {
        use std::os::fd::AsFd;
        [self.serial.as_fd(), self.clients.as_fd()]
    }

    /// Waits for the VMM, then relays until its link ends; removes both
    /// sockets before returning.
    pub fn serve(self) -> io::Result<()> {
        let result = self.serve_inner();
        let _ = std::fs::remove_file(&self.serial_path);
        let _ = std::fs::remove_file(&self.uds_path);
        result
    }

    fn serve_inner(&self) -> io::Result<()> {
        let (link, _) = self.serial.accept()?;
        let uds = self.uds_path.clone();
        let mux = Mux::new(
            Role::Host,
            Box::new(link.try_clone()?),
            Box::new(move |port| UnixStream::connect(listener_path(&uds, port)).ok()),
        );
        mux.hello(wall_clock_ns())?;
        let clients = self.clients.try_clone()?;
        let m = mux.clone();
        thread::spawn(move || {
            for conn in clients.incoming().flatten() {
                let m = m.clone();
                thread::spawn(move || client(&m, conn));
            }
        });
        let why = mux.run(link);
        tracing_free_log(&format!("relay: link ended: {why}"));
        Ok(())
    }
}

/// One host client: its `CONNECT` line, then the stream.
fn client(mux: &Arc<Mux>, conn: UnixStream) {
    let port = match read_connect_line(&conn) {
        Ok(port) => port,
        Err(_) => return, // closing is the answer to a bad request
    };
    let _ = conn.set_read_timeout(None);
    let announce = format!("OK {port}\n");
    // A refusal closes the connection without OK, as Firecracker does.
    let _ = mux.open(port, conn, announce.as_bytes());
}

fn read_connect_line(conn: &UnixStream) -> io::Result<u32> {
    conn.set_read_timeout(Some(CONNECT_LINE_TIMEOUT))?;
    // Byte by byte through a bounded reader: what follows the newline is
    // the client's first bytes for the guest and must not be swallowed.
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1, conn.take(MAX_CONNECT_LINE));
    reader.read_until(b'\n', &mut line)?;
    parse_connect(&line).ok_or_else(|| io::Error::other("bad CONNECT line"))
}

/// `CONNECT <port>\n` -> the port.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?.strip_suffix('\n')?;
    line.strip_prefix("CONNECT ")?.parse().ok()
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The relay writes its few notes to stderr (the VMM log).
fn tracing_free_log(message: &str) {
    eprintln!("microagent channel relay: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 10001\n"), Some(10001));
        for bad in [
            &b"CONNECT 10001"[..],
            b"CONNECT -1\n",
            b"CONNECT 99999999999\n",
            b"connect 1\n",
            b"CONNECT  1\n",
            b"\xff\n",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}

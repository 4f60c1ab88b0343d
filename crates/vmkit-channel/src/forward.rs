//! Published ports over vsock: the host's side of the `forward`
//! conversation ([`dial_forward`]) and the byte relay both sides run once
//! it is set up ([`relay`]: on the host TCP client <-> vsock, in the guest
//! vsock <-> the guest service's TCP).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::host::ChannelError;
use crate::{read_message, write_message, Message};

/// Opens a connection to the guest's `127.0.0.1:<guest_port>` through the
/// VMM's hybrid vsock socket `uds_path` and the guest init's forward
/// service on vsock `forward_port`. On success the stream carries the TCP
/// connection's bytes.
pub fn dial_forward(
    uds_path: &Path,
    forward_port: u32,
    guest_port: u16,
    timeout: Duration,
) -> Result<UnixStream, ChannelError> {
    let mut s = crate::host::connect(uds_path, forward_port, timeout)?;
    let ctx = |context: &str| {
        let context = context.to_owned();
        move |source| ChannelError::Io { context, source }
    };
    s.set_read_timeout(Some(timeout)).map_err(ctx("forward"))?;
    write_message(&mut s, &Message::Forward { port: guest_port })?;
    match read_message(&mut s)? {
        Some(Message::Ack) => {}
        Some(Message::Error { message }) => return Err(ChannelError::Guest(message)),
        Some(other) => {
            return Err(ChannelError::Protocol(format!(
                "{} in answer to forward",
                other.kind()
            )))
        }
        None => return Err(ChannelError::PortClosed { port: forward_port }),
    }
    s.set_read_timeout(None).map_err(ctx("forward"))?;
    Ok(s)
}

/// A byte stream that can be cloned into a reading and a writing half and
/// half-closed.
pub trait Duplex: Read + Write + Send + Sized + 'static {
    /// A second handle to the same stream.
    fn try_clone(&self) -> io::Result<Self>;
    /// Ends the sending direction; the peer reads end-of-file.
    fn shutdown_write(&self);
    /// Ends both directions.
    fn shutdown_both(&self);
}

impl Duplex for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Duplex for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// Copies `a` (the side that connected) -> `b` (the side that answers)
/// on a new thread and `b` -> `a` on this one. The end of `a`'s stream is
/// passed on to `b` as a half-close, so a client that closes its sending
/// side still gets its answer; the end of `b`'s stream ends the whole
/// connection, because a half-close does not cross every vsock transport
/// (vhost-device-vsock drops it), and a client waiting for end-of-file
/// would otherwise wait for ever. Returns the bytes copied (`a` -> `b`,
/// `b` -> `a`).
pub fn relay<A: Duplex, B: Duplex>(a: A, b: B) -> (u64, u64) {
    let (Ok(mut a_in), Ok(mut b_out)) = (a.try_clone(), b.try_clone()) else {
        a.shutdown_both();
        b.shutdown_both();
        return (0, 0);
    };
    let forward = std::thread::spawn(move || {
        let n = copy(&mut a_in, &mut b_out);
        b_out.shutdown_write();
        n
    });
    let (mut b_in, mut a_out) = (b, a);
    let back = copy(&mut b_in, &mut a_out);
    a_out.shutdown_both();
    b_in.shutdown_both();
    let forward = forward.join().unwrap_or(0);
    (forward, back)
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return total,
        };
        if to.write_all(&buf[..n]).is_err() {
            return total;
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_both_ways_and_passes_half_closes_on() {
        let (mut client, a) = UnixStream::pair().unwrap();
        let (b, mut server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay(a, b));
        client.write_all(b"request").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"request");
        server.write_all(b"answer!").unwrap();
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"answer!");
        assert_eq!(t.join().unwrap(), (7, 7));
    }
}

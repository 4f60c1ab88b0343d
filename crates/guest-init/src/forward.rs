//! Published ports, guest side: the host dials the forward port over
//! vsock and names a guest TCP port in one `forward` frame; this connects
//! to `127.0.0.1:<port>` (so services bound to 0.0.0.0 or to loopback are
//! both reachable), answers `ack`, and copies bytes both ways. It needs no
//! network device, so published ports work with `--network none`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmkit_channel::forward::{relay, Duplex};
use vmkit_channel::{read_message, write_message, Message};

use crate::service::Connection;

/// Concurrent forwarded connections; beyond this new ones are refused, so
/// a flood from the host side cannot exhaust the guest's threads.
const MAX_FORWARDS: usize = 256;
/// How long the host has to send its `forward` frame.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the guest service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves forwards to the allowed guest ports on connections from `accept`.
pub struct Forwarder {
    allowed: Vec<u16>,
    active: Arc<AtomicUsize>,
}

impl Forwarder {
    /// A forwarder for these guest ports only.
    pub fn new(allowed: Vec<u16>) -> Self {
        Forwarder {
            allowed,
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Accepts connections until `accept` fails, each on its own thread.
    pub fn serve<C: Connection + Duplex>(self, mut accept: impl FnMut() -> io::Result<C>) {
        let this = Arc::new(self);
        loop {
            let conn = match accept() {
                Ok(c) => c,
                Err(e) => {
                    crate::log(&format!("published ports: accept: {e}"));
                    return;
                }
            };
            let this = this.clone();
            std::thread::spawn(move || this.handle(conn));
        }
    }

    /// One forward: read the request, connect, acknowledge, copy.
    pub fn handle<C: Connection + Duplex>(&self, mut conn: C) {
        let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        let _slot = Slot(self.active.clone());
        let refuse = |conn: &mut C, message: String| {
            let _ = write_message(conn, &Message::Error { message });
        };
        if active > MAX_FORWARDS {
            return refuse(
                &mut conn,
                format!("more than {MAX_FORWARDS} forwards at once"),
            );
        }
        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
        let port = match read_message(&mut conn) {
            Ok(Some(Message::Forward { port })) => port,
            Ok(Some(other)) => {
                return refuse(&mut conn, format!("expected forward, got {}", other.kind()))
            }
            Ok(None) => return,
            Err(e) => return refuse(&mut conn, format!("bad forward request: {e}")),
        };
        if !self.allowed.contains(&port) {
            return refuse(&mut conn, format!("guest port {port} is not published"));
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let tcp = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(t) => t,
            Err(e) => return refuse(&mut conn, format!("connecting to {addr} in the guest: {e}")),
        };
        if write_message(&mut conn, &Message::Ack).is_err() {
            return;
        }
        let _ = conn.set_read_timeout(None);
        let _ = tcp.set_nodelay(true);
        relay(conn, tcp);
    }
}

/// Gives a slot back when a forward ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;

    #[test]
    fn forwards_to_an_allowed_port_and_refuses_others() {
        let service = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = service.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = service.accept().unwrap();
            let mut line = [0u8; 4];
            s.read_exact(&mut line).unwrap();
            s.write_all(b"pong").unwrap();
        });
        let forwarder = Arc::new(Forwarder::new(vec![port]));
        let (mut host, guest) = UnixStream::pair().unwrap();
        let f = forwarder.clone();
        let t = std::thread::spawn(move || f.handle(guest));
        write_message(&mut host, &Message::Forward { port }).unwrap();
        assert_eq!(read_message(&mut host).unwrap(), Some(Message::Ack));
        host.write_all(b"ping").unwrap();
        let mut answer = Vec::new();
        host.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"pong");
        drop(host);
        t.join().unwrap();

        let (mut host, guest) = UnixStream::pair().unwrap();
        let f = forwarder.clone();
        std::thread::spawn(move || f.handle(guest));
        write_message(&mut host, &Message::Forward { port: port ^ 1 }).unwrap();
        match read_message(&mut host).unwrap() {
            Some(Message::Error { message }) => assert!(message.contains("not published")),
            other => panic!("expected error, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let forwarder = Forwarder::new(vec![1]);
        let (mut host, guest) = UnixStream::pair().unwrap();
        host.write_all(&[0, 0, 0, 3, b'{', b'x', b'}']).unwrap();
        forwarder.handle(guest);
        assert!(matches!(
            read_message(&mut host).unwrap(),
            Some(Message::Error { .. })
        ));
    }
}

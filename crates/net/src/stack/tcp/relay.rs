//! The relay of an established flow: bytes from the guest's smoltcp socket
//! to the host socket and back, half-closes, failures.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use smoltcp::socket::tcp;

use super::{handshaking, socket_done, TcpFlow};
use crate::stack::Stack;

/// What one host read or write, done inside a smoltcp buffer callback, did.
enum Moved {
    /// This many bytes (0 on a read: end of stream).
    Bytes(usize),
    /// EWOULDBLOCK: wait for poll.
    Blocked,
    /// EINTR: try again.
    Again,
    /// The host connection failed.
    Broken(io::Error),
    /// smoltcp refused (the socket left the state that moves data).
    Stuck,
}

/// The (consumed, result) pair a smoltcp buffer callback returns.
fn through(result: io::Result<usize>) -> (usize, io::Result<usize>) {
    match result {
        Ok(n) => (n, Ok(n)),
        Err(e) => (0, Err(e)),
    }
}

fn moved<E>(result: Result<io::Result<usize>, E>) -> Moved {
    match result {
        Ok(Ok(n)) => Moved::Bytes(n),
        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Moved::Blocked,
        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => Moved::Again,
        Ok(Err(e)) => Moved::Broken(e),
        Err(_) => Moved::Stuck,
    }
}

impl Stack {
    /// Moves bytes both ways; `false` when the flow is over.
    pub(super) fn step_relaying(&mut self, flow: &mut TcpFlow) -> bool {
        let (Some(handle), Some(host)) = (flow.handle, flow.host.as_ref()) else {
            return false;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        // Guest to host.
        while !flow.host_write_shut && !flow.write_blocked && socket.can_recv() {
            match moved(socket.recv(|buf| through((&*host).write(buf)))) {
                Moved::Bytes(n) => {
                    flow.bytes_out += n as u64;
                    self.total_bytes += n as u64;
                }
                Moved::Blocked => flow.write_blocked = true,
                Moved::Again => {}
                Moved::Broken(e) => {
                    flow.failure.get_or_insert(format!("host connection: {e}"));
                    socket.abort();
                    break;
                }
                Moved::Stuck => break,
            }
        }
        let guest_finished = !socket.may_recv() && socket.recv_queue() == 0 && !handshaking(socket);
        if guest_finished && !flow.host_write_shut {
            let _ = host.shutdown(Shutdown::Write);
            flow.host_write_shut = true;
        }
        // Host to guest.
        while !flow.host_eof && flow.readable && socket.can_send() {
            match moved(socket.send(|buf| through((&*host).read(buf)))) {
                Moved::Bytes(0) => {
                    flow.host_eof = true;
                    socket.close();
                }
                Moved::Bytes(n) => {
                    flow.bytes_in += n as u64;
                    self.total_bytes += n as u64;
                }
                Moved::Blocked => flow.readable = false,
                Moved::Again => {}
                Moved::Broken(e) => {
                    flow.failure.get_or_insert(format!("host connection: {e}"));
                    socket.abort();
                    break;
                }
                Moved::Stuck => break,
            }
        }
        !socket_done(socket)
    }
}

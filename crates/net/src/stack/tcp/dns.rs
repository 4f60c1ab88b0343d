//! DNS over TCP to the gateway: length-prefixed queries read from the
//! guest's connection, answered by the stack's DNS.

use std::time::Instant;

use smoltcp::socket::tcp;

use super::{handshaking, socket_done, Phase, TcpFlow};
use crate::stack::{FlowKey, Stack};

impl Stack {
    pub(super) fn step_dns(
        &mut self,
        key: FlowKey,
        flow: &mut TcpFlow,
        now: Instant,
        queries: &mut Vec<(FlowKey, Vec<u8>)>,
    ) -> bool {
        let Some(handle) = flow.handle else {
            return false;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if socket_done(socket) || (handshaking(socket) && now >= flow.deadline) {
            return false;
        }
        if handshaking(socket) {
            return true;
        }
        let Phase::Dns { buf, in_flight } = &mut flow.phase else {
            return false;
        };
        let before = queries.len();
        while socket.can_recv() && buf.len() < 2 + crate::dns::MAX_QUERY {
            let room = 2 + crate::dns::MAX_QUERY - buf.len();
            let _ = socket.recv(|data| {
                let n = data.len().min(room);
                buf.extend_from_slice(&data[..n]);
                (n, ())
            });
            while buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                if len > crate::dns::MAX_QUERY {
                    socket.abort();
                    return true;
                }
                if buf.len() < 2 + len {
                    break;
                }
                queries.push((key, buf[2..2 + len].to_vec()));
                buf.drain(..2 + len);
            }
        }
        let new = queries.len() - before;
        if !socket.may_recv() && *in_flight == 0 && new == 0 {
            socket.close();
        }
        *in_flight += new;
        true
    }

    /// Sends a DNS answer on a DNS-over-TCP flow.
    pub(in crate::stack) fn reply_tcp(&mut self, key: FlowKey, message: &[u8]) {
        let Some(flow) = self.tcp.get_mut(&key) else {
            return;
        };
        if let Phase::Dns { in_flight, .. } = &mut flow.phase {
            *in_flight = in_flight.saturating_sub(1);
        }
        let Some(handle) = flow.handle else { return };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(message);
        if socket.send_slice(&framed) != Ok(framed.len()) {
            socket.abort();
        }
    }
}

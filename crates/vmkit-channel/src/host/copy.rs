//! The host side of `cp` with a running guest: a tar stream in, a tar
//! stream out, in `data` frames (see PROTOCOL.md, "Copy"). The streams are
//! the caller's; nothing here holds more than one frame.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::message::{CopyInRequest, CopyOutRequest, CopyStats, Message, CHUNK_SIZE};

use super::{connect, deadline_after, recv, send, sink, ChannelError, ExecClient};

impl ExecClient {
    /// Streams the tar archive `tar` into the guest at `req.path`. `idle`
    /// bounds every wait for the guest (not the whole copy, which may be
    /// large). Returns what the guest unpacked.
    pub fn copy_in(
        &self,
        req: &CopyInRequest,
        tar: &mut dyn Read,
        idle: Duration,
    ) -> Result<CopyStats, ChannelError> {
        let stream = connect(&self.uds_path, self.port, self.connect_timeout)?;
        let r = copy_in_over(&stream, req, tar, idle);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        r
    }

    /// Receives `req.path` from the guest as a tar archive, written to
    /// `out` as it arrives. The archive comes from the guest: whoever
    /// unpacks it must treat it as hostile (`vmkit_archive::extract`).
    pub fn copy_out(
        &self,
        req: &CopyOutRequest,
        out: &mut dyn Write,
        idle: Duration,
    ) -> Result<CopyStats, ChannelError> {
        let stream = connect(&self.uds_path, self.port, self.connect_timeout)?;
        let r = copy_out_over(&stream, req, out, idle);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        r
    }
}

/// [`ExecClient::copy_in`] over a connected stream.
pub fn copy_in_over(
    stream: &UnixStream,
    req: &CopyInRequest,
    tar: &mut dyn Read,
    idle: Duration,
) -> Result<CopyStats, ChannelError> {
    send(stream, &Message::CopyIn(req.clone()), idle)?;
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut source_failed = false;
    let sent = (|| -> Result<(), ChannelError> {
        loop {
            let n = match tar.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    source_failed = true;
                    return Err(ChannelError::Io {
                        context: "reading the archive to copy".into(),
                        source: e,
                    });
                }
            };
            send(stream, &Message::Data(buf[..n].to_vec()), idle)?;
        }
        send(stream, &Message::DataEnd, idle)
    })();
    if source_failed {
        // No `dataEnd`: closing mid-stream makes the guest drop what it
        // unpacked so far.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Err(sent
            .err()
            .unwrap_or_else(|| ChannelError::Protocol("copy source failed".into())));
    }
    // The guest may have refused midway (a full disk, a bad path) and
    // closed: its error says more than our broken pipe.
    match recv(
        stream,
        deadline_after(idle),
        "waiting for the guest to finish the copy",
    ) {
        Ok(Message::CopyDone(stats)) => sent.map(|()| stats),
        Ok(other) => Err(ChannelError::Protocol(format!(
            "expected copyDone, got {}",
            other.kind()
        ))),
        Err(e @ ChannelError::Guest(_)) => Err(e),
        Err(e) => Err(sent.err().unwrap_or(e)),
    }
}

/// [`ExecClient::copy_out`] over a connected stream.
pub fn copy_out_over(
    stream: &UnixStream,
    req: &CopyOutRequest,
    out: &mut dyn Write,
    idle: Duration,
) -> Result<CopyStats, ChannelError> {
    send(stream, &Message::CopyOut(req.clone()), idle)?;
    loop {
        match recv(stream, deadline_after(idle), "waiting for the copy's data")? {
            Message::Data(b) => sink(out, &b)?,
            Message::CopyDone(stats) => return Ok(stats),
            other => {
                return Err(ChannelError::Protocol(format!(
                    "unexpected {} during a copy",
                    other.kind()
                )))
            }
        }
    }
}

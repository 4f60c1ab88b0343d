//! The client of the guest's exec service.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use vmkit_protocol::RunResult;

use super::control::checked_result;
use super::{connect, deadline_after, io_err, recv, send, sink, ChannelError, ExecHandle};
use crate::message::{ExecRequest, Message, CHUNK_SIZE};

/// Client of the guest's exec service, reached through the VMM's hybrid
/// vsock socket. Each call opens its own connection, so one client can run
/// several execs at once from several threads.
#[derive(Debug, Clone)]
pub struct ExecClient {
    pub(super) uds_path: PathBuf,
    pub(super) port: u32,
    pub(super) connect_timeout: Duration,
}

impl ExecClient {
    /// A client for the exec service on guest `port` behind `uds_path`.
    pub fn new(uds_path: impl Into<PathBuf>, port: u32) -> Self {
        ExecClient {
            uds_path: uds_path.into(),
            port,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// How long to keep trying to connect (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Runs `req` in the guest, copying its output to the sinks as it
    /// arrives, steered while it runs through `handle` (signals, pty
    /// resizes; `ExecHandle::new()` when nothing steers it). `stdin`, if
    /// given, is streamed to the command from a helper thread (so a command
    /// that prints before reading cannot deadlock). `timeout` is the host's
    /// backstop for the whole exec: make it longer than `req.timeout_ms`,
    /// which the guest enforces by killing the command.
    pub fn exec(
        &self,
        req: &ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        timeout: Duration,
        handle: &ExecHandle,
    ) -> Result<RunResult, ChannelError> {
        let stream = match connect(&self.uds_path, self.port, self.connect_timeout) {
            Ok(s) => s,
            Err(e) => {
                handle.finish();
                return Err(e);
            }
        };
        exec_over(stream, req, stdin, stdout, stderr, timeout, handle)
    }

    /// Asks the guest to sync and power off; returns once it acknowledged.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), ChannelError> {
        let stream = connect(&self.uds_path, self.port, self.connect_timeout)?;
        shutdown_over(&stream, timeout)
    }

    /// Checks that the exec service answers.
    pub fn ping(&self, timeout: Duration) -> Result<(), ChannelError> {
        let stream = connect(&self.uds_path, self.port, self.connect_timeout)?;
        let deadline = deadline_after(timeout);
        send(&stream, &Message::Ping, timeout)?;
        match recv(&stream, deadline, "waiting for pong")? {
            Message::Pong => Ok(()),
            other => Err(ChannelError::Protocol(format!(
                "expected pong, got {}",
                other.kind()
            ))),
        }
    }
}

/// [`ExecClient::shutdown`] over an already connected stream.
pub fn shutdown_over(stream: &UnixStream, timeout: Duration) -> Result<(), ChannelError> {
    let deadline = deadline_after(timeout);
    send(stream, &Message::Shutdown, timeout)?;
    match recv(
        stream,
        deadline,
        "waiting for the guest to acknowledge shutdown",
    )? {
        Message::Ack => Ok(()),
        other => Err(ChannelError::Protocol(format!(
            "expected ack, got {}",
            other.kind()
        ))),
    }
}

/// [`ExecClient::exec`] over an already connected stream (tests, other
/// transports). Consumes the stream: one exec per connection.
pub fn exec_over(
    stream: UnixStream,
    req: &ExecRequest,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    timeout: Duration,
    handle: &ExecHandle,
) -> Result<RunResult, ChannelError> {
    let result = exec_steered(&stream, req, stdin, stdout, stderr, timeout, handle);
    // Closing tells the guest to kill the command if it is still running
    // (timeouts, sink errors) and unblocks a stdin write stuck on a full
    // socket, which holds the handle's lock: so close first, then finish.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    handle.finish();
    result
}

fn exec_steered(
    stream: &UnixStream,
    req: &ExecRequest,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    timeout: Duration,
    handle: &ExecHandle,
) -> Result<RunResult, ChannelError> {
    let deadline = deadline_after(timeout);
    let mut req = req.clone();
    req.stdin = stdin.is_some();
    req.validate().map_err(ChannelError::Invalid)?;
    send(stream, &Message::Exec(req), timeout)?;
    // No write timeout for stdin: backpressure from a slow command is normal,
    // and the thread ends when the connection is shut down.
    stream
        .set_write_timeout(None)
        .map_err(io_err("clearing the write timeout"))?;
    handle.attach(stream)?;
    if let Some(mut input) = stdin {
        let feeder = handle.clone();
        // Not joined: it may sit in a read of the caller's stdin after the
        // command ended; it stops at its next write once the exec is over.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK_SIZE];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if feeder.send(&Message::Stdin(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            let _ = feeder.send(&Message::StdinEof);
        });
    }
    loop {
        match recv(stream, deadline, "waiting for the command to finish")? {
            Message::Stdout(b) => sink(stdout, &b)?,
            Message::Stderr(b) => sink(stderr, &b)?,
            Message::Result(r) => return checked_result(r),
            other => {
                return Err(ChannelError::Protocol(format!(
                    "unexpected {} during an exec",
                    other.kind()
                )))
            }
        }
    }
}

//! [`ExecHandle`]: what a caller holds to steer an exec while it runs:
//! forward a signal to the command's process group, or resize its pty.
//!
//! The handle shares the connection's write side with the stdin feeder
//! behind one mutex, so frames from different threads never interleave.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::frame::write_message;
use crate::message::{Message, TtySize};

use super::ChannelError;

#[derive(Debug, Default)]
struct Slot {
    /// The exec's connection while it runs.
    writer: Option<UnixStream>,
    /// A signal that arrived before the exec started: sent once it does.
    pending_signal: Option<i32>,
    /// The latest size asked for before the exec started.
    pending_size: Option<TtySize>,
    /// The exec ended: later requests are no-ops.
    finished: bool,
}

/// Steers one exec from other threads. Create it before the exec (so a
/// Ctrl-C during the connect is not lost: it is sent as soon as the command
/// runs) and pass it to [`super::ExecClient::exec`]. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct ExecHandle {
    slot: Arc<Mutex<Slot>>,
}

impl ExecHandle {
    /// A handle not yet bound to an exec.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `signal` (Linux numbering) to the command's process group.
    /// Before the exec starts it is remembered and sent at start; after it
    /// ended it is dropped. Returns whether it went (or will go) out.
    pub fn signal(&self, signal: i32) -> Result<bool, ChannelError> {
        let mut slot = self.lock();
        if slot.finished {
            return Ok(false);
        }
        match slot.writer.as_mut() {
            Some(w) => write_message(w, &Message::Signal { signal })?,
            None => slot.pending_signal = Some(signal),
        }
        Ok(true)
    }

    /// Resizes the command's pty (no effect on an exec without `tty`).
    pub fn resize(&self, size: TtySize) -> Result<bool, ChannelError> {
        let mut slot = self.lock();
        if slot.finished {
            return Ok(false);
        }
        match slot.writer.as_mut() {
            Some(w) => write_message(w, &Message::Resize(size))?,
            None => slot.pending_size = Some(size),
        }
        Ok(true)
    }

    /// Whether the exec this handle steers has ended.
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// Binds the handle to a started exec's connection and sends what was
    /// asked for before it started.
    pub(crate) fn attach(&self, stream: &UnixStream) -> Result<(), ChannelError> {
        let mut w = stream
            .try_clone()
            .map_err(super::io_err("cloning the stream"))?;
        let mut slot = self.lock();
        if let Some(size) = slot.pending_size.take() {
            write_message(&mut w, &Message::Resize(size))?;
        }
        if let Some(signal) = slot.pending_signal.take() {
            write_message(&mut w, &Message::Signal { signal })?;
        }
        slot.writer = Some(w);
        Ok(())
    }

    /// Writes one frame on the exec's connection (the stdin feeder uses
    /// this, so its frames and the handle's never interleave).
    pub(crate) fn send(&self, msg: &Message) -> Result<(), ChannelError> {
        let mut slot = self.lock();
        match slot.writer.as_mut() {
            Some(w) => Ok(write_message(w, msg)?),
            None => Err(ChannelError::Protocol("the exec is not running".into())),
        }
    }

    /// The exec ended: drop the connection, ignore later requests.
    pub(crate) fn finish(&self) {
        let mut slot = self.lock();
        slot.finished = true;
        slot.writer = None;
    }
}

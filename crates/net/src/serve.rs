//! The poll loop that drives one VM's stack.

use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::config::NetConfig;
use crate::frontend::{FrameLink, ReadOutcome};

/// Why the stack stopped.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The link to the VMM failed.
    #[error("frontend: {0}")]
    Frontend(std::io::Error),
    /// The audit log could not be opened.
    #[error("audit log {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Waiting for events failed.
    #[error("poll: {0}")]
    Poll(nix::Error),
}

/// Runs the stack until the VMM closes the link or `stop` becomes readable
/// (a signal pipe). Returns `Ok` on either.
pub fn serve(_config: &NetConfig, mut link: FrameLink, stop: impl AsFd) -> Result<(), NetError> {
    loop {
        let mut fds = [
            PollFd::new(link.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        poll(&mut fds, PollTimeout::NONE).map_err(NetError::Poll)?;
        if fds[1].any().unwrap_or(false) {
            return Ok(());
        }
        if link.read_frames(|_frame| {}).map_err(NetError::Frontend)? == ReadOutcome::Closed {
            return Ok(());
        }
    }
}

//! The poll loop that drives one VM's stack: the link to the VMM, the host
//! sockets of open flows, the resolver's wake-up pipe and a stop fd, all in
//! one `poll(2)`, sleeping until something is ready or smoltcp's next timer.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use crate::audit::{AuditLog, DEFAULT_MAX_BYTES};
use crate::config::NetConfig;
use crate::frontend::{FrameLink, ReadOutcome};
use crate::stack::{Reporter, Stack, StackOptions};

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
    /// The resolver threads could not start.
    #[error("resolver: {0}")]
    Resolver(std::io::Error),
    /// Waiting for events failed.
    #[error("poll: {0}")]
    Poll(std::io::Error),
}

/// Runs the stack of `config` until the VMM closes the link or `stop`
/// becomes readable (a signal pipe). Returns `Ok` on either; open flows get
/// their audit records first.
pub fn serve(config: &NetConfig, mut link: FrameLink, stop: impl AsFd) -> Result<(), NetError> {
    let log = match &config.audit_path {
        Some(path) => {
            Some(
                AuditLog::open(path, DEFAULT_MAX_BYTES).map_err(|source| NetError::Audit {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let options = StackOptions::host().map_err(NetError::Resolver)?;
    let mut stack = Stack::new(config, options, Reporter::new(log, true));
    run(&mut stack, &mut link, stop)
}

/// The loop itself, for any stack and link.
pub fn run(stack: &mut Stack, link: &mut FrameLink, stop: impl AsFd) -> Result<(), NetError> {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut tokens = Vec::new();
    let mut more_frames = false;
    let result = loop {
        let now = Instant::now();
        stack.poll(now, link.tx());
        match link.flush() {
            Ok(()) => {}
            Err(e) if hung_up(&e) => break Ok(()),
            Err(e) => break Err(NetError::Frontend(e)),
        }
        fds.clear();
        tokens.clear();
        let link_events = libc::POLLIN | if link.backlog() > 0 { libc::POLLOUT } else { 0 };
        fds.push(pollfd(link.as_fd().as_raw_fd(), link_events));
        fds.push(pollfd(stop.as_fd().as_raw_fd(), libc::POLLIN));
        stack.poll_fds(&mut fds, &mut tokens);
        let timeout = if more_frames {
            0
        } else if !link.tx().can_send() {
            // smoltcp wants to send but the VMM is not reading: sleep until
            // the link is writable (POLLOUT) rather than spin on its timer.
            500
        } else {
            let delay = stack.poll_delay(now);
            i32::try_from(delay.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        };
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd
        // structs; poll only writes their `revents`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Err(NetError::Poll(e));
        }
        if fds[1].revents != 0 {
            break Ok(());
        }
        for (fd, token) in fds[2..].iter().zip(&tokens) {
            if fd.revents != 0 {
                stack.mark_ready(*token, fd.revents);
            }
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 || more_frames {
            let now = Instant::now();
            match link.read_frames(|frame, tx| stack.handle_frame(frame, now, tx)) {
                Ok(ReadOutcome::Closed) => break Ok(()),
                Ok(outcome) => more_frames = outcome == ReadOutcome::More,
                Err(e) if hung_up(&e) => break Ok(()),
                Err(e) => break Err(NetError::Frontend(e)),
            }
        }
    };
    stack.shutdown(Instant::now());
    result
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn hung_up(e: &std::io::Error) -> bool {
    // Stream: the VMM closed; datagram: the peer's socket is gone.
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::NotConnected
    )
}

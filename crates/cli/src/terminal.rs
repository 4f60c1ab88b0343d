//! The host terminal during an interactive exec: raw mode (restored on
//! every way out: normal return, error, panic), the window size, and the
//! signals that must reach the guest command instead of killing us.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::termios::{self, SetArg, Termios};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};
use vmkit::{ExecHandle, TtySize};

/// The terminal in raw mode while this lives: keys go to the guest as they
/// are typed (Ctrl-C included, as a byte the guest's pty turns into SIGINT).
/// Dropping it restores the mode it found.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` if stdin is not a terminal.
    pub fn enter() -> std::io::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Drain: output still queued was written in raw mode.
        let stdin = std::io::stdin();
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, nix::pty::Winsize);

/// The window size of the terminal on stdout, else stdin; `None` when
/// neither is a terminal.
pub fn window_size() -> Option<TtySize> {
    let stdout = std::io::stdout();
    let stdin = std::io::stdin();
    let fds = [
        (stdout.is_terminal(), stdout.as_fd().as_raw_fd()),
        (stdin.is_terminal(), stdin.as_fd().as_raw_fd()),
    ];
    fds.into_iter().filter(|(tty, _)| *tty).find_map(|(_, fd)| {
        let mut ws = nix::pty::Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
        // points to a live local; `fd` is stdin or stdout, open for the call.
        unsafe { tiocgwinsz(fd, &mut ws) }.ok()?;
        Some(TtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    })
}

/// Forwards SIGINT, SIGTERM and SIGHUP to the guest command's process
/// group (so the command decides how to end, and we exit with its status),
/// and on a tty every SIGWINCH as a resize. Stops when dropped.
pub struct SignalForwarder {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignalForwarder {
    /// Starts forwarding to `exec`; `tty` adds window-size changes.
    pub fn start(exec: ExecHandle, tty: bool) -> std::io::Result<SignalForwarder> {
        let mut wanted = vec![SIGINT, SIGTERM, SIGHUP];
        if tty {
            wanted.push(SIGWINCH);
        }
        let mut signals = signal_hook::iterator::Signals::new(&wanted)?;
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            for signal in signals.forever() {
                let sent = if signal == SIGWINCH {
                    window_size().map(|s| exec.resize(s))
                } else {
                    Some(exec.signal(signal))
                };
                if let Some(Err(e)) = sent {
                    tracing::warn!("forwarding signal {signal} to the guest: {e}");
                }
            }
        });
        Ok(SignalForwarder {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! Pseudo-terminals for `tty` execs: allocating the pair with the host
//! terminal's size, and following the host's resizes.
//!
//! Setting the size on the master makes the kernel send SIGWINCH to the
//! terminal's foreground process group, so full-screen programs redraw just
//! as they do on a local terminal.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use vmkit_channel::TtySize;

/// The size a pty gets when the host did not say (the VT100 default).
pub const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };

/// Opens a pty pair of `size`, both ends close-on-exec so concurrent spawns
/// do not inherit them (an inherited slave would keep the tty from ever
/// reporting EOF). Returns (master, slave).
pub fn open(size: TtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(name)?;
    let master: OwnedFd = master.into();
    set_size(&master, size)?;
    Ok((master, slave.into()))
}

/// Sets the terminal size through either end of the pty.
pub fn set_size(fd: &impl AsRawFd, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` through the pointer, which points
    // to a live local for the duration of the call; a bad fd is an error
    // return, not undefined behaviour.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the terminal size (tests, diagnostics).
pub fn size(fd: &impl AsRawFd) -> io::Result<TtySize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` through the pointer, which points
    // to a live, writable local for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TtySize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// A handle other threads use to resize a running command's pty.
#[derive(Debug)]
pub struct Resizer(File);

impl Resizer {
    /// Wraps a duplicate of the pty master.
    pub fn new(master: File) -> Self {
        Resizer(master)
    }

    /// Applies the host's new size; errors are not fatal to the exec.
    pub fn resize(&self, size: TtySize) {
        let _ = set_size(&self.0, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_opens_with_the_asked_size_and_follows_resizes() {
        let (master, slave) = open(TtySize {
            rows: 33,
            cols: 101,
        })
        .unwrap();
        assert_eq!(
            size(&slave).unwrap(),
            TtySize {
                rows: 33,
                cols: 101
            }
        );
        let r = Resizer::new(File::from(master));
        r.resize(TtySize { rows: 50, cols: 7 });
        assert_eq!(size(&slave).unwrap(), TtySize { rows: 50, cols: 7 });
    }
}

//! AF_VSOCK streams for the guest side (std has none).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    accept4, bind, connect, getpeername, listen, setsockopt, socket, sockopt, AddressFamily,
    Backlog, SockFlag, SockType, VsockAddr,
};
use nix::sys::time::TimeVal;

use crate::service::Connection;

/// The host's CID.
pub const HOST_CID: u32 = 2;

/// A connected vsock stream.
#[derive(Debug)]
pub struct VsockStream(OwnedFd);

fn vsock_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

impl VsockStream {
    /// Connects to `port` on `cid`.
    pub fn connect(cid: u32, port: u32) -> io::Result<VsockStream> {
        let fd = vsock_socket()?;
        connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
        Ok(VsockStream(fd))
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(&self.0, buf)?)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(nix::unistd::write(&self.0, buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Connection for VsockStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(VsockStream(self.0.try_clone()?))
    }
    fn shutdown(&self) {
        let _ = nix::sys::socket::shutdown(self.0.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let tv = match t {
            Some(d) => TimeVal::new(
                d.as_secs().try_into().unwrap_or(i64::MAX),
                d.subsec_micros().into(),
            ),
            None => TimeVal::new(0, 0),
        };
        Ok(setsockopt(&self.0, sockopt::ReceiveTimeout, &tv)?)
    }
}

impl vmkit_channel::forward::Duplex for VsockStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(VsockStream(self.0.try_clone()?))
    }
    fn shutdown_write(&self) {
        let _ = nix::sys::socket::shutdown(self.0.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    }
    fn shutdown_both(&self) {
        let _ = nix::sys::socket::shutdown(self.0.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// A listening vsock socket.
#[derive(Debug)]
pub struct VsockListener(OwnedFd);

impl VsockListener {
    /// Listens on `port` for any CID (the host).
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        let fd = vsock_socket()?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
        listen(&fd, Backlog::new(128)?)?;
        Ok(VsockListener(fd))
    }

    /// Waits for the next connection from the host. Connections from any
    /// other CID (another VM, or a guest process over vsock loopback, which
    /// could otherwise run commands as root) are closed unanswered.
    pub fn accept(&self) -> io::Result<VsockStream> {
        loop {
            // Close-on-exec atomically: a concurrent spawn must not inherit the
            // socket, or the host would never see it close.
            let raw = accept4(self.0.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            match getpeername::<VsockAddr>(fd.as_raw_fd()) {
                Ok(peer) if peer.cid() == HOST_CID => return Ok(VsockStream(fd)),
                Ok(peer) => crate::log(&format!(
                    "exec service: refused a connection from CID {}",
                    peer.cid()
                )),
                Err(e) => crate::log(&format!("exec service: getpeername: {e}")),
            }
        }
    }
}

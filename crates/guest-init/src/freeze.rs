//! Freezing the guest's filesystems while the host copies the disk
//! (`snapshot create --disk-only` of a running workspace): FIFREEZE flushes
//! a filesystem and blocks its writers, so the copy is a clean filesystem
//! (ext4 clears `needs_recovery` while frozen) holding everything written
//! before, page cache and journal included.
//!
//! A freeze lives as long as one connection and never longer than its
//! deadline: the guest thaws at the host's `thaw`, at the connection's end
//! (a host that died) or at the deadline (a host that hangs), whichever
//! comes first. While `/` is frozen, anything that writes to it blocks,
//! this process too: the session writes nothing but to the connection,
//! and logs only once thawed (the console is on devtmpfs anyway).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use vmkit_channel::{read_message, write_message, FreezeRequest, Message};

use crate::service::Connection;

/// `FIFREEZE` / `FITHAW` from `<linux/fs.h>`: `_IOWR('X', 119, int)` and
/// `_IOWR('X', 120, int)`.
const FIFREEZE: u64 = 0xC004_5877;
const FITHAW: u64 = 0xC004_5878;

/// Freezes and thaws one filesystem, named by where it is mounted.
pub trait FsFreeze: Send + Sync {
    /// Freezes the filesystem at `mountpoint`; `Ok(false)`: it cannot be
    /// frozen (tmpfs, virtio-fs: `EOPNOTSUPP`) and is left as it is.
    fn freeze(&self, mountpoint: &str) -> io::Result<bool>;
    /// Thaws what [`FsFreeze::freeze`] froze.
    fn thaw(&self, mountpoint: &str) -> io::Result<()>;
}

/// The kernel's FIFREEZE / FITHAW.
#[derive(Debug, Default)]
pub struct KernelFreeze;

impl KernelFreeze {
    fn ioctl(mountpoint: &str, request: u64) -> io::Result<()> {
        // Opening a folder read-only writes nothing, so it works on a
        // frozen filesystem (the thaw needs that).
        let dir = std::fs::File::open(mountpoint)?;
        // SAFETY: `dir` is an open descriptor for the call's duration;
        // FIFREEZE and FITHAW take an int argument that the kernel ignores,
        // and neither reads or writes our memory.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), request as _, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl FsFreeze for KernelFreeze {
    fn freeze(&self, mountpoint: &str) -> io::Result<bool> {
        match Self::ioctl(mountpoint, FIFREEZE) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn thaw(&self, mountpoint: &str) -> io::Result<()> {
        Self::ioctl(mountpoint, FITHAW)
    }
}

/// What the exec service freezes on request: the filesystems mounted at
/// `mountpoints`, in order (the root first), through `fs`.
pub struct Freezer {
    fs: Box<dyn FsFreeze>,
    mountpoints: Vec<String>,
    /// Held for the life of a freeze: one at a time.
    busy: Mutex<()>,
}

impl Freezer {
    /// A freezer of `mountpoints`; two naming one filesystem (the same
    /// device) count once, the first.
    pub fn new(fs: Box<dyn FsFreeze>, mountpoints: Vec<String>) -> Freezer {
        let mut seen = Vec::new();
        let mountpoints = mountpoints
            .into_iter()
            .filter(|m| match device_of(m) {
                Some(dev) if seen.contains(&dev) => false,
                Some(dev) => {
                    seen.push(dev);
                    true
                }
                None => true,
            })
            .collect();
        Freezer {
            fs,
            mountpoints,
            busy: Mutex::new(()),
        }
    }

    /// The filesystems it would freeze.
    pub fn mountpoints(&self) -> &[String] {
        &self.mountpoints
    }

    /// Serves one `freeze` on `conn` to its end: freezes, answers `frozen`,
    /// and thaws at `thaw` (answering `ack`), at the connection's end, or
    /// at the request's deadline (answering `error`), whichever is first.
    pub fn session<C: Connection>(&self, mut conn: C, request: &FreezeRequest) {
        let outcome = self.hold(&mut conn, request);
        if let Err(message) = &outcome {
            let _ = write_message(
                &mut conn,
                &Message::Error {
                    message: message.clone(),
                },
            );
        }
        conn.shutdown();
        // Thawed by now: logging cannot block.
        if let Err(message) = outcome {
            crate::log(&format!("freeze: {message}"));
        }
    }

    fn hold<C: Connection>(&self, conn: &mut C, request: &FreezeRequest) -> Result<(), String> {
        let hold = request.hold()?;
        let _one_at_a_time = match self.busy.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err("the filesystems are frozen already (by another connection)".into())
            }
        };
        let frozen = self.freeze_all()?;
        let since = Instant::now();
        let answer = Message::Frozen {
            mountpoints: frozen.clone(),
        };
        if let Err(e) = write_message(conn, &answer) {
            self.thaw_all(&frozen)?;
            return Err(format!("answering frozen: {e}"));
        }
        let mut reader = DeadlineReader {
            conn,
            deadline: since + hold,
        };
        let next = read_message(&mut reader);
        let conn = reader.conn;
        let thawed = self.thaw_all(&frozen);
        match next {
            Ok(Some(Message::Thaw)) => {
                thawed?;
                write_message(conn, &Message::Ack).map_err(|e| format!("answering thaw: {e}"))
            }
            Err(e) if e.is_timeout() => {
                thawed?;
                Err(format!(
                    "the freeze expired after {} ms without a thaw; the filesystems were thawed",
                    hold.as_millis()
                ))
            }
            // The host went away (or spoke nonsense): thawed, nobody to tell.
            Ok(None) => thawed,
            Ok(Some(other)) => {
                thawed?;
                Err(format!("expected thaw, got {}", other.kind()))
            }
            Err(e) => {
                thawed?;
                Err(format!("bad frame while frozen: {e}"))
            }
        }
    }

    /// Freezes every filesystem in order; on a failure, thaws the ones
    /// frozen so far and says which one failed.
    fn freeze_all(&self) -> Result<Vec<String>, String> {
        let mut frozen = Vec::new();
        for m in &self.mountpoints {
            match self.fs.freeze(m) {
                Ok(true) => frozen.push(m.clone()),
                Ok(false) => {}
                Err(e) => {
                    let thawed = self.thaw_all(&frozen);
                    let mut why = format!("freezing {m}: {e}");
                    if let Err(t) = thawed {
                        why.push_str(&format!("; {t}"));
                    }
                    return Err(why);
                }
            }
        }
        Ok(frozen)
    }

    /// Thaws in reverse order, every one even if some fail.
    fn thaw_all(&self, frozen: &[String]) -> Result<(), String> {
        let failed: Vec<String> = frozen
            .iter()
            .rev()
            .filter_map(|m| self.fs.thaw(m).err().map(|e| format!("thawing {m}: {e}")))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// The device a mountpoint's filesystem is on.
fn device_of(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

/// Every read waits only until one overall deadline, so a host trickling
/// bytes cannot stretch a freeze past it.
struct DeadlineReader<'a, C> {
    conn: &'a mut C,
    deadline: Instant,
}

impl<C: Connection> Read for DeadlineReader<'_, C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "freeze deadline"))?;
        self.conn
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        self.conn.read(buf)
    }
}

#[cfg(test)]
#[path = "freeze_tests.rs"]
mod tests;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::StateError;

/// What to do when another command holds a workspace's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Wait as long as it takes.
    Block,
    /// Fail with [`StateError::Busy`] at once.
    NoWait,
    /// Wait up to this long, then fail with [`StateError::Busy`].
    Timeout(Duration),
}

/// An exclusive lock on one workspace, held until dropped. The kernel drops
/// flock locks when the process dies, so a killed command never leaves a
/// workspace locked.
#[derive(Debug)]
pub struct WorkspaceLock {
    name: String,
    _lock: Flock<File>,
}

impl WorkspaceLock {
    pub(crate) fn acquire(path: &Path, name: &str, wait: LockWait) -> Result<Self, StateError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| StateError::io("opening lock", path, e))?;
        let busy = || StateError::Busy {
            name: name.to_owned(),
        };
        let lock = match wait {
            LockWait::Block => Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| StateError::io("locking", path, e.into()))?,
            LockWait::NoWait => try_lock(file, path)?.map_err(|_| busy())?,
            LockWait::Timeout(limit) => {
                let deadline = Instant::now() + limit;
                let mut file = file;
                loop {
                    match try_lock(file, path)? {
                        Ok(lock) => break lock,
                        Err(_) if Instant::now() >= deadline => return Err(busy()),
                        Err(back) => file = back,
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        Ok(WorkspaceLock {
            name: name.to_owned(),
            _lock: lock,
        })
    }

    /// The workspace this lock is for.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The lock, or the file back when another process holds it.
fn try_lock(file: File, path: &Path) -> Result<Result<Flock<File>, File>, StateError> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Ok(lock)),
        Err((file, Errno::EWOULDBLOCK)) => Ok(Err(file)),
        Err((_, e)) => Err(StateError::io("locking", path, e.into())),
    }
}

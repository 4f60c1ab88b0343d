use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

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
    _file: File,
}

impl WorkspaceLock {
    pub(crate) fn acquire(path: &Path, name: &str, wait: LockWait) -> Result<Self, StateError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| StateError::io("opening lock", path, e))?;
        let busy = || StateError::Busy {
            name: name.to_owned(),
        };
        match wait {
            LockWait::Block => flock(&file, FlockOperation::LockExclusive)
                .map_err(|e| StateError::io("locking", path, e.into()))?,
            LockWait::NoWait => try_lock(&file, path)?.then_some(()).ok_or_else(busy)?,
            LockWait::Timeout(limit) => {
                let deadline = Instant::now() + limit;
                while !try_lock(&file, path)? {
                    if Instant::now() >= deadline {
                        return Err(busy());
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(WorkspaceLock {
            name: name.to_owned(),
            _file: file,
        })
    }

    /// The workspace this lock is for.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn try_lock(file: &File, path: &Path) -> Result<bool, StateError> {
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(StateError::io("locking", path, e.into())),
    }
}

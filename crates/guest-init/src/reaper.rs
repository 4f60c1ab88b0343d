//! The one place that waits for children.
//!
//! PID 1 inherits every orphan and must reap them, but a `waitpid(-1)` loop
//! would steal the exit status of the commands we run (and `Child::wait`
//! would then fail with ECHILD). So a single reaper thread owns all waiting:
//! it calls `waitpid(-1)` and hands each status to whoever registered that
//! pid; statuses nobody registered (orphans) are dropped. [`Reaper::spawn`]
//! holds the registry lock across the fork, so a child that exits at once
//! cannot be reaped before its waiter is registered, and the reaper only
//! peeks (`WNOWAIT`) until it holds that lock, so `Command::spawn`'s own
//! wait for a child whose exec failed still finds it.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It called `exit` with this status.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

#[derive(Default)]
struct Registry {
    waiters: HashMap<libc::pid_t, Sender<Exit>>,
    /// Bumped on every spawn so the reaper never sleeps through a new child.
    generation: u64,
}

/// Handle to the process-wide reaper thread.
pub struct Reaper {
    shared: Arc<(Mutex<Registry>, Condvar)>,
}

impl Reaper {
    /// The process-wide reaper, started on first use. Everything in this
    /// process that spawns children must go through it.
    pub fn global() -> &'static Reaper {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        REAPER.get_or_init(|| {
            let shared = Arc::new((Mutex::new(Registry::default()), Condvar::new()));
            let s = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reap_forever(&s))
                .expect("cannot start the reaper thread");
            Reaper { shared }
        })
    }

    /// Spawns `cmd` and registers its pid. The returned receiver yields its
    /// exit status exactly once. Never call `wait` on the returned `Child`.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, Receiver<Exit>)> {
        let (lock, cv) = &*self.shared;
        let mut reg = lock.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn()?;
        let (tx, rx) = mpsc::channel();
        reg.waiters.insert(child.id() as libc::pid_t, tx);
        reg.generation += 1;
        cv.notify_all();
        Ok((child, rx))
    }
}

fn reap_forever(shared: &(Mutex<Registry>, Condvar)) {
    let (lock, cv) = shared;
    loop {
        let generation = lock.lock().unwrap_or_else(|p| p.into_inner()).generation;
        // Peek first (WNOWAIT), reap only under the registry lock: `spawn`
        // holds that lock while std's `Command::spawn` may itself reap a
        // child whose exec failed, and must find it still there.
        // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer for the duration of the call.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::__WALL,
            )
        };
        if rc == 0 {
            // SAFETY: waitid succeeded with WEXITED, so `info` describes a child.
            let pid = unsafe { info.si_pid() };
            let mut reg = lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut status: libc::c_int = 0;
            // SAFETY: `status` is a valid out-pointer for the duration of the call.
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
            if reaped != pid {
                continue; // someone (a failed spawn) reaped it already
            }
            let exit = if libc::WIFEXITED(status) {
                Exit::Code(libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                Exit::Signal(libc::WTERMSIG(status))
            } else {
                continue;
            };
            if let Some(tx) = reg.waiters.remove(&pid) {
                // The waiter may have given up; the status is then moot.
                let _ = tx.send(exit);
            }
            continue;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::ECHILD) => {
                let reg = lock.lock().unwrap_or_else(|p| p.into_inner());
                if reg.generation == generation {
                    // Orphans re-parented to us do not bump the generation,
                    // hence the periodic wake-up.
                    let _ = cv.wait_timeout(reg, Duration::from_secs(1));
                }
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

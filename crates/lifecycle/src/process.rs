use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vmkit_state::ProcessRecord;

/// How a VMM process relates to the command that starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervision {
    /// Dies with the starting thread's process (PR_SET_PDEATHSIG), so a
    /// `run` killed with SIGKILL leaves no VM behind. Own process group, so
    /// a terminal's Ctrl-C reaches microagent, which tears down in order.
    DiesWithParent,
    /// Outlives the starting command (a workspace `start`): own session,
    /// detached from the terminal.
    Detached,
}

/// Spawns `cmd` under `supervision`.
///
/// The child inherits only its stdio: a VMM or helper that outlives its
/// command must not hold the caller's other descriptors open (a pipe a
/// Python caller reads to end-of-file, a lock file taken with `flock`),
/// or the caller hangs until the VM ends.
pub fn spawn_supervised(cmd: &mut Command, supervision: Supervision) -> io::Result<Child> {
    spawn_supervised_passing(cmd, supervision, &[])
}

/// At most this many descriptors are handed over by
/// [`spawn_supervised_passing`] (the child's side runs without allocating).
const MAX_PASSED: usize = 4;
/// Passed descriptors are parked at or above this one in the child while
/// they are moved to their targets.
const PARKING: std::os::fd::RawFd = 256;

/// [`spawn_supervised`], handing the child more descriptors: each pair's
/// first (open in this process) becomes the child's second, e.g. sockets
/// bound here so a peer can connect before the child has started. Targets
/// are above stderr and below 256.
pub fn spawn_supervised_passing(
    cmd: &mut Command,
    supervision: Supervision,
    pass: &[(std::os::fd::BorrowedFd<'_>, std::os::fd::RawFd)],
) -> io::Result<Child> {
    use std::os::fd::AsRawFd;
    if pass.len() > MAX_PASSED || pass.iter().any(|&(_, to)| !(3..PARKING).contains(&to)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors to pass must be few, and go above stderr and below 256",
        ));
    }
    let mut fds = [(-1, -1); MAX_PASSED];
    for (slot, &(from, to)) in fds.iter_mut().zip(pass) {
        *slot = (from.as_raw_fd(), to);
    }
    let count = pass.len();
    // SAFETY: close_range, fcntl and dup2 are async-signal-safe system
    // calls that only change the child's descriptor table, between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            mark_inherited_cloexec();
            // Park every source above the targets first: a target may be
            // another pair's source. The parked copies close at exec; dup2
            // clears close-on-exec on the targets.
            let mut parked = [-1; MAX_PASSED];
            for (p, &(fd, _)) in parked.iter_mut().zip(&fds[..count]) {
                *p = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, PARKING);
                if *p < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (&p, &(_, target)) in parked.iter().zip(&fds[..count]) {
                if libc::dup2(p, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    match supervision {
        Supervision::DiesWithParent => {
            cmd.process_group(0);
            // Recorded before the fork: comparing getppid() with 1 instead
            // would fail every spawn when we are PID 1 (a container
            // entrypoint) and miss a parent death under a subreaper.
            #[cfg(target_os = "linux")]
            let parent = std::process::id() as libc::pid_t;
            // Linux only: macOS (the apple-vf backend) has no parent-death
            // signal; there `gc` cleans up after a killed `run`.
            #[cfg(target_os = "linux")]
            // SAFETY: prctl and getppid are async-signal-safe and touch no
            // memory of the parent; this closure runs in the child between
            // fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died between fork and prctl: we
                    // were then reparented to init or a subreaper.
                    if libc::getppid() != parent {
                        return Err(io::Error::other("parent exited during spawn"));
                    }
                    Ok(())
                });
            }
        }
        Supervision::Detached => {
            // SAFETY: setsid is async-signal-safe; it runs in the child
            // between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    cmd.spawn()
}

/// Marks every descriptor above stderr close-on-exec. Runs in a forked
/// child, so it may not allocate.
fn mark_inherited_cloexec() {
    #[cfg(target_os = "linux")]
    let done = {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: a plain system call on the child's own descriptor table.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) }
    };
    // No close_range elsewhere (macOS): the loop below does it.
    #[cfg(not(target_os = "linux"))]
    let done = -1;
    if done != 0 {
        // Kernels before 5.11: walk the usual range by hand.
        for fd in 3..4096 {
            // SAFETY: fcntl on a descriptor number; EBADF for unused ones.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Ends the recorded processes: SIGTERM, up to `grace` to exit, then SIGKILL,
/// then waits until they are gone. A record whose pid now belongs to another
/// process (different start time) is left alone.
pub fn terminate(records: &[ProcessRecord], grace: Duration) {
    let alive: Vec<_> = records.iter().filter(|r| r.is_alive()).collect();
    if alive.is_empty() {
        return;
    }
    for r in &alive {
        r.signal(Signal::SIGTERM);
    }
    if !wait_gone(&alive, grace) {
        for r in &alive {
            r.signal(Signal::SIGKILL);
        }
        wait_gone(&alive, Duration::from_secs(5));
    }
}

/// Polls until every process has exited (or become a zombie, which is as
/// good as gone: it holds no resources but its pid).
pub(crate) fn wait_gone(records: &[&ProcessRecord], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if records.iter().all(|r| !r.is_alive()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for a child we own to exit (reaping it); returns
/// whether it did.
pub(crate) fn wait_child(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn children_inherit_only_stdio() {
        // A descriptor the caller left inheritable, as `flock FILE cmd` does.
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: clears FD_CLOEXEC on a descriptor this test owns.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        for supervision in [Supervision::DiesWithParent, Supervision::Detached] {
            let out = spawn_supervised(
                Command::new("sh")
                    .args([
                        "-c",
                        &format!("test -e /proc/self/fd/{fd} && echo leaked || echo clean"),
                    ])
                    .stdout(std::process::Stdio::piped()),
                supervision,
            )
            .unwrap()
            .wait_with_output()
            .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "clean",
                "{supervision:?}"
            );
        }
    }

    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;

    /// A shell that has set `trap` for SIGTERM, once it says so.
    fn shell_trapping(trap: &str) -> Child {
        let mut child = spawn_supervised(
            Command::new("sh")
                .args([
                    "-c",
                    &format!("{trap}; echo ready; while :; do sleep 0.05; done"),
                ])
                .stdout(std::process::Stdio::piped()),
            Supervision::DiesWithParent,
        )
        .unwrap();
        let mut ready = [0u8; 6];
        child.stdout.take().unwrap().read_exact(&mut ready).unwrap();
        assert_eq!(&ready, b"ready\n");
        child
    }

    #[test]
    fn terminate_escalates_to_sigkill() {
        let mut child = shell_trapping("trap '' TERM");
        let rec = ProcessRecord::of(child.id() as i32).unwrap();
        let started = Instant::now();
        terminate(&[rec], Duration::from_millis(200));
        assert!(!rec.is_alive());
        assert!(started.elapsed() < Duration::from_secs(3));
        // SIGTERM was ignored, so SIGKILL is what ended it.
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn terminate_stops_at_sigterm_when_that_suffices() {
        let mut child = shell_trapping("trap 'exit 7' TERM");
        let rec = ProcessRecord::of(child.id() as i32).unwrap();
        terminate(&[rec], Duration::from_secs(5));
        assert_eq!(child.wait().unwrap().code(), Some(7));
    }

    /// As a container entrypoint microagent is PID 1: spawning must work
    /// there. The test re-runs itself as PID 1 of a new PID namespace.
    #[test]
    fn spawns_when_we_are_pid_1() {
        const INNER: &str = "MICROAGENT_TEST_AS_PID1";
        if std::env::var_os(INNER).is_some() {
            assert_eq!(std::process::id(), 1, "not PID 1 of the namespace");
            let mut child =
                spawn_supervised(&mut Command::new("true"), Supervision::DiesWithParent)
                    .expect("spawning as PID 1");
            assert!(child.wait().unwrap().success());
            return;
        }
        let out = Command::new("unshare")
            .args(["-p", "-f", "--mount-proc"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "process::tests::spawns_when_we_are_pid_1"])
            .args(["--nocapture", "--test-threads=1"])
            .env(INNER, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("1 passed"),
            "the inner test did not run: {text}"
        );
    }
}

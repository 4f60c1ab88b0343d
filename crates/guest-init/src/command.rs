//! Running one command: spawn it in its own process group (or session, on a
//! tty), pump its output into frames as it is produced, enforce the deadline
//! (SIGTERM to the group, grace, SIGKILL), and build the [`RunResult`].
//!
//! Output is read in [`CHUNK_SIZE`] pieces by one thread that polls stdout and
//! stderr together, so chunks reach the host in the order they were read and
//! memory stays bounded: when the host is slow, the blocking frame write
//! stalls the pump, the pipe fills and the command blocks in `write`.
//! Backpressure, not buffering.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use vmkit_channel::{ExecRequest, Message, TtySize, CHUNK_SIZE};
use vmkit_protocol::RunResult;

use crate::image::{resolve_user, Creds, Defaults};
use crate::pty;
use crate::reaper::{Exit, Reaper};

/// After the command's main process exits, keep reading output this long
/// after the last byte (a background grandchild may hold the pipe open forever).
const DRAIN_IDLE: Duration = Duration::from_millis(250);
/// ... and never longer than this in total.
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Default time between SIGTERM and SIGKILL on timeout.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// A fully resolved command, ready to spawn.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The complete environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (created if missing).
    pub cwd: String,
    /// Who to run as; `None` keeps the init's own identity.
    pub creds: Option<Creds>,
    /// Stdin is fed by the caller; otherwise `/dev/null`.
    pub stdin: bool,
    /// Run on a pseudo-terminal.
    pub tty: bool,
    /// The pseudo-terminal's size at start.
    pub tty_size: TtySize,
    /// When to kill it.
    pub deadline: Option<Instant>,
    /// Forward at most this many output bytes.
    pub max_output: Option<u64>,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

impl Launch {
    /// Resolves an exec request against the defaults (request > boot spec > image).
    pub fn from_request(req: &ExecRequest, d: &Defaults) -> Result<Launch, String> {
        req.validate()?;
        let mut l = Launch::base(req.argv.clone(), d, req.cwd.as_deref(), req.user.as_deref())?;
        l.env
            .extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        l.stdin = req.stdin;
        l.tty = req.tty;
        l.tty_size = req.tty_size.unwrap_or(pty::DEFAULT_SIZE);
        l.deadline = req
            .timeout_ms
            .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
        l.max_output = req.max_output_bytes;
        Ok(l)
    }

    /// A `/bin/sh -c` command with the defaults (run mode).
    pub fn shell(command: &str, d: &Defaults, deadline: Option<Instant>) -> Result<Launch, String> {
        let mut l = Launch::base(
            vec!["/bin/sh".into(), "-c".into(), command.into()],
            d,
            None,
            None,
        )?;
        l.deadline = deadline;
        Ok(l)
    }

    fn base(
        argv: Vec<String>,
        d: &Defaults,
        cwd: Option<&str>,
        user: Option<&str>,
    ) -> Result<Launch, String> {
        let creds = match user.or(d.user.as_deref()) {
            Some(u) => Some(resolve_user(u, &d.root)?),
            None => None,
        };
        let mut env = d.env.clone();
        if !env.contains_key("HOME") {
            let home = match &creds {
                Some(c) => c
                    .home
                    .clone()
                    .unwrap_or_else(|| if c.uid == 0 { "/root" } else { "/" }.to_string()),
                None => "/root".to_string(),
            };
            env.insert("HOME".into(), home);
        }
        Ok(Launch {
            argv,
            env,
            cwd: cwd.or(d.cwd.as_deref()).unwrap_or("/").to_string(),
            creds,
            stdin: false,
            tty: false,
            tty_size: pty::DEFAULT_SIZE,
            deadline: None,
            max_output: None,
            kill_grace: DEFAULT_KILL_GRACE,
        })
    }
}

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The part of a running command other threads may touch: signalling its
/// process group, guarded so that nobody signals a group after its leader was
/// reaped (the pgid could then belong to someone else).
#[derive(Debug)]
pub struct Handle {
    pgid: libc::pid_t,
    exited: Mutex<bool>,
}

impl Handle {
    /// Sends `signal` to the command's process group, if it still runs.
    pub fn signal(&self, signal: i32) {
        let exited = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        if !*exited && (1..=64).contains(&signal) {
            killpg(self.pgid, signal);
        }
    }
}

fn killpg(pgid: libc::pid_t, signal: i32) {
    // SAFETY: plain syscall with integer arguments; the pgid is one we created
    // and (per `Handle`) whose leader has not been reaped.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// A spawned command.
pub struct Started {
    /// Shared with whoever may signal it.
    pub handle: std::sync::Arc<Handle>,
    /// Where the command's stdin goes (pipe, or the tty master), if it was asked for.
    pub stdin: Option<File>,
    /// Resizes the command's pty (tty execs only).
    pub resizer: Option<pty::Resizer>,
    exit: Receiver<Exit>,
    outputs: Vec<(Stream, File)>,
    started_at: DateTime<Utc>,
}

fn now() -> DateTime<Utc> {
    DateTime::<Utc>::from(SystemTime::now())
}

/// A result for a command that never ran.
pub fn failed_to_start(error: String) -> RunResult {
    let t = now();
    RunResult {
        started_at: Some(t),
        completed_at: Some(t),
        error: Some(error),
        ..RunResult::default()
    }
}

/// Spawns the command through the reaper.
pub fn start(l: &Launch, reaper: &Reaper) -> Result<Started, String> {
    let program = l.argv.first().ok_or("no program to run")?;
    if !std::path::Path::new(&l.cwd).is_dir() {
        std::fs::create_dir_all(&l.cwd).map_err(|e| format!("working directory {}: {e}", l.cwd))?;
    }
    let mut cmd = Command::new(program);
    cmd.args(&l.argv[1..])
        .env_clear()
        .envs(&l.env)
        .current_dir(&l.cwd);
    let mut outputs = Vec::new();
    let mut stdin = None;
    let tty_master = if l.tty {
        let (master, slave) =
            pty::open(l.tty_size).map_err(|e| format!("allocating a pty: {e}"))?;
        let slave = File::from(slave);
        let dup = |f: &File| f.try_clone().map(Stdio::from);
        cmd.stdin(dup(&slave).map_err(|e| e.to_string())?)
            .stdout(dup(&slave).map_err(|e| e.to_string())?)
            .stderr(Stdio::from(slave));
        Some(File::from(master))
    } else {
        cmd.stdin(if l.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        None
    };
    let creds = l.creds.clone();
    let tty = l.tty;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, ioctl, setgroups, setgid, setuid);
    // `groups` was allocated before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            if tty && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                return Err(io::Error::last_os_error());
            }
            if let Some(c) = &creds {
                if libc::setgroups(c.groups.len(), c.groups.as_ptr()) < 0
                    || libc::setgid(c.gid) < 0
                    || libc::setuid(c.uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let started_at = now();
    let (mut child, exit) = reaper.spawn(&mut cmd).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("{program}: command not found"),
        _ => format!("cannot run {program}: {e}"),
    })?;
    let pgid = child.id() as libc::pid_t;
    let mut resizer = None;
    if let Some(master) = tty_master {
        resizer = Some(pty::Resizer::new(
            master.try_clone().map_err(|e| e.to_string())?,
        ));
        if l.stdin {
            stdin = Some(master.try_clone().map_err(|e| e.to_string())?);
        }
        outputs.push((Stream::Stdout, master));
    } else {
        stdin = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
        if let Some(o) = child.stdout.take() {
            outputs.push((Stream::Stdout, File::from(OwnedFd::from(o))));
        }
        if let Some(e) = child.stderr.take() {
            outputs.push((Stream::Stderr, File::from(OwnedFd::from(e))));
        }
    }
    // Dropping `Child` neither waits nor kills; the reaper owns the status.
    drop(child);
    Ok(Started {
        handle: std::sync::Arc::new(Handle {
            pgid,
            exited: Mutex::new(false),
        }),
        stdin,
        resizer,
        exit,
        outputs,
        started_at,
    })
}

/// Waits for the command, pumping its output through `send` as it comes,
/// and returns its result. `send` errors (host gone) stop forwarding but not
/// draining, so the command never blocks on a full pipe because of us.
/// `note` is read at the end: an error recorded by another thread (a bad
/// frame from the host) ends up in the result.
pub fn finish(
    started: Started,
    l: &Launch,
    send: &(dyn Fn(Message) -> io::Result<()> + Sync),
    note: &Mutex<Option<String>>,
) -> RunResult {
    let Started {
        handle,
        stdin,
        resizer: _,
        exit,
        outputs,
        started_at,
    } = started;
    drop(stdin); // whoever feeds stdin holds their own handle
    let (wake_r, wake_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            // Cannot pump without the wake pipe; kill rather than leave it unattended.
            handle.signal(libc::SIGKILL);
            let _ = exit.recv();
            *handle.exited.lock().unwrap_or_else(|p| p.into_inner()) = true;
            return failed_to_start(format!("pipe: {e}"));
        }
    };
    let (status, timed_out, pump) = std::thread::scope(|s| {
        let pump = s.spawn(|| pump(outputs, File::from(wake_r), send, l.max_output));
        let (status, timed_out) = wait(&handle, &exit, l);
        let _ = File::from(wake_w).write_all(&[1]);
        let stats = pump.join().unwrap_or_default();
        (status, timed_out, stats)
    });
    let mut errors = Vec::new();
    if timed_out {
        errors.push("timed out; the process group was killed".to_string());
    }
    if pump.dropped > 0 {
        errors.push(format!(
            "output truncated: {} bytes forwarded, {} dropped",
            pump.forwarded, pump.dropped
        ));
    }
    if let Some(e) = note.lock().unwrap_or_else(|p| p.into_inner()).take() {
        errors.push(e);
    }
    let (exit_code, signal) = match status {
        Some(Exit::Code(c)) => (Some(c), None),
        Some(Exit::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    RunResult {
        exit_code,
        signal,
        started_at: Some(started_at),
        completed_at: Some(now()),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        timed_out,
    }
}

/// Waits for the main process, enforcing the deadline. Returns its exit
/// status (None only if the reaper went away) and whether it timed out.
fn wait(handle: &Handle, exit: &Receiver<Exit>, l: &Launch) -> (Option<Exit>, bool) {
    let mut timed_out = false;
    let status = match l.deadline {
        None => exit.recv().ok(),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            match exit.recv_timeout(left) {
                Ok(s) => Some(s),
                Err(RecvTimeoutError::Disconnected) => None,
                Err(RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    handle.signal(libc::SIGTERM);
                    match exit.recv_timeout(l.kill_grace) {
                        Ok(s) => Some(s),
                        Err(_) => {
                            handle.signal(libc::SIGKILL);
                            exit.recv().ok()
                        }
                    }
                }
            }
        }
    };
    let mut exited = handle.exited.lock().unwrap_or_else(|p| p.into_inner());
    if timed_out {
        // Stragglers of a timed-out command go too; the group still exists
        // while any of them lives, so its id cannot have been reused.
        killpg(handle.pgid, libc::SIGKILL);
    }
    *exited = true;
    (status, timed_out)
}

#[derive(Debug, Default)]
struct PumpStats {
    forwarded: u64,
    dropped: u64,
}

fn pump(
    mut outputs: Vec<(Stream, File)>,
    mut wake: File,
    send: &(dyn Fn(Message) -> io::Result<()> + Sync),
    max_output: Option<u64>,
) -> PumpStats {
    let mut stats = PumpStats::default();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut exited_at: Option<Instant> = None;
    let mut last_data = Instant::now();
    let mut host_gone = false;
    while !outputs.is_empty() {
        let timeout = match exited_at {
            None => PollTimeout::NONE,
            Some(t) => {
                let until = (last_data.max(t) + DRAIN_IDLE).min(t + DRAIN_MAX);
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32)
                    .unwrap_or(PollTimeout::NONE)
            }
        };
        let mut fds: Vec<PollFd> = outputs
            .iter()
            .map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        if exited_at.is_none() {
            fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if exited_at.is_none() && ready[outputs.len()] {
            let _ = wake.read(&mut [0u8; 1]);
            exited_at = Some(Instant::now());
        }
        let mut closed = Vec::new();
        for (i, (stream, file)) in outputs.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match file.read(&mut buf) {
                // A tty master shares its file description with the stdin
                // writer, which makes it non-blocking: nothing to read yet.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO: the tty's last slave fd closed; that is its EOF.
                Ok(0) | Err(_) => closed.push(i),
                Ok(n) => {
                    last_data = Instant::now();
                    let allowed = match max_output {
                        Some(max) => max.saturating_sub(stats.forwarded).min(n as u64) as usize,
                        None => n,
                    };
                    stats.dropped += (n - allowed) as u64;
                    if allowed > 0 && !host_gone {
                        let chunk = buf[..allowed].to_vec();
                        let msg = match stream {
                            Stream::Stdout => Message::Stdout(chunk),
                            Stream::Stderr => Message::Stderr(chunk),
                        };
                        host_gone = send(msg).is_err();
                    }
                    stats.forwarded += allowed as u64;
                }
            }
        }
        for i in closed.into_iter().rev() {
            outputs.remove(i);
        }
    }
    stats
}

use serde::{Deserialize, Serialize};

/// A host process we started (a VMM, a vsock bridge), recorded with its start
/// time so a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    /// The process ID.
    pub pid: i32,
    /// When the process started: on Linux field 22 of `/proc/<pid>/stat`
    /// (clock ticks since boot); on macOS `pbi_start_tvsec * 1_000_000 +
    /// pbi_start_tvusec` from `proc_pidinfo` (microseconds since the epoch).
    pub start_time: u64,
}

impl ProcessRecord {
    /// Records a live process; `None` if it is already gone.
    pub fn of(pid: i32) -> Option<Self> {
        start_time(pid).map(|start_time| ProcessRecord { pid, start_time })
    }

    /// Whether this very process still exists (same pid, same start time)
    /// and has not exited into a zombie.
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// Sends `signal` if (and only if) the process is still this one.
    /// Returns whether a signal was sent.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> bool {
        if !self.is_alive() || self.pid <= 0 {
            return false;
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal).is_ok()
    }
}

fn start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|(_, start)| start)
}

/// Reads the state letter and start time from `/proc/<pid>/stat`. The command
/// name (field 2) may hold spaces and parentheses, so parse from the last ')'.
#[cfg(target_os = "linux")]
fn read_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), start time is field 22: 19 fields further.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// On macOS (the apple-vf backend) the kernel's BSD process info has the
/// start time: `proc_pidinfo(PROC_PIDTBSDINFO)`, seconds and microseconds.
/// Its status `SZOMB` is a zombie, reported as `Z` like Linux's.
#[cfg(target_os = "macos")]
fn read_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: proc_bsdinfo is plain data (integers and char arrays), so
    // all-zero is a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: proc_pidinfo writes at most `size` bytes into `info`, which
    // is exactly that large; it returns how many it wrote.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    if n != size {
        return None; // no such process (or not ours to see)
    }
    let state = if info.pbi_status == libc::SZOMB {
        'Z'
    } else {
        'S'
    };
    Some((
        state,
        info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
    ))
}

/// Elsewhere: a pid that exists is taken at its word, with start time 0,
/// so a recycled pid is not told apart there.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn read_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    // Signal 0: only whether the pid exists.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(('S', 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn tracks_a_real_process_until_it_exits() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let rec = ProcessRecord::of(child.id() as i32).unwrap();
        assert!(rec.is_alive());
        let forged = ProcessRecord {
            start_time: rec.start_time + 1,
            ..rec
        };
        assert!(
            !forged.is_alive(),
            "a different start time is another process"
        );
        assert!(rec.signal(nix::sys::signal::Signal::SIGKILL));
        child.wait().unwrap();
        assert!(!rec.is_alive());
        assert!(!rec.signal(nix::sys::signal::Signal::SIGKILL));
    }
}

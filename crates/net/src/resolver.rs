//! Name lookups through the host's resolver (`getaddrinfo`, so
//! `/etc/hosts` counts), on a few worker threads so the poll loop never
//! blocks, with a small cache and a bound on lookups in flight (a guest's
//! query flood costs at most that many threads' work).

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The outcome of looking up a name's IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The addresses (possibly none: the name exists without IPv4).
    Addrs(Vec<Ipv4Addr>),
    /// The name does not exist.
    NoName,
    /// The resolver failed (try again later).
    Failed,
}

/// A function that looks a name up (the host's getaddrinfo, or a table in
/// tests).
pub type LookupFn = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

/// How many lookups may be in flight; more are answered SERVFAIL at once.
pub const MAX_IN_FLIGHT: usize = 64;
const WORKERS: usize = 4;
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_ENTRIES: usize = 1024;
const MAX_ADDRS: usize = 16;

/// A finished lookup: the caller's token, the name, the answer.
#[derive(Debug)]
pub struct Done {
    /// What the caller passed to [`Resolver::lookup`].
    pub token: u64,
    /// The name looked up.
    pub name: String,
    /// The outcome.
    pub answer: Answer,
}

/// The lookup service of one stack.
pub struct Resolver {
    jobs: Option<mpsc::Sender<(u64, String)>>,
    done: Arc<Mutex<VecDeque<Done>>>,
    wake: UnixStream,
    in_flight: usize,
    cache: HashMap<String, (Instant, Answer)>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Resolver {
    /// A resolver with the host's getaddrinfo.
    pub fn host() -> std::io::Result<Resolver> {
        Resolver::with(Arc::new(getaddrinfo_v4))
    }

    /// A resolver with the given lookup function.
    pub fn with(lookup: LookupFn) -> std::io::Result<Resolver> {
        let (wake, wake_tx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (jobs, rx) = mpsc::channel::<(u64, String)>();
        let rx = Arc::new(Mutex::new(rx));
        let done = Arc::new(Mutex::new(VecDeque::new()));
        for n in 0..WORKERS {
            let rx = Arc::clone(&rx);
            let done = Arc::clone(&done);
            let lookup = Arc::clone(&lookup);
            let mut wake_tx = wake_tx.try_clone()?;
            std::thread::Builder::new()
                .name(format!("dns-{n}"))
                .spawn(move || loop {
                    let job = rx.lock().map(|r| r.recv());
                    let Ok(Ok((token, name))) = job else { return };
                    let answer = lookup(&name);
                    if let Ok(mut d) = done.lock() {
                        d.push_back(Done {
                            token,
                            name,
                            answer,
                        });
                    }
                    // A full wake pipe already means "look".
                    let _ = wake_tx.write(&[1]);
                })?;
        }
        Ok(Resolver {
            jobs: Some(jobs),
            done,
            wake,
            in_flight: 0,
            cache: HashMap::new(),
        })
    }

    /// The fd that becomes readable when lookups finish.
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.wake)
    }

    /// Starts looking `name` up. Returns the answer at once when it is
    /// cached, or `Failed` when too many lookups are in flight; otherwise
    /// `None` and the answer comes later from [`Resolver::take_done`].
    pub fn lookup(&mut self, name: &str, token: u64, now: Instant) -> Option<Answer> {
        if let Some((at, answer)) = self.cache.get(name) {
            if now.duration_since(*at) < CACHE_TTL {
                return Some(answer.clone());
            }
        }
        if self.in_flight >= MAX_IN_FLIGHT {
            return Some(Answer::Failed);
        }
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|j| j.send((token, name.to_string())).is_ok());
        if !sent {
            return Some(Answer::Failed);
        }
        self.in_flight += 1;
        None
    }

    /// The lookups finished since the last call (and caches them).
    pub fn take_done(&mut self, now: Instant) -> Vec<Done> {
        let mut drain = [0u8; 256];
        while matches!(std::io::Read::read(&mut &self.wake, &mut drain), Ok(n) if n > 0) {}
        let done: Vec<Done> = match self.done.lock() {
            Ok(mut d) => d.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        self.in_flight = self.in_flight.saturating_sub(done.len());
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache
                .retain(|_, (at, _)| now.duration_since(*at) < CACHE_TTL);
            if self.cache.len() >= CACHE_ENTRIES {
                self.cache.clear();
            }
        }
        for d in &done {
            if d.answer != Answer::Failed {
                self.cache.insert(d.name.clone(), (now, d.answer.clone()));
            }
        }
        done
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // Closing the job channel ends the workers once their lookup returns.
        self.jobs.take();
    }
}

/// The host's IPv4 addresses for `name` (getaddrinfo with AF_INET, which
/// reads /etc/hosts and asks the configured DNS servers).
pub fn getaddrinfo_v4(name: &str) -> Answer {
    let Ok(node) = CString::new(name) else {
        return Answer::NoName;
    };
    // SAFETY: all-zero is a valid `addrinfo` hints value (no flags, any
    // protocol); the fields that matter are set below.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_INET;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `node` is a NUL-terminated string, `hints` a valid addrinfo,
    // `list` receives a list we free below with freeaddrinfo.
    let rc = unsafe { libc::getaddrinfo(node.as_ptr(), std::ptr::null(), &hints, &mut list) };
    match rc {
        0 => {}
        libc::EAI_NONAME => return Answer::NoName,
        libc::EAI_NODATA => return Answer::Addrs(Vec::new()),
        _ => return Answer::Failed,
    }
    let mut addrs = Vec::new();
    let mut entry = list;
    while !entry.is_null() && addrs.len() < MAX_ADDRS {
        // SAFETY: `entry` is a node of the list getaddrinfo returned, which
        // stays valid until freeaddrinfo.
        let ai = unsafe { &*entry };
        if ai.ai_family == libc::AF_INET && !ai.ai_addr.is_null() {
            // SAFETY: for AF_INET, ai_addr points to a sockaddr_in.
            let sin = unsafe { &*(ai.ai_addr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        entry = ai.ai_next;
    }
    // SAFETY: `list` came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(list) };
    Answer::Addrs(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_resolver_reads_etc_hosts() {
        assert_eq!(
            getaddrinfo_v4("localhost"),
            Answer::Addrs(vec![Ipv4Addr::LOCALHOST])
        );
        assert_eq!(getaddrinfo_v4("no-such-name.invalid"), Answer::NoName);
    }

    #[test]
    fn lookups_finish_on_workers_and_are_cached() {
        let calls = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&calls);
        let mut resolver = Resolver::with(Arc::new(move |name: &str| {
            *counted.lock().unwrap() += 1;
            if name == "pkg.test" {
                Answer::Addrs(vec![Ipv4Addr::new(203, 0, 113, 10)])
            } else {
                Answer::NoName
            }
        }))
        .unwrap();
        let now = Instant::now();
        assert_eq!(resolver.lookup("pkg.test", 7, now), None);
        let mut done = Vec::new();
        while done.is_empty() {
            let mut fds = [nix::poll::PollFd::new(
                resolver.wake_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE).unwrap();
            done = resolver.take_done(now);
        }
        assert_eq!(done[0].token, 7);
        assert_eq!(
            done[0].answer,
            Answer::Addrs(vec![Ipv4Addr::new(203, 0, 113, 10)])
        );
        assert_eq!(
            resolver.lookup("pkg.test", 8, now),
            Some(Answer::Addrs(vec![Ipv4Addr::new(203, 0, 113, 10)]))
        );
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}

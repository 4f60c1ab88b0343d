//! The freeze session's rules, over a socket pair with a recording fake
//! in place of the kernel's FIFREEZE.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmkit_channel::{read_message, write_message, FreezeRequest, Message};

use super::{Freezer, FsFreeze};

/// Records every call; `/tmpfs` cannot be frozen, `/broken` fails.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl FsFreeze for Recorder {
    fn freeze(&self, m: &str) -> std::io::Result<bool> {
        self.0.lock().unwrap().push(format!("freeze {m}"));
        match m {
            "/tmpfs" => Ok(false),
            "/broken" => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            _ => Ok(true),
        }
    }
    fn thaw(&self, m: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().push(format!("thaw {m}"));
        Ok(())
    }
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn freezer(mounts: &[&str]) -> (Arc<Freezer>, Recorder) {
    let r = Recorder::default();
    // Paths that do not exist are kept as given (no device to compare).
    let mounts = mounts.iter().map(|m| m.to_string()).collect();
    (Arc::new(Freezer::new(Box::new(r.clone()), mounts)), r)
}

/// Starts a session for `request`; returns the host's end.
fn start(f: &Arc<Freezer>, ms: Option<u64>) -> (UnixStream, std::thread::JoinHandle<()>) {
    let (host, guest) = UnixStream::pair().unwrap();
    let f = Arc::clone(f);
    let request = FreezeRequest { timeout_ms: ms };
    let t = std::thread::spawn(move || f.session(guest, &request));
    (host, t)
}

fn next(host: &mut UnixStream) -> Option<Message> {
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    read_message(host).unwrap()
}

#[test]
fn thaw_answers_ack_after_thawing_in_reverse_order() {
    let (f, r) = freezer(&["/", "/tmpfs", "/data"]);
    let (mut host, t) = start(&f, Some(60_000));
    let frozen = next(&mut host).unwrap();
    assert_eq!(
        frozen,
        Message::Frozen {
            mountpoints: vec!["/".into(), "/data".into()]
        }
    );
    write_message(&mut host, &Message::Thaw).unwrap();
    assert_eq!(next(&mut host), Some(Message::Ack));
    t.join().unwrap();
    assert_eq!(
        r.calls(),
        [
            "freeze /",
            "freeze /tmpfs",
            "freeze /data",
            "thaw /data",
            "thaw /"
        ]
    );
}

#[test]
fn the_connections_end_thaws() {
    let (f, r) = freezer(&["/"]);
    let (mut host, t) = start(&f, Some(60_000));
    assert!(matches!(next(&mut host), Some(Message::Frozen { .. })));
    drop(host);
    t.join().unwrap();
    assert_eq!(r.calls(), ["freeze /", "thaw /"]);
}

#[test]
fn the_deadline_thaws_and_says_so() {
    let (f, r) = freezer(&["/"]);
    let started = Instant::now();
    let (mut host, t) = start(&f, Some(200));
    assert!(matches!(next(&mut host), Some(Message::Frozen { .. })));
    // The host says nothing; the guest thaws by itself and tells why.
    match next(&mut host) {
        Some(Message::Error { message }) => assert!(message.contains("expired"), "{message}"),
        other => panic!("expected error, got {other:?}"),
    }
    t.join().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.calls(), ["freeze /", "thaw /"]);
}

#[test]
fn a_trickling_host_cannot_stretch_the_deadline() {
    let (f, r) = freezer(&["/"]);
    let started = Instant::now();
    let (mut host, t) = start(&f, Some(300));
    assert!(matches!(next(&mut host), Some(Message::Frozen { .. })));
    // Half a frame, one byte at a time, for longer than the deadline.
    for _ in 0..3 {
        let _ = std::io::Write::write_all(&mut host, &[0]);
        std::thread::sleep(Duration::from_millis(150));
    }
    t.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.calls(), ["freeze /", "thaw /"]);
}

#[test]
fn one_freeze_at_a_time() {
    let (f, r) = freezer(&["/"]);
    let (mut first, t1) = start(&f, Some(60_000));
    assert!(matches!(next(&mut first), Some(Message::Frozen { .. })));
    let (mut second, t2) = start(&f, Some(60_000));
    match next(&mut second) {
        Some(Message::Error { message }) => assert!(message.contains("frozen already")),
        other => panic!("expected error, got {other:?}"),
    }
    t2.join().unwrap();
    write_message(&mut first, &Message::Thaw).unwrap();
    assert_eq!(next(&mut first), Some(Message::Ack));
    t1.join().unwrap();
    assert_eq!(r.calls(), ["freeze /", "thaw /"]);
}

#[test]
fn a_failed_freeze_thaws_what_it_froze_and_names_the_culprit() {
    let (f, r) = freezer(&["/", "/broken", "/data"]);
    let (mut host, t) = start(&f, None);
    match next(&mut host) {
        Some(Message::Error { message }) => assert!(message.contains("freezing /broken")),
        other => panic!("expected error, got {other:?}"),
    }
    t.join().unwrap();
    assert_eq!(r.calls(), ["freeze /", "freeze /broken", "thaw /"]);
}

#[test]
fn anything_but_thaw_while_frozen_thaws_and_is_an_error() {
    for garbage in [
        vmkit_channel::frame::encode(&Message::Ping).unwrap(),
        b"\x00\x00\x00\x05nope!".to_vec(),
    ] {
        let (f, r) = freezer(&["/"]);
        let (mut host, t) = start(&f, Some(60_000));
        assert!(matches!(next(&mut host), Some(Message::Frozen { .. })));
        std::io::Write::write_all(&mut host, &garbage).unwrap();
        assert!(matches!(next(&mut host), Some(Message::Error { .. })));
        t.join().unwrap();
        assert_eq!(r.calls(), ["freeze /", "thaw /"]);
    }
}

#[test]
fn a_bad_deadline_freezes_nothing() {
    for ms in [0, vmkit_channel::MAX_FREEZE_MS + 1] {
        let (f, r) = freezer(&["/"]);
        let (mut host, t) = start(&f, Some(ms));
        assert!(matches!(next(&mut host), Some(Message::Error { .. })));
        t.join().unwrap();
        assert!(r.calls().is_empty());
    }
}

#[test]
fn two_mountpoints_of_one_filesystem_freeze_once() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let (f, _) = freezer(&[dir.path().to_str().unwrap(), sub.to_str().unwrap(), "/proc"]);
    assert_eq!(f.mountpoints(), [dir.path().to_str().unwrap(), "/proc"]);
}

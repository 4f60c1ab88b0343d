//! The stream multiplexer over a real socket pair: streams both ways,
//! flow control with a slow reader, refusal, half-close, a new session
//! resetting old streams, and hostile frames.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vmkit_channel::mux::{Frame, Mux, MuxError, Role, MAX_PAYLOAD};

/// A guest and host mux joined by a socket pair. The host answers port 7
/// with an echo server; the guest hands port 9 connections to `accepted`.
fn pair() -> (Arc<Mux>, Arc<Mux>, mpsc::Receiver<UnixStream>, UnixStream) {
    let (host_link, guest_link) = UnixStream::pair().unwrap();
    let echo = Box::new(|port: u32| {
        (port == 7).then(|| {
            let (a, mut b) = UnixStream::pair().unwrap();
            thread::spawn(move || {
                let mut copy = b.try_clone().unwrap();
                std::io::copy(&mut b, &mut copy).unwrap();
                copy.shutdown(std::net::Shutdown::Write).unwrap();
            });
            a
        })
    });
    let host = Mux::new(Role::Host, Box::new(host_link.try_clone().unwrap()), echo);
    let (tx, accepted) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let guest = Mux::new(
        Role::Guest,
        Box::new(guest_link.try_clone().unwrap()),
        Box::new(move |port| {
            (port == 9).then(|| {
                let (a, b) = UnixStream::pair().unwrap();
                tx.lock().unwrap().send(b).unwrap();
                a
            })
        }),
    );
    let h = host.clone();
    let hl = host_link.try_clone().unwrap();
    thread::spawn(move || h.run(hl));
    let g = guest.clone();
    thread::spawn(move || g.run(guest_link));
    host.hello(1).unwrap();
    assert!(guest.wait_for_peer(Duration::from_secs(5)));
    (host, guest, accepted, host_link)
}

#[test]
fn a_guest_stream_echoes_four_mebibytes_through_the_window() {
    let (_host, guest, _accepted, _link) = pair();
    let (mine, theirs) = UnixStream::pair().unwrap();
    guest.open(7, theirs, b"").unwrap();
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut writer = mine.try_clone().unwrap();
    let sent = data.clone();
    let w = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    let mut reader = mine;
    reader.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);
}

#[test]
fn host_streams_reach_guest_listeners_and_unknown_ports_are_refused() {
    let (host, _guest, accepted, _link) = pair();
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    host.open(9, theirs, b"").unwrap();
    let mut guest_end = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
    mine.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    guest_end.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    guest_end.write_all(b"pong").unwrap();
    drop(guest_end);
    let mut rest = Vec::new();
    mine.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"pong");

    let (_a, b) = UnixStream::pair().unwrap();
    let err = host.open(1234, b, b"").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn a_new_session_resets_the_streams_of_the_old_one() {
    let (host, guest, _accepted, _link) = pair();
    let (tx, rx) = mpsc::channel();
    guest.on_new_session(move |s| tx.send(s).unwrap());
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    guest.open(7, theirs, b"").unwrap();
    // The same session again changes nothing.
    host.hello(1).unwrap();
    mine.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    mine.read_exact(&mut one).unwrap();
    host.hello(2).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 2);
    let mut rest = Vec::new();
    // Reset: the local socket ends (EOF or error), nothing more arrives.
    let _ = mine.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert_eq!(guest.open_streams(), 0);
}

#[test]
fn hostile_frames_are_errors_not_panics() {
    let bad: Vec<Vec<u8>> = vec![
        vec![99, 0, 0, 0, 1, 0, 0, 0, 0],            // unknown kind
        vec![5, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff], // huge length
        vec![2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3],    // connect with 3 bytes
        vec![1, 0, 0, 0, 0, 0, 0, 0, 8, 1, 2],       // truncated payload
        vec![3, 0, 0],                               // truncated header
    ];
    for bytes in bad {
        assert!(
            matches!(Frame::read(&mut &bytes[..]), Err(MuxError::Malformed(_))),
            "{bytes:?}"
        );
    }
    // Every frame survives encode/decode; every prefix of one is an error
    // or a clean end, never a panic.
    let frames = [
        Frame::Hello(u64::MAX),
        Frame::Connect {
            id: 3,
            port: 10_001,
        },
        Frame::Accept(3),
        Frame::Refuse(5),
        Frame::Data(7, vec![1; MAX_PAYLOAD]),
        Frame::Credit(7, 100),
        Frame::Close(7),
        Frame::Reset(9),
    ];
    for f in &frames {
        let bytes = f.encode();
        assert_eq!(Frame::read(&mut &bytes[..]).unwrap().as_ref(), Some(f));
        for cut in 1..bytes.len().min(40) {
            let _ = Frame::read(&mut &bytes[..cut]);
        }
    }
    // Random bytes: a pseudo-random walk over the format.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..2000 {
        let len = (x % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 10) as u8
            })
            .collect();
        let mut r = &bytes[..];
        while let Ok(Some(_)) = Frame::read(&mut r) {}
    }
}

#[test]
fn data_beyond_the_window_or_for_unknown_streams_is_reset() {
    let (host_link, guest_link) = UnixStream::pair().unwrap();
    let guest = Mux::new(
        Role::Guest,
        Box::new(guest_link.try_clone().unwrap()),
        Box::new(|_| None),
    );
    let g = guest.clone();
    thread::spawn(move || g.run(guest_link));
    let mut link = host_link;
    link.write_all(&Frame::Data(41, b"who?".to_vec()).encode())
        .unwrap();
    assert_eq!(Frame::read(&mut link).unwrap(), Some(Frame::Reset(41)));
}

/// The relay between a guest mux (standing in for QEMU's end of the
/// serial port) and the real host code of the hybrid-vsock convention.
#[test]
fn the_relay_serves_the_hybrid_vsock_convention_both_ways() {
    use vmkit_channel::host::{connect, HostListener};
    use vmkit_channel::relay::Relay;

    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.sock");
    let uds = dir.path().join("v.sock");
    let control = HostListener::bind(&uds, 10_000).unwrap();
    let relay = Relay::bind(&serial, &uds).unwrap();
    let served = thread::spawn(move || relay.serve());

    let link = UnixStream::connect(&serial).unwrap();
    let (tx, accepted) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let guest = Mux::new(
        Role::Guest,
        Box::new(link.try_clone().unwrap()),
        Box::new(move |port| {
            (port == 10_001).then(|| {
                let (a, b) = UnixStream::pair().unwrap();
                tx.lock().unwrap().send(b).unwrap();
                a
            })
        }),
    );
    let g = guest.clone();
    let l = link.try_clone().unwrap();
    thread::spawn(move || g.run(l));
    assert!(guest.wait_for_peer(Duration::from_secs(5)));

    // Guest -> host: reaches the listener at <uds>_10000.
    let (mut g_end, theirs) = UnixStream::pair().unwrap();
    guest.open(10_000, theirs, b"").unwrap();
    let mut h_end = control.accept(Duration::from_secs(5)).unwrap();
    g_end.write_all(b"ready").unwrap();
    let mut buf = [0u8; 5];
    h_end.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready");

    // Host -> guest: CONNECT / OK, then the guest's port.
    let mut s = connect(&uds, 10_001, Duration::from_secs(5)).unwrap();
    let mut guest_side = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
    s.write_all(b"exec").unwrap();
    let mut buf = [0u8; 4];
    guest_side.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"exec");

    // A port nobody listens on: closed without OK.
    assert!(connect(&uds, 4242, Duration::from_millis(300)).is_err());

    // The VMM going away ends the relay, which removes its sockets.
    link.shutdown(std::net::Shutdown::Both).unwrap();
    served.join().unwrap().unwrap();
    assert!(!uds.exists() && !serial.exists());
}

/// The exec pattern, many times over: the host opens, sends a request,
/// the guest answers and closes its end; every answer must arrive whole.
#[test]
fn request_answer_close_never_loses_the_answer() {
    let (host, _guest, accepted, _link) = pair();
    let server = thread::spawn(move || {
        for _ in 0..300 {
            let mut s = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
            let mut req = [0u8; 3];
            s.read_exact(&mut req).unwrap();
            s.write_all(b"output and result").unwrap();
            // Dropped: the guest service closes after its answer.
        }
    });
    for i in 0..300 {
        let (mut mine, theirs) = UnixStream::pair().unwrap();
        host.open(9, theirs, b"").unwrap();
        mine.write_all(b"req").unwrap();
        let mut answer = Vec::new();
        mine.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"output and result", "round {i}");
    }
    server.join().unwrap();
}

/// A guest service that closes with unread input (ECONNRESET on the pair)
/// right after its answer: the answer still arrives whole.
#[test]
fn an_answer_followed_by_a_reset_still_arrives() {
    let (host, _guest, accepted, _link) = pair();
    let server = thread::spawn(move || {
        for _ in 0..100 {
            let mut s = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
            let mut req = [0u8; 3];
            s.read_exact(&mut req).unwrap();
            // The other 4 bytes came in the same frame: left unread.
            s.write_all(&vec![7u8; 100_000]).unwrap();
        }
    });
    for i in 0..100 {
        let (mut mine, theirs) = UnixStream::pair().unwrap();
        host.open(9, theirs, b"").unwrap();
        mine.write_all(b"reqmore").unwrap();
        let mut answer = Vec::new();
        let _ = mine.read_to_end(&mut answer);
        assert_eq!(answer.len(), 100_000, "round {i}");
    }
    server.join().unwrap();
}

//! Disk-only snapshots of a live guest: frozen while copied, thawed on
//! every way out.

use vmkit_protocol::{Backend, Command, ErrorCode, SnapshotAction, State};

use super::{listed, running_workspace, snapshot_request, Fixture};

fn disk_only(fx: &Fixture, tag: &str) -> vmkit_protocol::Request {
    let mut r = snapshot_request(fx, SnapshotAction::Create, Some(tag));
    r.snapshot.as_mut().unwrap().disk_only = true;
    r
}

#[test]
fn a_running_guest_is_frozen_for_its_disk_copy_not_paused() {
    let fx = Fixture::new();
    let (lc, (pauses, _, freezes)) = running_workspace(&fx, false);
    let made = lc
        .snapshot(&disk_only(&fx, "d"))
        .unwrap()
        .snapshots
        .unwrap();
    assert!(made[0].disk_only && made[0].frozen, "{:?}", made[0]);
    assert_eq!(*freezes.lock().unwrap(), ["freeze", "thaw"]);
    assert!(pauses.lock().unwrap().is_empty());
    // The record says so when listed, too.
    let listed = lc
        .snapshot(&snapshot_request(&fx, SnapshotAction::List, None))
        .unwrap()
        .snapshots
        .unwrap();
    assert!(listed[0].frozen);
    // A paused guest runs for the freeze and is paused again.
    lc.pause(&fx.request(Command::Pause, "ws", None)).unwrap();
    pauses.lock().unwrap().clear();
    let made = lc
        .snapshot(&disk_only(&fx, "p"))
        .unwrap()
        .snapshots
        .unwrap();
    assert!(made[0].frozen);
    assert_eq!(*pauses.lock().unwrap(), [false, true]);
    let record = fx.store().peek("ws").unwrap().unwrap();
    assert_eq!(record.state, State::Paused);
    // A memory snapshot pauses instead and is not "frozen".
    lc.resume(&fx.request(Command::Resume, "ws", None)).unwrap();
    let made = lc
        .snapshot(&snapshot_request(&fx, SnapshotAction::Create, Some("m")))
        .unwrap()
        .snapshots
        .unwrap();
    assert!(!made[0].frozen && !made[0].disk_only);
    assert_eq!(freezes.lock().unwrap().len(), 4);
    // A stopped workspace's disk needs no freeze.
    lc.kill(&fx.request(Command::Kill, "ws", None)).unwrap();
    let made = lc
        .snapshot(&disk_only(&fx, "s"))
        .unwrap()
        .snapshots
        .unwrap();
    assert!(made[0].disk_only && !made[0].frozen);
    assert_eq!(freezes.lock().unwrap().len(), 4);
}

#[test]
fn a_failed_copy_thaws_the_guest_and_leaves_nothing() {
    let fx = Fixture::new();
    let (lc, (_, _, freezes)) = running_workspace(&fx, false);
    // The workspace's disk is gone: the copy fails after the freeze.
    let disk = fx.dir.path().join("workspaces/ws/rootfs.ext4");
    std::fs::remove_file(&disk).unwrap();
    let err = lc.snapshot(&disk_only(&fx, "d")).unwrap_err();
    assert!(err.message.contains("copying the disk"), "{}", err.message);
    assert_eq!(*freezes.lock().unwrap(), ["freeze", "thaw"]);
    assert!(listed(&lc, &fx).is_empty());
    let left: Vec<_> = std::fs::read_dir(fx.dir.path().join("workspaces/ws/snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    lc.kill(&fx.request(Command::Kill, "ws", None)).unwrap();
}

#[test]
fn a_guest_that_cannot_freeze_fails_the_snapshot_with_the_reason() {
    let fx = Fixture::new();
    let (lc, (_, _, freezes)) = running_workspace(&fx, false);
    // An older guest init, which does not know `freeze`, answers in its
    // place.
    let vsock = fx.dir.path().join("workspaces/ws/v.sock");
    std::fs::remove_file(&vsock).unwrap();
    let old_guest = std::os::unix::net::UnixListener::bind(&vsock).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = old_guest.accept().unwrap();
        let mut line = [0u8; 1];
        while std::io::Read::read(&mut s, &mut line).unwrap() == 1 && line[0] != b'\n' {}
        std::io::Write::write_all(&mut s, b"OK 1\n").unwrap();
        let mut len = [0u8; 4];
        std::io::Read::read_exact(&mut s, &mut len).unwrap();
        let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
        std::io::Read::read_exact(&mut s, &mut json).unwrap();
        assert!(String::from_utf8_lossy(&json).contains(r#""type":"freeze""#));
        // What an init that predates `freeze` says.
        let no = vmkit_channel::Message::Error {
            message: "bad frame: malformed frame: unknown variant `freeze`".into(),
        };
        vmkit_channel::write_message(&mut s, &no).unwrap();
    });
    let err = lc.snapshot(&disk_only(&fx, "d")).unwrap_err();
    assert_eq!(err.code, ErrorCode::GuestFailure);
    assert!(
        err.message.contains("cannot freeze the filesystems")
            && err.message.contains("unknown variant `freeze`"),
        "{}",
        err.message
    );
    assert!(freezes.lock().unwrap().is_empty());
    assert!(listed(&lc, &fx).is_empty());
    lc.kill(&fx.request(Command::Kill, "ws", None)).unwrap();
}

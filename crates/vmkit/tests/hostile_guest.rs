//! `Runtime::copy_from_guest` against a hostile guest. The real guest init
//! packs real folders and cannot be made to send `../x`, so the guest here
//! is a stand-in speaking the real contract (the hybrid-vsock handshake on
//! the workspace's socket, then `copyOut` answered with `data` frames): a
//! compromised guest can send anything the frames allow.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;

use chrono::Utc;
use vmkit_channel::{read_message, write_message, CopyStats, Message};
use vmkit_protocol::{BackendKind, MachineConfig, State};
use vmkit_state::{LockWait, ProcessRecord, StateStore, WorkspaceRecord};
use vmkit_testkit::images::raw_entry;

/// A "running" workspace whose guest is `serve`, answering one connection.
fn hostile_workspace(state: &Path, name: &str, tar: Vec<u8>) -> std::thread::JoinHandle<()> {
    let store = StateStore::open(state).unwrap();
    let lock = store.lock(name, LockWait::NoWait).unwrap();
    let now = Utc::now();
    let record = WorkspaceRecord {
        name: name.into(),
        state: State::Running,
        backend: BackendKind::Qemu,
        image: "hostile".into(),
        config: MachineConfig::new("/k", "/r", state.to_string_lossy(), 256, 1),
        created_at: now,
        updated_at: now,
        keep: true,
        // "The VMM" is this test process: alive for the whole test.
        vmm: ProcessRecord::of(std::process::id() as i32),
        helpers: vec![],
        owner: None,
        last_result: None,
        labels: Default::default(),
        exec_port: Some(vmkit_channel::DEFAULT_EXEC_PORT),
    };
    store.create(&lock, &record).unwrap();
    let sock = store.workspace_dir(name).unwrap().join("v.sock");
    let listener = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line).unwrap();
        assert_eq!(line, "CONNECT 10001\n");
        s.write_all(b"OK 10001\n").unwrap();
        let m = read_message(&mut s).unwrap();
        assert!(matches!(m, Some(Message::CopyOut(_))), "{m:?}");
        for chunk in tar.chunks(4096) {
            if write_message(&mut s, &Message::Data(chunk.to_vec())).is_err() {
                return; // the host gave up on us: fine
            }
        }
        let _ = write_message(&mut s, &Message::CopyDone(CopyStats::default()));
    })
}

#[test]
fn a_hostile_archive_from_the_guest_writes_nothing_outside_the_destination() {
    use tar::EntryType as T;
    let state = tempfile::Builder::new()
        .prefix("mah")
        .tempdir_in("/tmp")
        .unwrap();
    let host = tempfile::tempdir().unwrap();
    let marker = format!("microagent-hostile-{}", std::process::id());
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, T::Directory, b"evil", b"", b"");
    raw_entry(&mut b, T::Symlink, b"evil/link", b"/tmp", b"");
    raw_entry(
        &mut b,
        T::Regular,
        format!("evil/link/{marker}").as_bytes(),
        b"",
        b"planted",
    );
    raw_entry(&mut b, T::Regular, b"../x", b"", b"escaped");
    raw_entry(&mut b, T::Regular, b"/abs", b"", b"escaped");
    let guest = hostile_workspace(state.path(), "bad", b.into_inner().unwrap());
    let rt = vmkit::Runtime::new(state.path(), BackendKind::Qemu, None).unwrap();
    let dst = host.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let err = rt.copy_from_guest("bad", "/evil", &dst).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    guest.join().unwrap();
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "written through the symlink"
    );
    assert!(!host.path().join("x").exists());
    assert!(!Path::new("/abs").exists());
    // Nothing at all was left, in dst or beside it.
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1);
}

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use chrono::Utc;
use vmkit_protocol::{BackendKind, Event, Identity, MachineConfig, State};
use vmkit_state::{LockWait, StateError, StateStore, WorkspaceRecord};

fn record(name: &str) -> WorkspaceRecord {
    WorkspaceRecord {
        name: name.into(),
        state: State::Prepared,
        backend: BackendKind::Qemu,
        image: "busybox".into(),
        config: MachineConfig::new("/k", "/r", "/s", 256, 1),
        created_at: Utc::now(),
        updated_at: Utc::now(),
        keep: true,
        vmm: None,
        helpers: vec![],
        owner: None,
        exec_port: None,
        last_result: None,
        labels: Default::default(),
    }
}

#[test]
fn create_load_list_remove_with_private_modes() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path().join("state")).unwrap();
    let lock = store.lock("ws1", LockWait::NoWait).unwrap();
    store.create(&lock, &record("ws1")).unwrap();
    assert!(matches!(
        store.create(&lock, &record("ws1")),
        Err(StateError::AlreadyExists { .. })
    ));
    assert_eq!(store.load(&lock).unwrap().unwrap().name, "ws1");

    let ws_dir = store.workspace_dir("ws1").unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.root()), 0o700);
    assert_eq!(mode(&ws_dir), 0o700);
    assert_eq!(mode(&ws_dir.join("workspace.json")), 0o600);

    assert_eq!(store.list().unwrap().len(), 1);
    store.remove(&lock).unwrap();
    assert!(store.load(&lock).unwrap().is_none());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn names_that_escape_the_state_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    for bad in ["../x", "a/b", "", ".hidden", "x".repeat(64).as_str()] {
        assert!(
            matches!(
                store.lock(bad, LockWait::NoWait),
                Err(StateError::InvalidName(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn second_locker_waits_or_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let held = store.lock("ws", LockWait::NoWait).unwrap();
    let err = store.lock("ws", LockWait::NoWait).unwrap_err();
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(matches!(
        store.lock("ws", LockWait::Timeout(Duration::from_millis(100))),
        Err(StateError::Busy { .. })
    ));
    drop(held);
    store.lock("ws", LockWait::NoWait).unwrap();
}

/// Many writers doing read-modify-write under the lock while a reader polls
/// without it: no update is lost (the lock holds) and the reader never sees
/// half a record (writes are atomic).
#[test]
fn concurrent_writers_never_interleave_or_tear() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    {
        let lock = store.lock("ws", LockWait::Block).unwrap();
        let mut r = record("ws");
        r.config.memory_mib = 0;
        store.create(&lock, &r).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                // A torn record would fail to parse and surface as Corrupt.
                store.peek("ws").unwrap().unwrap();
                reads += 1;
            }
            reads
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            thread::spawn(move || {
                for _ in 0..50 {
                    let lock = store.lock("ws", LockWait::Block).unwrap();
                    let mut r = store.load(&lock).unwrap().unwrap();
                    r.config.memory_mib += 1;
                    // Widen the window a lost update would need.
                    thread::yield_now();
                    store.save(&lock, &r).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(store.peek("ws").unwrap().unwrap().config.memory_mib, 200);
}

#[test]
fn events_append_in_order_and_skip_torn_lines() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let log = store.events("ws").unwrap();
    std::fs::create_dir_all(log.path().parent().unwrap()).unwrap();
    let id = Identity {
        request_id: "r".into(),
        runtime_id: "ws".into(),
        role: "workspace".into(),
        backend: BackendKind::Qemu,
    };
    for s in [State::Prepared, State::Starting, State::Running] {
        log.append(&Event::now(id.clone(), s, "")).unwrap();
    }
    // A crash mid-append leaves a partial line; the log stays readable.
    std::fs::OpenOptions::new()
        .append(true)
        .open(log.path())
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"identity\":"))
        .unwrap();
    let states: Vec<_> = log
        .read_all()
        .unwrap()
        .into_iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(states, [State::Prepared, State::Starting, State::Running]);
}

#[test]
fn corrupt_record_is_reported_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let ws = store.workspace_dir("bad").unwrap();
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("workspace.json"), b"{\"name\":").unwrap();
    let lock = store.lock("bad", LockWait::NoWait).unwrap();
    assert!(matches!(store.load(&lock), Err(StateError::Corrupt { .. })));
    // One bad folder does not hide the others.
    assert!(store.list().unwrap().is_empty());
}

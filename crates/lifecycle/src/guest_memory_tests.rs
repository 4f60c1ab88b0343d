use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn the_ram_file_is_on_tmpfs_named_by_the_workspace_folder() {
    let a = WorkspacePaths::new(Path::new("/s/workspaces/a")).unwrap();
    let again = WorkspacePaths::new(Path::new("/s/workspaces/a")).unwrap();
    let b = WorkspacePaths::new(Path::new("/t/workspaces/a")).unwrap();
    assert_eq!(a.memory, again.memory);
    assert_ne!(a.memory, b.memory);
    assert!(
        a.memory.starts_with(memory_dir(Path::new(SHM))),
        "{:?}",
        a.memory
    );
}

#[test]
fn the_ram_folder_is_private_and_the_owner_recorded_until_the_ram_goes() {
    let dir = tempfile::tempdir().unwrap();
    let paths = WorkspacePaths::new(&dir.path().join("ws")).unwrap();
    ensure_memory_dir(&paths).unwrap();
    let ram_dir = paths.memory.parent().unwrap();
    let mode = std::fs::metadata(ram_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let owner = owner_record(&paths).unwrap();
    assert_eq!(
        std::fs::read(&owner).unwrap(),
        paths.dir.as_os_str().as_encoded_bytes()
    );
    let stem = paths.memory.file_stem().unwrap().to_str().unwrap();
    assert_eq!(read_owner(&owner, stem), Some(paths.dir.clone()));
    // What the VMM would make.
    std::fs::write(&paths.memory, b"ram").unwrap();
    remove_memory_file(&paths);
    assert!(!paths.memory.exists());
    assert!(!owner.exists());
}

/// One RAM file in `shm`, with an owner record naming `folder` if given.
fn ram_file(shm: &Path, folder: &Path, record: bool) -> PathBuf {
    let ram = shm.join(format!("{}.ram", digest_of(folder)));
    std::fs::write(&ram, vec![7u8; 64 * 1024]).unwrap();
    if record {
        std::fs::write(
            ram.with_extension("owner"),
            folder.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
    }
    ram
}

fn make_old(path: &Path) {
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
}

#[test]
fn gc_removes_the_ram_of_a_deleted_state_folder_and_nothing_in_use() {
    let shm = tempfile::tempdir().unwrap();
    let states = tempfile::tempdir().unwrap();
    let live = states.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let gone = |name: &str| states.path().join(name);

    let orphan = ram_file(shm.path(), &gone("deleted"), true);
    let kept = ram_file(shm.path(), &live, true);
    // A VM still running after its state folder was deleted: mapped.
    let mapped = ram_file(shm.path(), &gone("mapped"), true);
    let mapped_file = std::fs::File::open(&mapped).unwrap();
    // SAFETY: a fresh read-only shared mapping of a file we own, never
    // dereferenced, unmapped below with the same length.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            mapped_file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    drop(mapped_file);
    // One being launched: open, not mapped yet.
    let open = ram_file(shm.path(), &gone("opening"), true);
    let open_file = std::fs::File::open(&open).unwrap();
    // Without an owner record: only an old one goes.
    let ownerless_old = ram_file(shm.path(), &gone("old"), false);
    make_old(&ownerless_old);
    let ownerless_young = ram_file(shm.path(), &gone("young"), false);
    // A record whose name is not its folder's digest is no owner record.
    let forged = shm.path().join("0123456789abcdef0123456789abcdef.ram");
    std::fs::write(&forged, b"ram").unwrap();
    std::fs::write(
        forged.with_extension("owner"),
        gone("forged").as_os_str().as_encoded_bytes(),
    )
    .unwrap();
    // Owner records without RAM: of a gone folder (removed), of a live one
    // whose VMM is starting (kept).
    let stray = shm
        .path()
        .join(format!("{}.owner", digest_of(&gone("stray"))));
    std::fs::write(&stray, gone("stray").as_os_str().as_encoded_bytes()).unwrap();
    let launching = states.path().join("launching");
    std::fs::create_dir(&launching).unwrap();
    let starting = shm.path().join(format!("{}.owner", digest_of(&launching)));
    std::fs::write(&starting, launching.as_os_str().as_encoded_bytes()).unwrap();

    let mut removed = sweep(shm.path(), OWNERLESS_MIN_AGE).unwrap();
    removed.sort_by(|a, b| a.path.cmp(&b.path));
    let mut expected = vec![
        OrphanedMemory {
            path: orphan.clone(),
            owner: Some(gone("deleted")),
            bytes: 64 * 1024,
        },
        OrphanedMemory {
            path: ownerless_old.clone(),
            owner: None,
            bytes: 64 * 1024,
        },
    ];
    expected.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(removed, expected);
    assert!(!orphan.exists() && !orphan.with_extension("owner").exists());
    assert!(!ownerless_old.exists());
    assert!(!stray.exists());
    for still in [&kept, &mapped, &open, &ownerless_young, &forged, &starting] {
        assert!(still.exists(), "{} was removed", still.display());
    }
    assert!(kept.with_extension("owner").exists());
    assert!(mapped.with_extension("owner").exists());

    // Once the VM is gone, its RAM goes too.
    // SAFETY: the mapping made above, with its length.
    assert_eq!(unsafe { libc::munmap(map, 4096) }, 0);
    drop(open_file);
    let mut removed: Vec<PathBuf> = sweep(shm.path(), OWNERLESS_MIN_AGE)
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    removed.sort();
    let mut expected = vec![mapped.clone(), open.clone()];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(sweep(shm.path(), OWNERLESS_MIN_AGE).unwrap().is_empty());
}

#[test]
fn maps_lines_name_the_device_and_inode_of_a_mapped_file() {
    let line = "7f0c1a000000-7f0c3a000000 rw-s 00000000 00:1a 4242                       /dev/shm/microagent-0/ab.ram";
    assert_eq!(mapped_file(line), Some((libc::makedev(0, 0x1a), 4242)));
    let deleted = "7f0c1a000000-7f0c3a000000 rw-s 00000000 fd:01 7 /tmp/a b (deleted)";
    assert_eq!(mapped_file(deleted), Some((libc::makedev(0xfd, 1), 7)));
    // Anonymous memory and junk map no file.
    assert_eq!(
        mapped_file("7ffd1000-7ffd2000 rw-p 00000000 00:00 0    [stack]"),
        None
    );
    assert_eq!(mapped_file("garbage"), None);
    assert_eq!(mapped_file("a b c zz:01 7"), None);
    assert_eq!(mapped_file("a b c 00:01 -7"), None);
}

#[test]
fn an_owner_record_is_bounded_and_absolute() {
    let shm = tempfile::tempdir().unwrap();
    let huge = PathBuf::from(format!("/{}", "x".repeat(MAX_OWNER_RECORD as usize)));
    let record = shm.path().join("r.owner");
    std::fs::write(&record, huge.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(read_owner(&record, &digest_of(&huge)), None);
    std::fs::write(&record, b"relative/ws").unwrap();
    assert_eq!(
        read_owner(&record, &digest_of(Path::new("relative/ws"))),
        None
    );
}

#[test]
fn a_removed_file_says_why_it_went_and_what_it_freed() {
    let owned = OrphanedMemory {
        path: "/dev/shm/microagent-0/ab.ram".into(),
        owner: Some("/s/workspaces/w".into()),
        bytes: 3 << 20,
    };
    assert_eq!(
        owned.to_string(),
        "/dev/shm/microagent-0/ab.ram: removed orphaned guest RAM (/s/workspaces/w is gone), 3 MiB freed"
    );
    let ownerless = OrphanedMemory {
        owner: None,
        ..owned
    };
    assert!(ownerless.to_string().contains("(no owner record)"));
}

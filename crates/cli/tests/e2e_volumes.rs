//! Host folders as volumes (virtio-fs through virtiofsd) end to end, and
//! the volumes refused before anything boots.

mod common;

use common::{describe, Env};

#[test]
fn a_volume_shows_host_files_and_takes_the_guests_writes() {
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let proj = host.path().join("proj");
    std::fs::create_dir(&proj).unwrap();
    std::fs::write(proj.join("hello.txt"), "from the host\n").unwrap();
    let volume = format!("{}:/work", proj.display());
    let out = env.run(&[
        "-v",
        &volume,
        "--exec",
        "cat /work/hello.txt && echo from the guest > /work/made.txt",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the host\n");
    assert_eq!(
        std::fs::read_to_string(proj.join("made.txt")).unwrap(),
        "from the guest\n"
    );
}

#[test]
fn a_read_only_volume_is_enforced_by_the_host() {
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let proj = host.path().join("proj");
    std::fs::create_dir(&proj).unwrap();
    std::fs::write(proj.join("keep.txt"), "original\n").unwrap();
    let volume = format!("{}:/work:ro", proj.display());
    // The guest mounts it ro; it then remounts it rw, which the guest
    // kernel allows: only the host's file server stands in the way.
    let script = "echo x > /work/keep.txt; echo first=$?; \
                  mount -o remount,rw /work && echo remounted; \
                  echo y > /work/keep.txt; echo second=$?; touch /work/new; echo third=$?";
    let out = env.run(&["-v", &volume, "--exec", script]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("first=1"), "{}", describe(&out));
    assert!(
        stdout.contains("second=1") && stdout.contains("third=1"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr.contains("Read-only file system"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        std::fs::read_to_string(proj.join("keep.txt")).unwrap(),
        "original\n"
    );
    assert_eq!(
        std::fs::read_dir(&proj).unwrap().count(),
        1,
        "the host folder changed"
    );
}

#[test]
fn bad_volumes_are_refused_before_anything_boots() {
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("file");
    std::fs::write(&file, "").unwrap();
    let dir = host.path().to_str().unwrap();
    let cases: [(Vec<String>, &str); 4] = [
        (vec!["-v".into(), format!("{dir}/missing:/work")], "missing"),
        (
            vec!["-v".into(), format!("{}:/work", file.display())],
            "not a folder",
        ),
        (
            vec![
                "-v".into(),
                format!("{dir}:/work"),
                "-v".into(),
                format!("{dir}:/work/"),
            ],
            "already used",
        ),
        (
            vec![
                "--backend".into(),
                "firecracker".into(),
                "-v".into(),
                format!("{dir}:/work"),
            ],
            "--disk",
        ),
    ];
    for (args, needle) in cases {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--exec", "true"]);
        let out = env.run(&all);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            describe(&out)
        );
        assert!(
            common::processes_mentioning(&env.state_path().to_string_lossy()).is_empty(),
            "{args:?}: something was started"
        );
    }
}

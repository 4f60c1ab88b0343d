//! Kept workspaces end to end: create, start, exec, halt, start again,
//! delete; the event log; the workspace lock; extra disks.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{describe, json_lines, processes_mentioning, Env};

#[test]
fn workspace_lifecycle_keeps_state_across_execs_and_halts() {
    let env = Env::new();
    env.create("ws", &["-e", "GREETING=hello"]);
    env.ok(&["start", "ws"]);

    let out = env.sh("ws", "echo $GREETING > /root/note; echo written");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "written\n");
    let out = env.sh("ws", "cat /root/note; exit 5");
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    env.ok(&["halt", "ws"]);
    let status: serde_json::Value = common::json_line(&env.ok(&["--json", "status", "ws"]));
    assert_eq!(status["state"], "halted");
    assert!(processes_mentioning(&env.state_path().to_string_lossy()).is_empty());

    env.ok(&["start", "ws"]);
    let out = env.sh("ws", "cat /root/note");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}",
        describe(&out)
    );

    // Deleting a running workspace is refused; --force kills it first.
    let out = env.cmd().args(["delete", "ws"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));

    let events = json_lines(&env.ok(&["--json", "events", "ws"]));
    let states: Vec<&str> = events
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["prepared", "starting", "running", "stopping", "halted", "starting", "running"]
    );
    env.ok(&["delete", "--force", "ws"]);
    assert!(processes_mentioning(&env.state_path().to_string_lossy()).is_empty());
    assert!(!env.state_path().join("workspaces/ws").exists());
}

#[test]
fn exec_needs_a_running_workspace_and_timeouts_kill() {
    let env = Env::new();
    env.create("idle", &[]);
    let out = env.sh("idle", "true");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is prepared"),
        "{}",
        describe(&out)
    );
    env.ok(&["start", "idle"]);
    let out = env
        .cmd()
        .args(["exec", "idle", "--timeout", "2", "--", "sleep", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", describe(&out));
    env.ok(&["kill", "idle"]);
    env.ok(&["delete", "idle"]);
}

#[test]
fn concurrent_lifecycle_commands_are_serialised_by_the_lock() {
    let env = Env::new();
    env.create("shared", &[]);
    // start and delete at once: delete waits for start's lock, then finds a
    // running workspace and refuses. Either way the record stays whole.
    let spawn = |args: &[&str]| {
        env.cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Follow the event log, and send delete once start has recorded
    // `starting`: start holds the lock from before that event until done.
    let mut follow = spawn(&["--json", "events", "--follow", "shared"]);
    let start = spawn(&["start", "shared"]);
    let mut events = BufReader::new(follow.stdout.take().unwrap()).lines();
    loop {
        let line = events.next().expect("the event log ended").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["state"] == "starting" {
            break;
        }
    }
    let delete = spawn(&["delete", "shared"]);
    let start = start.wait_with_output().unwrap();
    let delete = delete.wait_with_output().unwrap();
    assert!(start.status.success(), "{}", describe(&start));
    assert!(!delete.status.success(), "{}", describe(&delete));
    assert!(
        String::from_utf8_lossy(&delete.stderr).contains("stop it first"),
        "{}",
        describe(&delete)
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
    let record: serde_json::Value = common::json_line(&env.ok(&["--json", "status", "shared"]));
    assert_eq!(record["state"], "running");

    // Two creates of one name: exactly one wins.
    let a = spawn(&[
        "create",
        "twin",
        "--image",
        &env.image,
        "--kernel",
        env.kernel.to_str().unwrap(),
    ]);
    let b = spawn(&[
        "create",
        "twin",
        "--image",
        &env.image,
        "--kernel",
        env.kernel.to_str().unwrap(),
    ]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        [a.status.success(), b.status.success()]
            .iter()
            .filter(|s| **s)
            .count(),
        1,
        "{}\n{}",
        describe(&a),
        describe(&b)
    );
    env.ok(&["delete", "--force", "shared"]);
    env.ok(&["delete", "twin"]);
}

#[test]
fn extra_disks_mount_in_order_ro_and_rw() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, file: &str| {
        let src = dir.path().join(format!("{name}-src"));
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("hello.txt"), file).unwrap();
        let img = dir.path().join(format!("{name}.ext4"));
        let st = Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("8M")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        img
    };
    let data = make("data", "from data\n");
    let refs = make("refs", "from refs\n");
    let out = env.run(&[
        "--disk",
        &format!("data={}:/data:rw", data.display()),
        "--disk",
        &format!("refs={}:/refs:ro", refs.display()),
        "--exec",
        "cat /data/hello.txt /refs/hello.txt; echo new > /data/new.txt; touch /refs/x 2>/dev/null && echo refs-writable || echo refs-readonly",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from data\nfrom refs\nrefs-readonly\n"
    );
    // The rw disk kept the write.
    let dump = Command::new("debugfs")
        .args(["-R", "cat /new.txt"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dump.stdout), "new\n");
}

#[test]
fn a_guest_flooding_its_console_costs_the_host_a_bounded_log() {
    let env = Env::new();
    let out = env.run(&[
        "--keep",
        "--name",
        "flood",
        "--exec",
        "head -c 3000000 /dev/zero | tr '\\0' x > /dev/console; echo done",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let logs = env.ok(&["logs", "flood"]);
    let kept = logs.stdout.len();
    // Two files of at most 1 MiB each (plus one write past the cap).
    assert!(
        kept > 1 << 20 && kept < (2 << 20) + (64 << 10),
        "kept {kept} bytes"
    );
    env.ok(&["delete", "flood"]);
}

#[test]
fn console_escapes_reach_the_terminal_only_with_logs_raw() {
    let env = Env::new();
    // OSC 52 writes the clipboard of the terminal that prints it.
    let out = env.run(&[
        "--keep",
        "--name",
        "esc",
        "--exec",
        "printf 'before\\033]52;c;cHduZWQ=\\007after\\n' > /dev/console; echo done",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let logs = String::from_utf8_lossy(&env.ok(&["logs", "esc"]).stdout).into_owned();
    assert!(
        logs.contains("before\\x1b]52;c;cHduZWQ=\\x07after"),
        "{logs}"
    );
    assert!(!logs.contains('\x1b') && !logs.contains('\x07'));
    let raw = env.ok(&["logs", "--raw", "esc"]).stdout;
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.contains("before\x1b]52;c;cHduZWQ=\x07after"), "{raw}");
    env.ok(&["delete", "esc"]);
}

#[test]
fn images_are_recorded_as_given_even_long_ones_in_a_state_path_with_a_comma() {
    let env = Env::new();
    // A comma in the state folder's path: QEMU splits its options on commas.
    let state = tempfile::Builder::new()
        .prefix("ma,")
        .tempdir_in("/tmp")
        .unwrap();
    let cmd = || {
        let mut c = env.cmd();
        c.env("MICROAGENT_STATE_DIR", state.path());
        c
    };
    // A reference longer than the 64 characters identity.role allows.
    let images = tempfile::tempdir().unwrap();
    let layout = images
        .path()
        .join("an-image-folder-whose-name-alone-is-longer-than-sixty-four-characters");
    vmkit_testkit::images::busybox_oci_layout(&layout, "latest");
    let long = format!("oci-layout:{}:latest", layout.display());
    let out = cmd()
        .args(["create", "ws", "--image", &long, "--kernel"])
        .arg(&env.kernel)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let out = cmd()
        .args(["run", "--keep", "--name", "kept", "--image", &env.image])
        .arg("--kernel")
        .arg(&env.kernel)
        .args(["--exec", "echo booted"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "booted\n");
    let out = cmd().args(["--json", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let mut recorded: Vec<(String, String)> = json_lines(&out)
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["image"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    recorded.sort();
    assert_eq!(
        recorded,
        [
            ("kept".to_owned(), env.image.clone()),
            ("ws".to_owned(), long)
        ]
    );
    for name in ["kept", "ws"] {
        let out = cmd().args(["delete", name]).output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }
}

/// The owner record in the guest RAM folder that names `workspace`, and its
/// RAM file.
fn guest_ram_of(workspace: &std::path::Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = format!("/dev/shm/microagent-{}", nix::unistd::getuid());
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let path = e.path();
        let named = path.extension()? == "owner"
            && std::fs::read(&path).ok()? == workspace.as_os_str().as_encoded_bytes();
        named.then(|| (path.with_extension("ram"), path))
    })
}

#[test]
fn gc_frees_the_guest_ram_of_a_state_folder_deleted_by_hand_once_its_vm_is_gone() {
    let env = Env::new();
    env.create("ws", &[]);
    env.ok(&["start", "ws"]);
    let workspace = env.state_path().join("workspaces/ws");
    let (ram, owner) = guest_ram_of(&workspace).expect("a RAM file with an owner record");
    assert!(ram.is_file());
    let state = env.state_path().to_string_lossy().into_owned();
    let vm = processes_mentioning(&state);
    assert!(!vm.is_empty(), "the VM should be running");

    std::fs::remove_dir_all(env.state_path()).unwrap();
    // gc from any state folder sweeps this user's RAM files, but not the
    // RAM of a VM still running without its state folder.
    let other = Env::new();
    let gc = |expect_removed: bool| {
        let line = common::json_line(&other.ok(&["--json", "gc"]));
        common::check_schema(&line);
        let removed = line["removedMemory"].as_array().unwrap().iter().any(|m| {
            m["path"] == ram.to_str().unwrap() && m["owner"] == workspace.to_str().unwrap()
        });
        assert_eq!(removed, expect_removed, "{line}");
    };
    gc(false);
    assert!(ram.is_file() && owner.is_file());

    for (pid, _) in &vm {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_mentioning(&state).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(processes_mentioning(&state).is_empty());
    gc(true);
    assert!(!ram.exists() && !owner.exists());
}

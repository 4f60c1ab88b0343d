//! Pause, resume and memory snapshots end to end, on real VMs.

mod common;

use std::time::{Duration, Instant};

use common::{describe, json_lines, processes_mentioning, Env};

/// Starts, in the background of `name`, a shell that counts in memory
/// and writes the count to `/tmp/count` every 100 ms, its pid to
/// `/tmp/counter.pid`.
fn start_counter(env: &Env, name: &str) {
    let out = env.sh(name,
        // Each count is renamed into place, so a reader never sees a
        // half-written file.
        "setsid sh -c 'echo $$ > /tmp/counter.tmp; mv /tmp/counter.tmp /tmp/counter.pid; i=0; while :; do i=$((i+1)); echo $i > /tmp/count.tmp; mv /tmp/count.tmp /tmp/count; sleep 0.1; done' </dev/null >/dev/null 2>&1 &",
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// The counter's value and pid, once it has written both.
fn read_counter(env: &Env, name: &str) -> (u64, u64) {
    let out = env.sh(name,
        "while ! [ -s /tmp/count ] || ! [ -s /tmp/counter.pid ]; do sleep 0.05; done; echo $(cat /tmp/count) $(cat /tmp/counter.pid)",
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    (words.next().unwrap(), words.next().unwrap())
}

/// Polls until the counter passes `above`; returns the value seen.
fn wait_count_above(env: &Env, name: &str, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (count, _) = read_counter(env, name);
        if count > above {
            return count;
        }
        assert!(Instant::now() < deadline, "{name}: count stuck at {count}");
    }
}

/// The VMM's and every helper's pid, as the record has them.
fn recorded_pids(env: &Env, name: &str) -> Vec<i32> {
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["--json", "status", name]).stdout).unwrap();
    let mut pids = vec![status["vmm"]["pid"].as_i64().unwrap() as i32];
    for h in status["helpers"].as_array().unwrap() {
        pids.push(h["pid"].as_i64().unwrap() as i32);
    }
    pids
}

/// Whether `pid` runs (a zombie has exited: it holds nothing but its pid).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i..].starts_with(") Z")))
}

fn vmm_pid(env: &Env, name: &str) -> i32 {
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["--json", "status", name]).stdout).unwrap();
    status["vmm"]["pid"].as_i64().unwrap() as i32
}

/// User plus system CPU time of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields count from after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_paused_workspace_uses_no_cpu_and_continues_on_resume() {
    let env = Env::new();
    env.create("pz", &[]);
    env.ok(&["start", "pz"]);
    start_counter(&env, "pz");
    let (before, pid) = read_counter(&env, "pz");
    let qemu = vmm_pid(&env, "pz");
    // Running, the guest's counter costs QEMU CPU: the measurement can see it.
    let t0 = cpu_ticks(qemu);
    wait_count_above(&env, "pz", before + 5);
    assert!(cpu_ticks(qemu) > t0, "a running guest should cost CPU");

    env.ok(&["pause", "pz"]);
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["--json", "status", "pz"]).stdout).unwrap();
    assert_eq!(status["state"], "paused");
    let out = env.sh("pz", "true");
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("paused") && stderr.contains("microagent resume pz"),
        "{stderr}"
    );
    // Pausing twice is not an error.
    env.ok(&["pause", "pz"]);

    let window_start = cpu_ticks(qemu);
    std::thread::sleep(Duration::from_secs(2));
    let window_ticks = cpu_ticks(qemu) - window_start;
    let hz = clock_ticks_per_second();
    // "~0": under 2% of one core over the 2 s (a busy TCG guest uses 100%).
    assert!(
        window_ticks * 50 <= 2 * hz,
        "paused QEMU used {window_ticks} ticks ({hz}/s) in 2 s"
    );

    env.ok(&["resume", "pz"]);
    let (after, same_pid) = read_counter(&env, "pz");
    assert_eq!(same_pid, pid);
    assert!(after >= before, "{after} < {before}");
    wait_count_above(&env, "pz", after);

    let events = json_lines(&env.ok(&["--json", "events", "pz"]));
    let states: Vec<&str> = events
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["prepared", "starting", "running", "paused", "running"]
    );
    // A paused workspace still halts cleanly (it is resumed for that).
    env.ok(&["pause", "pz"]);
    env.ok(&["halt", "pz"]);
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["--json", "status", "pz"]).stdout).unwrap();
    assert_eq!(status["state"], "halted");
    // Resuming a halted workspace is refused with the reason.
    let out = env.cmd().args(["resume", "pz"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is halted"));
    env.ok(&["delete", "pz"]);
    assert!(processes_mentioning(&env.state_path().to_string_lossy()).is_empty());
}

fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The guest's AF_VSOCK path (Firecracker's and Apple VF's) stays covered
/// on this host: QEMU's vhost-user-vsock transport runs a command and a
/// workspace, whose memory snapshot is refused with the reason and whose
/// disk-only snapshot freezes the guest.
#[test]
fn the_vsock_transport_runs_and_refuses_memory_snapshots() {
    let env = Env::new();
    let vsock = |c: &mut std::process::Command| {
        c.env("MICROAGENT_QEMU_TRANSPORT", "vsock");
    };
    let mut run = env.run_command(&[
        "--exec",
        "echo over vsock; grep -o 'microagent.transport=[a-z]*' /proc/cmdline",
    ]);
    vsock(&mut run);
    let out = run.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "over vsock\nmicroagent.transport=vsock\n"
    );
    env.create("vs", &[]);
    let mut start = env.cmd();
    start.args(["start", "vs"]);
    vsock(&mut start);
    let out = start.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    // QEMU cannot migrate vhost-user-vsock: the memory snapshot fails with
    // the reason, leaves nothing listed, and the workspace runs on.
    let mut snap = env.cmd();
    snap.args(["snapshot", "create", "vs", "--tag", "t"]);
    vsock(&mut snap);
    let out = snap.output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vhost-user-vsock"),
        "{}",
        describe(&out)
    );
    assert!(json_lines(&env.ok(&["--json", "snapshot", "list", "vs"])).is_empty());
    assert!(!env
        .state_path()
        .join("workspaces/vs/snapshots/.staging-t")
        .exists());
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["--json", "status", "vs"]).stdout).unwrap();
    assert_eq!(status["state"], "running");
    assert_eq!(
        String::from_utf8_lossy(&env.sh("vs", "echo alive").stdout),
        "alive\n"
    );
    // A disk-only snapshot freezes the guest over AF_VSOCK as well.
    let mut snap = env.cmd();
    snap.args([
        "--json",
        "snapshot",
        "create",
        "vs",
        "--tag",
        "d",
        "--disk-only",
    ]);
    vsock(&mut snap);
    let out = snap.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(common::json_line(&out)["snapshot"]["frozen"], true);
    assert_eq!(
        String::from_utf8_lossy(&env.sh("vs", "echo thawed > /t && cat /t").stdout),
        "thawed\n"
    );
    env.ok(&["delete", "--force", "vs"]);
    assert!(processes_mentioning(&env.state_path().to_string_lossy()).is_empty());
}

#[test]
fn forks_continue_the_counting_process_and_diverge() {
    let env = Env::new();
    // A private copy of the kernel, so the test can change it at the end.
    let kernel = env.state_path().join("vmlinux");
    std::fs::copy(&env.kernel, &kernel).unwrap();
    let out = env
        .cmd()
        .args(["create", "src", "--image", &env.image])
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    // A memory snapshot of a workspace that is not running: refused, with
    // the remedy.
    let out = env
        .cmd()
        .args(["snapshot", "create", "src", "--tag", "early"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--disk-only works on a stopped one"),
        "{}",
        describe(&out)
    );
    env.ok(&["start", "src"]);
    start_counter(&env, "src");
    let (before, pid) = read_counter(&env, "src");
    let at_snapshot = wait_count_above(&env, "src", before + 3);

    let made = json_lines(&env.ok(&["--json", "snapshot", "create", "src", "--tag", "t1"]));
    for line in &made {
        common::check_schema(line);
    }
    assert_eq!(made[0]["snapshot"]["tag"], "t1");
    assert_eq!(made[0]["snapshot"]["diskOnly"], false);
    // The source runs on after its snapshot.
    wait_count_above(&env, "src", at_snapshot + 3);

    let mut pids = recorded_pids(&env, "src");
    for fork in ["f1", "f2"] {
        env.ok(&["create", fork, "--from-snapshot", "src:t1"]);
        let (count, same_pid) = read_counter(&env, fork);
        assert_eq!(same_pid, pid, "{fork}: the counter is the same process");
        assert!(count >= at_snapshot, "{fork}: {count} < {at_snapshot}");
        wait_count_above(&env, fork, count);
        let out = env.sh(fork, "hostname");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{fork}\n"));
        let own = recorded_pids(&env, fork);
        assert!(
            own.iter().all(|p| !pids.contains(p)),
            "{fork}: own processes"
        );
        pids.extend(own);
    }
    // Each fork writes its own file; neither sees the other's, nor the source.
    for (fork, word) in [("f1", "one"), ("f2", "two")] {
        let out = env.sh(fork, &format!("echo {word} > /root/fork"));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
    for (ws, expected) in [("f1", "one\n"), ("f2", "two\n"), ("src", "")] {
        let out = env.sh(ws, "cat /root/fork 2>/dev/null; true");
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{ws}");
    }
    let listed = json_lines(&env.ok(&["--json", "snapshot", "list"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["snapshot"]["runtimeID"], "src");

    for fork in ["f1", "f2"] {
        env.ok(&["delete", "--force", fork]);
    }
    // The source itself goes back to its snapshot: the same process, from
    // the count it had then, on the disk it had then.
    env.ok(&["stop", "src"]);
    env.ok(&["start", "src", "--from-snapshot", "t1"]);
    pids.extend(recorded_pids(&env, "src"));
    let (count, same_pid) = read_counter(&env, "src");
    assert_eq!(same_pid, pid, "src: the counter is the same process");
    assert!(count >= at_snapshot, "src: {count} < {at_snapshot}");
    wait_count_above(&env, "src", count);
    // Its clock was set at the restore, not left at the snapshot's time
    // (seconds behind by now: the forks ran meanwhile).
    let guest: i64 = String::from_utf8_lossy(&env.sh("src", "date +%s").stdout)
        .trim()
        .parse()
        .unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((guest - host).abs() <= 2, "guest {guest}, host {host}");

    // A changed kernel: the restore is refused with the reason, nothing starts.
    env.ok(&["stop", "src"]);
    let mut k = std::fs::OpenOptions::new()
        .append(true)
        .open(&kernel)
        .unwrap();
    std::io::Write::write_all(&mut k, b"changed").unwrap();
    drop(k);
    let out = env
        .cmd()
        .args(["start", "src", "--from-snapshot", "t1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the kernel changed since the snapshot"),
        "{}",
        describe(&out)
    );
    let out = env
        .cmd()
        .args(["create", "f3", "--from-snapshot", "src:t1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(!env.state_path().join("workspaces/f3").exists());
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["--json", "status", "src"]).stdout).unwrap();
    assert_eq!(status["state"], "stopped");

    let deleted = json_lines(&env.ok(&["--json", "snapshot", "delete", "src", "t1"]));
    common::check_schema(&deleted[0]);
    assert!(json_lines(&env.ok(&["--json", "snapshot", "list", "src"])).is_empty());
    env.ok(&["delete", "src"]);
    let left: Vec<i32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    assert!(processes_mentioning(&env.state_path().to_string_lossy()).is_empty());
}

//! The exec service and run mode over Unix socket pairs, driven by the host
//! client of `vmkit-channel`: the same code that runs over vsock in the VM.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use vmkit_channel::host::{exec_over, Control, ExecHandle, RunOutcome};
use vmkit_channel::{read_message, ChannelError, ExecRequest, Message, RunSpec};
use vmkit_guest_init::image::{Defaults, ImageConfig};
use vmkit_guest_init::service::{run_workload, Service};
use vmkit_protocol::RunResult;

const LONG: Duration = Duration::from_secs(60);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Like PID 1: orphans of our commands come back to us, so the reaper
        // is exercised on them.
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    });
}

fn defaults() -> Defaults {
    Defaults::new(&ImageConfig::default(), &BTreeMap::new(), None, None)
}

fn service() -> Arc<Service> {
    setup();
    Arc::new(Service::new(defaults(), None).with_kill_grace(Duration::from_millis(300)))
}

fn exec_with(
    svc: &Arc<Service>,
    req: &ExecRequest,
    stdin: Option<Vec<u8>>,
) -> (Result<RunResult, ChannelError>, Vec<u8>, Vec<u8>) {
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let stdin = stdin.map(|b| Box::new(Cursor::new(b)) as Box<dyn Read + Send>);
    let r = exec_over(
        host,
        req,
        stdin,
        &mut out,
        &mut err,
        LONG,
        &ExecHandle::new(),
    );
    (r, out, err)
}

fn sh(svc: &Arc<Service>, cmd: &str) -> (RunResult, String, String) {
    let (r, out, err) = exec_with(svc, &ExecRequest::shell(cmd), None);
    (
        r.unwrap(),
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn exit_codes_and_separate_streams() {
    let svc = service();
    let (r, out, err) = sh(&svc, "echo out; echo err >&2; exit 3");
    assert_eq!((r.exit_code, r.signal, r.error), (Some(3), None, None));
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    assert!(r.started_at.unwrap() <= r.completed_at.unwrap());
    let (r, _, _) = sh(&svc, "true");
    assert_eq!(r.exit_code, Some(0));
}

#[test]
fn argv_env_cwd_and_user_are_applied() {
    let svc = service();
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo $FOO $(pwd) $(id -u)".into()],
        env: [("FOO".to_string(), "bar".to_string())].into(),
        cwd: Some("/tmp".into()),
        user: Some("65534:65534".into()),
        ..Default::default()
    };
    let (r, out, _) = exec_with(&svc, &req, None);
    assert_eq!(r.unwrap().exit_code, Some(0));
    assert_eq!(String::from_utf8(out).unwrap(), "bar /tmp 65534\n");
}

#[test]
fn stdin_is_delivered() {
    let svc = service();
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (r, out, _) = exec_with(&svc, &ExecRequest::shell("cat"), Some(input.clone()));
    assert_eq!(r.unwrap().exit_code, Some(0));
    assert_eq!(out, input);
    // Without stdin the command reads /dev/null rather than hanging.
    let (r, out, _) = sh(&svc, "cat; echo done");
    assert_eq!((r.exit_code, out.as_str()), (Some(0), "done\n"));
}

struct Count(u64);
impl Write for Count {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn hundred_mib_of_output_streams_in_bounded_memory() {
    let svc = service();
    let before = peak_rss_kib();
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    let (mut out, mut err) = (Count(0), Count(0));
    let req = ExecRequest::shell("head -c 104857600 /dev/zero; echo tail >&2");
    let r = exec_over(
        host,
        &req,
        None,
        &mut out,
        &mut err,
        LONG,
        &ExecHandle::new(),
    )
    .unwrap();
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(out.0, 100 << 20);
    assert_eq!(err.0, 5);
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(grown_mib < 32, "peak RSS grew by {grown_mib} MiB");
}

#[test]
fn output_cap_drops_the_rest_but_drains() {
    let svc = service();
    let req = ExecRequest {
        max_output_bytes: Some(1000),
        ..ExecRequest::shell("head -c 5000000 /dev/zero")
    };
    let (r, out, _) = exec_with(&svc, &req, None);
    let r = r.unwrap();
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(out.len(), 1000);
    assert!(r.error.unwrap().contains("truncated"));
}

#[test]
fn a_command_that_never_exits_is_killed_at_its_timeout() {
    let svc = service();
    let start = Instant::now();
    let req = ExecRequest {
        timeout_ms: Some(300),
        ..ExecRequest::shell("echo started; sleep 1000")
    };
    let (r, out, _) = exec_with(&svc, &req, None);
    let r = r.unwrap();
    assert_eq!(out, b"started\n");
    assert_eq!(r.signal, Some(libc::SIGTERM));
    assert!(r.error.unwrap().contains("timed out"));
    assert!(start.elapsed() < Duration::from_secs(5));

    // One that ignores SIGTERM gets SIGKILL after the grace period. The
    // deadline leaves the shell ample time to set its trap, and the output
    // shows it did: SIGKILL then proves the escalation, not a race.
    let req = ExecRequest {
        timeout_ms: Some(1000),
        ..ExecRequest::shell("trap '' TERM; echo trapped; while :; do sleep 0.05; done")
    };
    let (r, out, _) = exec_with(&svc, &req, None);
    assert_eq!(out, b"trapped\n");
    assert_eq!(r.unwrap().signal, Some(libc::SIGKILL));
}

fn alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; check its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn gone(pid: i32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_grandchild_left_behind_does_not_hold_the_exec_and_is_reaped() {
    let svc = service();
    let start = Instant::now();
    let (r, out, _) = sh(&svc, "sleep 4 & echo $!");
    assert_eq!(r.exit_code, Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let pid: i32 = out.trim().parse().unwrap();
    assert!(alive(pid), "grandchild should still run");
    // It was orphaned to us; once it exits the reaper must collect it.
    wait_until("grandchild reaped", || gone(pid));
}

#[test]
fn ten_concurrent_execs_keep_their_output_apart() {
    let svc = service();
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let svc = Arc::clone(&svc);
            std::thread::spawn(move || {
                let cmd = format!(
                    "i=0; while [ $i -lt 2000 ]; do echo line-{i}-$i; i=$((i+1)); done; echo err-{i} >&2; exit {i}"
                );
                let (r, out, err) = sh(&svc, &cmd);
                assert_eq!(r.exit_code, Some(i));
                let lines: Vec<&str> = out.lines().collect();
                assert_eq!(lines.len(), 2000);
                for (n, l) in lines.iter().enumerate() {
                    assert_eq!(*l, format!("line-{i}-{n}"));
                }
                assert_eq!(err, format!("err-{i}\n"));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn closing_the_connection_kills_the_command() {
    let svc = service();
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    let mut h = &host;
    vmkit_channel::write_message(
        &mut h,
        &Message::Exec(ExecRequest::shell("echo $$; exec sleep 1000")),
    )
    .unwrap();
    let pid: i32 = match read_message(&mut h).unwrap() {
        Some(Message::Stdout(b)) => String::from_utf8(b).unwrap().trim().parse().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(alive(pid));
    drop(host);
    wait_until("command killed", || !alive(pid));
}

#[test]
fn bad_frames_close_only_their_connection() {
    let svc = service();
    let frame = |json: &[u8]| {
        let mut v = (json.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(json);
        v
    };
    let bad: [Vec<u8>; 5] = [
        u32::MAX.to_be_bytes().to_vec(),
        frame(b"hello"),
        frame(br#"{"type":"nope"}"#),
        frame(br#"{"type":"stdin","len":4}abcd"#),
        frame(br#"{"type":"stdout","len":4294967295}"#),
    ];
    for frame in bad {
        let (mut host, guest) = UnixStream::pair().unwrap();
        svc.spawn_handler(guest);
        host.write_all(&frame).unwrap();
        match read_message(&mut host) {
            Ok(Some(Message::Error { message })) => assert!(!message.is_empty()),
            other => panic!("{frame:?}: {other:?}"),
        }
        assert!(
            read_message(&mut host).unwrap().is_none(),
            "connection must close"
        );
    }
    // Garbage in the middle of an exec kills that command and is reported.
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    let mut h = &host;
    vmkit_channel::write_message(&mut h, &Message::Exec(ExecRequest::shell("sleep 1000"))).unwrap();
    h.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut saw = None;
    while let Some(m) = read_message(&mut h).unwrap() {
        if let Message::Result(r) = m {
            saw = Some(r);
        }
    }
    let r = saw.expect("a result");
    assert_eq!(r.signal, Some(libc::SIGKILL));
    assert!(r.error.unwrap().contains("bad frame"));
    // An invalid request is refused with an error.
    let (r, _, _) = exec_with(&svc, &ExecRequest::default(), None);
    assert!(matches!(r, Err(ChannelError::Invalid(_))), "{r:?}");
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    let mut h = &host;
    vmkit_channel::write_message(&mut h, &Message::Exec(ExecRequest::default())).unwrap();
    assert!(matches!(
        read_message(&mut h),
        Ok(Some(Message::Error { .. }))
    ));
    // And the service still works.
    let (r, out, _) = sh(&svc, "echo alive");
    assert_eq!((r.exit_code, out.as_str()), (Some(0), "alive\n"));
}

#[test]
fn a_missing_program_is_an_error_not_a_crash() {
    let svc = service();
    let req = ExecRequest {
        argv: vec!["/no/such/program".into()],
        ..Default::default()
    };
    let (r, _, _) = exec_with(&svc, &req, None);
    let r = r.unwrap();
    assert_eq!((r.exit_code, r.signal), (None, None));
    assert!(r.error.unwrap().contains("not found"));
}

#[test]
fn tty_mode_runs_on_a_terminal() {
    let svc = service();
    let req = ExecRequest {
        tty: true,
        ..ExecRequest::shell("test -t 0 && test -t 1 && echo on-a-tty; read x; echo got-$x")
    };
    let (r, out, err) = exec_with(&svc, &req, Some(b"hi\n".to_vec()));
    assert_eq!(r.unwrap().exit_code, Some(0));
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("on-a-tty"), "{out:?}");
    assert!(out.contains("got-hi"), "{out:?}");
    assert!(err.is_empty());
}

/// A sink that, the first time the output contains `trigger`, runs `then`.
struct OnOutput<F: FnMut()> {
    seen: Vec<u8>,
    trigger: &'static str,
    then: Option<F>,
}

impl<F: FnMut()> Write for OnOutput<F> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.seen.extend_from_slice(b);
        if String::from_utf8_lossy(&self.seen).contains(self.trigger) {
            if let Some(mut f) = self.then.take() {
                f();
            }
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn tty_size_is_set_at_start_and_follows_resizes() {
    use vmkit_channel::TtySize;
    let svc = service();
    let req = ExecRequest {
        tty: true,
        tty_size: Some(TtySize {
            rows: 33,
            cols: 101,
        }),
        ..ExecRequest::shell("stty size; read x; stty size")
    };
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    let (stdin_r, mut stdin_w) = UnixStream::pair().unwrap();
    let handle = ExecHandle::new();
    let h = handle.clone();
    let mut out = OnOutput {
        seen: Vec::new(),
        trigger: "33 101",
        then: Some(move || {
            h.resize(TtySize { rows: 50, cols: 7 }).unwrap();
            stdin_w.write_all(b"go\n").unwrap();
        }),
    };
    let r = exec_over(
        host,
        &req,
        Some(Box::new(stdin_r)),
        &mut out,
        &mut io::sink(),
        LONG,
        &handle,
    )
    .unwrap();
    assert_eq!(r.exit_code, Some(0));
    let text = String::from_utf8_lossy(&out.seen);
    assert!(text.contains("33 101") && text.contains("50 7"), "{text:?}");
    assert!(handle.is_finished());
    assert!(
        !handle.signal(2).unwrap(),
        "a finished exec takes no signals"
    );
}

#[test]
fn a_signal_through_the_handle_reaches_the_process_group() {
    let svc = service();
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    let handle = ExecHandle::new();
    // Sent before the exec starts: remembered and delivered at start.
    assert!(handle.signal(libc::SIGINT).unwrap());
    let h = handle.clone();
    let mut out = OnOutput {
        seen: Vec::new(),
        trigger: "started",
        then: Some(move || {
            h.signal(libc::SIGINT).unwrap();
        }),
    };
    let req = ExecRequest::shell(
        "trap 'echo caught; exit 9' INT; echo started; while :; do sleep 0.1; done",
    );
    let r = exec_over(host, &req, None, &mut out, &mut io::sink(), LONG, &handle).unwrap();
    // Either the early or the later SIGINT ended it, through the trap or by the signal.
    assert!(
        r.exit_code == Some(9) || r.signal == Some(libc::SIGINT),
        "{r:?}: {:?}",
        String::from_utf8_lossy(&out.seen)
    );
}

#[test]
fn ping_and_shutdown() {
    setup();
    let (tx, rx) = std::sync::mpsc::channel();
    let svc = Arc::new(Service::new(defaults(), Some(tx)));
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    let mut h = &host;
    vmkit_channel::write_message(&mut h, &Message::Ping).unwrap();
    assert_eq!(read_message(&mut h).unwrap(), Some(Message::Pong));
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    vmkit_channel::host::shutdown_over(&host, Duration::from_secs(5)).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

fn run(spec: RunSpec) -> (vmkit_channel::host::RunReport, String, String) {
    setup();
    let (host, guest) = UnixStream::pair().unwrap();
    let sent = spec.setup.clone();
    let t = std::thread::spawn(move || {
        run_workload(
            guest,
            &spec,
            &defaults(),
            Duration::from_millis(300),
            &|| {},
        )
        .unwrap()
    });
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let report = Control::from_stream(host)
        .receive_run(&sent, &mut out, &mut err, LONG)
        .unwrap();
    t.join().unwrap();
    (
        report,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn run_mode_runs_setup_then_exec() {
    let (report, out, err) = run(RunSpec {
        setup: vec!["echo one".into(), "echo two >&2".into()],
        exec: "echo main; exit 5".into(),
        timeout_ms: None,
    });
    assert_eq!(report.setup.len(), 2);
    assert_eq!(report.setup[1].command, "echo two >&2");
    assert!(matches!(
        report.outcome,
        RunOutcome::Completed(RunResult {
            exit_code: Some(5),
            ..
        })
    ));
    assert_eq!(out, "one\nmain\n");
    assert_eq!(err, "two\n");
}

#[test]
fn run_mode_stops_at_the_first_failing_setup_command() {
    let (report, out, _) = run(RunSpec {
        setup: vec!["echo one".into(), "exit 7".into(), "echo never".into()],
        exec: "echo never".into(),
        timeout_ms: None,
    });
    assert_eq!(report.setup.len(), 1);
    match report.outcome {
        RunOutcome::SetupFailed(step) => {
            assert_eq!((step.index, step.command.as_str()), (1, "exit 7"));
            assert_eq!(step.result.exit_code, Some(7));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out, "one\n");
}

#[test]
fn run_mode_timeout_covers_the_whole_run() {
    let start = Instant::now();
    let (report, _, _) = run(RunSpec {
        setup: vec!["sleep 0.2".into()],
        exec: "sleep 1000".into(),
        timeout_ms: Some(500),
    });
    match report.outcome {
        RunOutcome::Completed(r) => {
            assert_eq!(r.signal, Some(libc::SIGTERM));
            assert!(r.error.unwrap().contains("timed out"));
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_stalled_half_frame_is_dropped_and_the_service_survives() {
    setup();
    let svc =
        Arc::new(Service::new(defaults(), None).with_frame_timeout(Duration::from_millis(200)));
    let (mut host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    host.write_all(&[0, 0, 0, 50, b'{']).unwrap();
    match read_message(&mut host) {
        Ok(Some(Message::Error { message })) => assert!(message.contains("bad frame"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Silence before the first frame is treated the same way.
    let (mut host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    assert!(matches!(
        read_message(&mut host),
        Ok(Some(Message::Error { .. }))
    ));
    let (r, out, _) = sh(&svc, "echo alive");
    assert_eq!((r.exit_code, out.as_str()), (Some(0), "alive\n"));
}

/// A stand-in for the VMM's hybrid vsock socket: answers `CONNECT <port>`
/// with `OK <port>` and hands the rest of the stream to the service.
fn fake_vmm(svc: Arc<Service>) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let listener = std::os::unix::net::UnixListener::bind(&uds).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while conn.read_exact(&mut b).is_ok() && b[0] != b'\n' {
                line.push(b[0]);
            }
            let port = String::from_utf8_lossy(&line)
                .trim_start_matches("CONNECT ")
                .to_string();
            conn.write_all(format!("OK {port}\n").as_bytes()).unwrap();
            svc.spawn_handler(conn);
        }
    });
    (dir, uds)
}

#[test]
fn exec_client_through_the_hybrid_vsock_handshake() {
    setup();
    let (tx, rx) = std::sync::mpsc::channel();
    let svc = Arc::new(Service::new(defaults(), Some(tx)));
    let (_dir, uds) = fake_vmm(svc);
    let client = vmkit_channel::host::ExecClient::new(&uds, vmkit_channel::DEFAULT_EXEC_PORT);
    client.ping(Duration::from_secs(5)).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let stdin: Box<dyn Read + Send> = Box::new(Cursor::new(b"abc".to_vec()));
    let r = client
        .exec(
            &ExecRequest::shell("cat; echo e >&2"),
            Some(stdin),
            &mut out,
            &mut err,
            LONG,
            &ExecHandle::new(),
        )
        .unwrap();
    assert_eq!(
        (r.exit_code, out.as_slice(), err.as_slice()),
        (Some(0), &b"abc"[..], &b"e\n"[..])
    );
    client.shutdown(Duration::from_secs(5)).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

#[test]
fn stdin_nobody_reads_does_not_hold_the_exec() {
    let svc = service();
    let start = Instant::now();
    // The background sleep inherits stdin and never reads it; 1 MiB cannot fit in the pipe.
    let (r, out, _) = exec_with(
        &svc,
        &ExecRequest::shell("sleep 5 & echo bye"),
        Some(vec![7; 1 << 20]),
    );
    assert_eq!(r.unwrap().exit_code, Some(0));
    assert_eq!(out, b"bye\n");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn an_absurd_timeout_is_no_timeout() {
    let svc = service();
    let req = ExecRequest {
        timeout_ms: Some(u64::MAX),
        ..ExecRequest::shell("echo ok")
    };
    let (r, out, _) = exec_with(&svc, &req, None);
    assert_eq!(
        (r.unwrap().exit_code, out.as_slice()),
        (Some(0), &b"ok\n"[..])
    );
}

#[test]
fn image_and_boot_spec_defaults_apply_unless_the_request_overrides() {
    setup();
    let image: ImageConfig = serde_json::from_str(
        r#"{"Env":["PATH=/usr/bin:/bin","FROM=image","KEEP=image"],"WorkingDir":"/tmp","User":"agent"}"#,
    )
    .unwrap();
    // Users resolve against this passwd, not the host's.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nagent:x:4242:4243::/home/agent:/bin/sh\n",
    )
    .unwrap();
    let spec_env = [("FROM".to_string(), "spec".to_string())].into();
    let mut defaults = Defaults::new(&image, &spec_env, None, None);
    defaults.root = root.path().to_owned();
    let svc = Arc::new(Service::new(defaults, None));
    let (r, out, _) = sh(&svc, "echo $FROM $KEEP $(pwd) $(id -u):$(id -g) $HOME");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(out, "spec image /tmp 4242:4243 /home/agent\n");
    let req = ExecRequest {
        env: [("FROM".to_string(), "request".to_string())].into(),
        cwd: Some("/".into()),
        user: Some("0".into()),
        ..ExecRequest::shell("echo $FROM $(pwd) $(id -u)")
    };
    let (r, out, _) = exec_with(&svc, &req, None);
    assert_eq!(r.unwrap().exit_code, Some(0));
    assert_eq!(out, b"request / 0\n");
}

#[test]
fn run_mode_flushes_before_the_final_report() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("flushed");
    for spec in [
        RunSpec {
            setup: vec![],
            exec: "true".into(),
            timeout_ms: None,
        },
        RunSpec {
            setup: vec!["false".into()],
            exec: "true".into(),
            timeout_ms: None,
        },
    ] {
        let _ = std::fs::remove_file(&marker);
        let (host, guest) = UnixStream::pair().unwrap();
        let m = marker.clone();
        let sent = spec.setup.clone();
        let t = std::thread::spawn(move || {
            let flush = || std::fs::write(&m, b"").unwrap();
            run_workload(
                guest,
                &spec,
                &defaults(),
                Duration::from_millis(300),
                &flush,
            )
            .unwrap()
        });
        let mut c = Control::from_stream(host);
        c.receive_run(&sent, &mut io::sink(), &mut io::sink(), LONG)
            .unwrap();
        // The report is only sent after the flush.
        assert!(marker.exists());
        t.join().unwrap();
    }
}

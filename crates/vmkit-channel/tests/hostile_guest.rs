//! The host end of the channel against a guest that is the attacker: a
//! stand-in guest on a socket pair sends what a compromised guest init could.

use std::io;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmkit_channel::host::{Control, RunOutcome};
use vmkit_channel::{write_message, ChannelError, Message, SetupStep};
use vmkit_protocol::RunResult;

const LONG: Duration = Duration::from_secs(30);

fn exited(code: i32) -> RunResult {
    RunResult {
        exit_code: Some(code),
        ..RunResult::default()
    }
}

/// Runs the host's receiver against a guest thread sending `messages`.
fn receive(
    setup: &[&str],
    messages: Vec<Message>,
) -> Result<vmkit_channel::host::RunReport, ChannelError> {
    let (host, guest) = UnixStream::pair().unwrap();
    let sender = std::thread::spawn(move || {
        let mut g = &guest;
        for m in &messages {
            // The host hangs up once it has seen enough.
            if write_message(&mut g, m).is_err() {
                return;
            }
        }
        // Hold the connection until the host has decided.
        let _ = vmkit_channel::read_message(&mut g);
    });
    let setup: Vec<String> = setup.iter().map(|s| s.to_string()).collect();
    let report =
        Control::from_stream(host).receive_run(&setup, &mut io::sink(), &mut io::sink(), LONG);
    sender.join().unwrap();
    report
}

#[test]
fn a_setup_result_flood_is_refused_at_the_first_result_the_host_did_not_ask_for() {
    // One setup command sent; the guest answers with 1500 results, each
    // carrying a command text of nearly a whole frame.
    let bloat = "x".repeat((1 << 20) - 200);
    let flood: Vec<Message> = (0..1500)
        .map(|i| {
            Message::SetupResult(SetupStep {
                index: i,
                command: bloat.clone(),
                result: exited(0),
            })
        })
        .chain([Message::Result(exited(0))])
        .collect();
    let started = Instant::now();
    let err = receive(&["true"], flood).unwrap_err();
    assert!(
        matches!(&err, ChannelError::Protocol(m) if m.contains("setupResult for setup command 1") && m.contains("sent 1")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn setup_reports_carry_the_hosts_command_and_must_come_in_order() {
    let step = |index, command: &str| SetupStep {
        index,
        command: command.into(),
        result: exited(0),
    };
    let report = receive(
        &["apt-get update"],
        vec![
            Message::SetupResult(step(0, "something the host never sent")),
            Message::Result(exited(3)),
        ],
    )
    .unwrap();
    assert_eq!(report.setup.len(), 1);
    assert_eq!(report.setup[0].command, "apt-get update");
    // Out of order, or about a command that was never sent.
    let err = receive(&["a", "b"], vec![Message::SetupResult(step(1, "b"))]).unwrap_err();
    assert!(matches!(err, ChannelError::Protocol(_)), "{err}");
    let err = receive(&[], vec![Message::SetupFailed(step(0, "x"))]).unwrap_err();
    assert!(matches!(err, ChannelError::Protocol(_)), "{err}");
    let err = receive(
        &[],
        vec![Message::SetupStarted {
            index: 7,
            command: "x".into(),
        }],
    )
    .unwrap_err();
    assert!(matches!(err, ChannelError::Protocol(_)), "{err}");
}

#[test]
fn forged_results_are_refused() {
    let forged = [
        RunResult {
            exit_code: Some(256),
            signal: Some(9),
            ..RunResult::default()
        },
        exited(256),
        exited(-1),
        RunResult {
            signal: Some(0),
            ..RunResult::default()
        },
        RunResult {
            signal: Some(65),
            ..RunResult::default()
        },
        RunResult::default(),
    ];
    for result in forged {
        let err = receive(&[], vec![Message::Result(result.clone())]).unwrap_err();
        assert!(
            matches!(&err, ChannelError::Protocol(m) if m.contains("guest result")),
            "{result:?} was taken: {err}"
        );
        // Also inside a setup report.
        let err = receive(
            &["true"],
            vec![Message::SetupFailed(SetupStep {
                index: 0,
                command: "true".into(),
                result,
            })],
        )
        .unwrap_err();
        assert!(matches!(err, ChannelError::Protocol(_)), "{err}");
    }
    // What real guests send is still taken.
    for ok in [
        exited(0),
        exited(255),
        RunResult {
            signal: Some(9),
            timed_out: true,
            ..RunResult::default()
        },
        RunResult {
            error: Some("could not start: no such file".into()),
            ..RunResult::default()
        },
    ] {
        let report = receive(&[], vec![Message::Result(ok.clone())]).unwrap();
        assert_eq!(report.outcome, RunOutcome::Completed(ok));
    }
}

#[test]
fn guest_error_texts_are_bounded() {
    let huge = "e".repeat(900_000);
    let report = receive(
        &[],
        vec![Message::Result(RunResult {
            exit_code: Some(1),
            error: Some(huge.clone()),
            ..RunResult::default()
        })],
    )
    .unwrap();
    let RunOutcome::Completed(r) = report.outcome else {
        panic!("not completed")
    };
    assert!(r.error.unwrap().len() <= RunResult::MAX_ERROR_BYTES);
    let err = receive(&[], vec![Message::Error { message: huge }]).unwrap_err();
    assert!(
        matches!(&err, ChannelError::Guest(m) if m.len() <= RunResult::MAX_ERROR_BYTES),
        "{}",
        err.to_string().len()
    );
}

#[test]
fn a_guest_that_stops_reading_its_pongs_is_a_broken_channel_not_a_timeout() {
    let (host, guest) = UnixStream::pair().unwrap();
    let pinger = std::thread::spawn(move || {
        let mut g = &guest;
        // Ping without ever reading: the host's answers fill the socket.
        while write_message(&mut g, &Message::Ping).is_ok() {}
    });
    let err = Control::from_stream(host)
        .receive_run(&[], &mut io::sink(), &mut io::sink(), LONG)
        .unwrap_err();
    assert!(
        matches!(&err, ChannelError::Protocol(m) if m.contains("ping")),
        "{err:?}"
    );
    pinger.join().unwrap();
}

#[test]
fn only_the_vmm_may_connect_to_a_guest_listener() {
    use vmkit_channel::host::HostListener;
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let listener = HostListener::bind(&uds, 10_000).unwrap();
    // Another local process gets to the socket first.
    let path = listener.path().to_owned();
    let intruder = std::thread::spawn(move || UnixStream::connect(path).unwrap());
    let vmm_pid = i32::MAX; // no process of ours connects as "the VMM" yet
    let err = listener.accept_from(LONG, &[vmm_pid]).unwrap_err();
    assert!(
        matches!(err, ChannelError::WrongPeer { pid } if pid == std::process::id() as i32),
        "{err}"
    );
    // The intruder was hung up on, unread.
    let mut s = intruder.join().unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(io::Read::read(&mut s, &mut buf).unwrap(), 0);
    // The real forwarder (here: a child process) is taken.
    let mut child = std::process::Command::new("socat")
        .args(["-u", "OPEN:/dev/null"])
        .arg(format!("UNIX-CONNECT:{}", listener.path().display()))
        .spawn()
        .unwrap();
    let stream = listener.accept_from(LONG, &[child.id() as i32]).unwrap();
    drop(stream);
    child.wait().unwrap();
}

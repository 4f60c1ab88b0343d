//! The `microagent-net` binary's contract with the lifecycle: `ready` on
//! stdout once the socket accepts, exit when the VMM hangs up or on
//! SIGTERM, exit 125 naming the problem for a bad config.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

fn helper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_microagent-net"))
}

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let socket = dir.join("frontend.socket");
    let path = dir.join("net.json");
    let json = format!(
        r#"{{"frontend":{{"kind":"stream","path":{:?}}},"auditPath":{:?}{extra}}}"#,
        socket.to_str().unwrap(),
        dir.join("egress.jsonl").to_str().unwrap()
    );
    std::fs::write(&path, json).unwrap();
    path
}

#[test]
fn says_ready_then_serves_until_the_vmm_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut child = helper()
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let vmm = UnixStream::connect(dir.path().join("frontend.socket")).unwrap();
    drop(vmm);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_before_the_vmm_connects_ends_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut child = helper()
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_bad_config_exits_125_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), r#","policy":{"allow":["pkg.test:99999"]}"#);
    let out = helper().arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pkg.test:99999"), "{stderr}");
    assert!(out.stdout.is_empty(), "no ready line for a bad config");
    assert!(!dir.path().join("frontend.socket").exists());
}

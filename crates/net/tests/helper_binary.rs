//! The `microagent-net` binary's contract with the lifecycle: `ready` on
//! stdout once the socket accepts, QEMU's stream framing on it, exit when
//! the VMM hangs up or on SIGTERM, exit 125 naming the problem for a bad
//! config.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

use common::{start_helper, terminate};

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    write_config_kind(dir, "stream", extra)
}

fn write_config_kind(dir: &std::path::Path, kind: &str, extra: &str) -> std::path::PathBuf {
    let socket = dir.join("frontend.socket");
    let path = dir.join("net.json");
    let json = format!(
        r#"{{"frontend":{{"kind":"{kind}","path":{:?}}},"auditPath":{:?}{extra}}}"#,
        socket.to_str().unwrap(),
        dir.join("egress.jsonl").to_str().unwrap()
    );
    std::fs::write(&path, json).unwrap();
    path
}

/// An ARP request for the gateway from the guest's MAC.
fn arp_request() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 15]);
    frame.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 2, 2]);
    frame.resize(60, 0);
    frame
}

/// The same, framed as QEMU's stream netdev sends it.
fn framed_arp_request() -> Vec<u8> {
    let frame = arp_request();
    let mut framed = (frame.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&frame);
    framed
}

fn assert_arp_reply(reply: &[u8]) {
    assert_eq!(&reply[12..14], &[0x08, 0x06], "an ARP frame");
    assert_eq!(&reply[20..22], &[0, 2], "a reply");
    assert_eq!(&reply[28..32], &[10, 0, 2, 2], "from the gateway");
}

#[test]
fn says_ready_answers_framed_arp_and_exits_when_the_vmm_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_helper(&write_config(dir.path(), ""));
    let mut vmm = UnixStream::connect(dir.path().join("frontend.socket")).unwrap();
    vmm.write_all(&framed_arp_request()).unwrap();
    let mut len = [0u8; 4];
    vmm.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    vmm.read_exact(&mut reply).unwrap();
    assert_arp_reply(&reply);
    drop(vmm);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn the_datagram_frontend_answers_its_first_sender() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_helper(&write_config_kind(dir.path(), "datagram", ""));
    let vmm = std::os::unix::net::UnixDatagram::bind(dir.path().join("vmm.socket")).unwrap();
    vmm.connect(dir.path().join("frontend.socket")).unwrap();
    vmm.send(&arp_request()).unwrap();
    let mut reply = [0u8; 1600];
    let n = vmm.recv(&mut reply).unwrap();
    assert_arp_reply(&reply[..n]);
    terminate(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn sigterm_before_the_vmm_connects_ends_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_helper(&write_config(dir.path(), ""));
    terminate(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_bad_config_exits_125_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), r#","policy":{"allow":["pkg.test:99999"]}"#);
    let out = Command::new(env!("CARGO_BIN_EXE_microagent-net"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pkg.test:99999"), "{stderr}");
    assert!(out.stdout.is_empty(), "no ready line for a bad config");
    assert!(!dir.path().join("frontend.socket").exists());
}

//! What the helper-binary tests share: starting `microagent-net` the way
//! the lifecycle does, synchronised on its `ready` line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts the helper with `config` and waits for `ready\n`.
pub fn start_helper(config: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_microagent-net"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n", "the helper did not say ready");
    child
}

/// Sends SIGTERM to `child`.
pub fn terminate(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

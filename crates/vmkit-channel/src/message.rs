//! The messages of the channel. On the wire each is one JSON object tagged by
//! `"type"` (camelCase); the byte-carrying ones (`stdin`, `stdout`, `stderr`)
//! are followed by raw bytes, see [`crate::frame`].
//!
//! Conversations:
//! - **exec** (host connects to the guest's exec port): host sends `exec`,
//!   then `stdin` chunks and `stdinEof` if the request asked for stdin, and may
//!   send `signal`; guest streams `stdout`/`stderr` and ends with `result`,
//!   then closes. One exec per connection; open several for concurrent execs.
//!   Closing the connection before `result` kills the command.
//! - **shutdown** (host connects to the exec port): host sends `shutdown`,
//!   guest answers `ack`, syncs and powers off.
//! - **run** (guest connects to the host's control port at boot): guest streams
//!   `setupStarted`, output, `setupResult` per setup command, then either
//!   `setupFailed` (and nothing runs after it) or output and `result` for the
//!   exec command; host answers `ack`, then the guest powers off.
//! - **workspace** (same control connection): guest sends `ready` once its exec
//!   service listens.
//! - **forward** (host connects to the guest's forward port): host sends
//!   `forward` with a published guest port; guest answers `ack` once it is
//!   connected to `127.0.0.1:<port>` (or `error`), then both sides copy raw
//!   bytes until either closes.
//! - **freeze** (host connects to the exec port): host sends `freeze`;
//!   guest freezes its writable filesystems (FIFREEZE) and answers `frozen`;
//!   host sends `thaw` once it has copied the disk, guest thaws (FITHAW) and
//!   answers `ack`. The freeze lasts at most the request's `timeoutMs` and
//!   never outlives the connection: at its end or its deadline the guest
//!   thaws by itself (after the deadline it answers `error`).
//! - Either side may send `error` before closing a connection it refuses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vmkit_protocol::RunResult;

/// Largest payload a sender puts in one `stdout`/`stderr`/`stdin` frame.
/// Receivers accept up to [`crate::MAX_CHUNK_LEN`].
pub const CHUNK_SIZE: usize = 64 * 1024;

/// One message of the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// host -> guest: run a command.
    Exec(ExecRequest),
    /// host -> guest: bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// host -> guest: the command's stdin is closed.
    StdinEof,
    /// host -> guest: send this signal to the command's process group.
    Signal {
        /// Signal number (Linux numbering, e.g. 15 for SIGTERM).
        signal: i32,
    },
    /// host -> guest: the host terminal's new size (tty execs; the guest
    /// sets it on the pty, which signals SIGWINCH to the foreground job).
    Resize(TtySize),
    /// host -> guest: unpack the tar stream that follows (`data` frames,
    /// then `dataEnd`) at a guest path; the guest answers `copyDone`.
    CopyIn(CopyInRequest),
    /// host -> guest: send a guest path as a tar stream (`data` frames,
    /// then `copyDone`).
    CopyOut(CopyOutRequest),
    /// Either way: a piece of a copy's tar stream.
    Data(Vec<u8>),
    /// host -> guest: the copy-in tar stream is complete.
    DataEnd,
    /// guest -> host: a copy finished.
    CopyDone(CopyStats),
    /// host -> guest: sync and power off.
    Shutdown,
    /// Either way: liveness probe; answered by `pong`.
    Ping,
    /// Answer to `ping`.
    Pong,
    /// Acknowledges `shutdown` (guest) or a final `result`/`setupFailed` (host).
    Ack,
    /// guest -> host: the workspace booted and the exec service listens.
    Ready(Ready),
    /// guest -> host: bytes the command wrote to stdout.
    Stdout(Vec<u8>),
    /// guest -> host: bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// guest -> host (run mode): setup command `index` starts; output until the
    /// matching `setupResult` belongs to it.
    SetupStarted {
        /// Position in the boot spec's `setup` list, from 0.
        index: u32,
        /// The shell command.
        command: String,
    },
    /// guest -> host (run mode): a setup command succeeded.
    SetupResult(SetupStep),
    /// guest -> host (run mode): a setup command failed; the run stops here.
    SetupFailed(SetupStep),
    /// guest -> host: the final result of an exec (or of the run's exec command).
    Result(RunResult),
    /// host -> guest (forward port): connect this connection to the
    /// guest's `127.0.0.1:<port>`; after the guest's `ack` the connection
    /// carries raw TCP bytes both ways.
    Forward {
        /// The guest TCP port, one of the boot spec's `publish.guestPorts`.
        port: u16,
    },
    /// host -> guest (exec port): freeze the guest's writable filesystems
    /// for a consistent copy of its disk, until `thaw`, the connection's
    /// end or the request's deadline, whichever comes first.
    Freeze(FreezeRequest),
    /// guest -> host: the filesystems are frozen (answer to `freeze`).
    Frozen {
        /// Where the frozen filesystems are mounted, `/` first.
        mountpoints: Vec<String>,
    },
    /// host -> guest: thaw what `freeze` froze; the guest answers `ack`
    /// (or `error` if the freeze had expired: the copy is not consistent).
    Thaw,
    /// Either way: the sender refuses or cannot go on; it closes the connection next.
    Error {
        /// What went wrong, for a human.
        message: String,
    },
}

impl Message {
    /// The wire name of this message's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Exec(_) => "exec",
            Message::Stdin(_) => "stdin",
            Message::StdinEof => "stdinEof",
            Message::Signal { .. } => "signal",
            Message::Resize(_) => "resize",
            Message::CopyIn(_) => "copyIn",
            Message::CopyOut(_) => "copyOut",
            Message::Data(_) => "data",
            Message::DataEnd => "dataEnd",
            Message::CopyDone(_) => "copyDone",
            Message::Shutdown => "shutdown",
            Message::Ping => "ping",
            Message::Pong => "pong",
            Message::Ack => "ack",
            Message::Ready(_) => "ready",
            Message::Stdout(_) => "stdout",
            Message::Stderr(_) => "stderr",
            Message::SetupStarted { .. } => "setupStarted",
            Message::SetupResult(_) => "setupResult",
            Message::SetupFailed(_) => "setupFailed",
            Message::Result(_) => "result",
            Message::Forward { .. } => "forward",
            Message::Freeze(_) => "freeze",
            Message::Frozen { .. } => "frozen",
            Message::Thaw => "thaw",
            Message::Error { .. } => "error",
        }
    }
}

/// A command for the exec service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in the effective `PATH`.
    pub argv: Vec<String>,
    /// Extra environment, on top of the image's and the boot spec's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; defaults to the boot spec's, then the image's, then `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User (`name`, `uid` or `uid:gid`); defaults to the boot spec's, then the image's, then root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `true`: `stdin` chunks and a `stdinEof` follow the request. `false`:
    /// the command's stdin is `/dev/null`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Deadline in milliseconds; at expiry the process group gets SIGTERM,
    /// then SIGKILL after a grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run on a pseudo-terminal: stdout and stderr merge into `stdout` chunks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// The pty's size at start (tty only; default 24x80); `resize` changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<TtySize>,
    /// Forward at most this many output bytes (stdout and stderr together);
    /// the rest is read and dropped, and the result's `error` says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

impl ExecRequest {
    /// A request running `command` with `/bin/sh -c`.
    pub fn shell(command: impl Into<String>) -> Self {
        ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), command.into()],
            ..ExecRequest::default()
        }
    }

    /// Checks what the type cannot: a program is named, no NUL bytes (they
    /// cannot reach `execve`), environment keys are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("exec.argv must name a program".into());
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err("exec.argv must not contain NUL".into());
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(format!(
                    "exec.env key {k:?} must be non-empty without '=' or NUL, and its value without NUL"
                ));
            }
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return Err(format!("exec.cwd must be an absolute path, got {cwd:?}"));
            }
        }
        if let Some(user) = &self.user {
            if user.is_empty() || user.contains('\0') {
                return Err("exec.user must be a non-empty name or id".into());
            }
        }
        if self.timeout_ms == Some(0) {
            return Err("exec.timeoutMs must be at least 1".into());
        }
        Ok(())
    }
}

/// How long a freeze holds when `freeze` names no `timeoutMs`.
pub const DEFAULT_FREEZE_MS: u64 = 10_000;
/// The longest freeze a guest grants: a frozen root filesystem stops every
/// writer in the guest, so a host that goes silent must not hold it long.
pub const MAX_FREEZE_MS: u64 = 120_000;
/// At most this many filesystems in a `frozen` answer.
pub const MAX_FROZEN_MOUNTS: usize = 64;

/// Freeze the guest's writable filesystems (`snapshot create --disk-only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FreezeRequest {
    /// The guest thaws by itself this many milliseconds after freezing
    /// even if no `thaw` came (default [`DEFAULT_FREEZE_MS`], at most
    /// [`MAX_FREEZE_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl FreezeRequest {
    /// How long the freeze may hold, or why the request is refused.
    pub fn hold(&self) -> Result<std::time::Duration, String> {
        match self.timeout_ms {
            None => Ok(std::time::Duration::from_millis(DEFAULT_FREEZE_MS)),
            Some(ms @ 1..=MAX_FREEZE_MS) => Ok(std::time::Duration::from_millis(ms)),
            Some(ms) => Err(format!(
                "freeze.timeoutMs must be 1 to {MAX_FREEZE_MS}, got {ms}"
            )),
        }
    }
}

/// Checks a guest's `frozen` answer: a bounded list of absolute paths that
/// includes the root filesystem (without it the copy is not consistent).
pub fn check_frozen(mountpoints: &[String]) -> Result<(), String> {
    if mountpoints.len() > MAX_FROZEN_MOUNTS {
        return Err(format!(
            "the guest named {} frozen filesystems, more than {MAX_FROZEN_MOUNTS}",
            mountpoints.len()
        ));
    }
    if let Some(bad) = mountpoints
        .iter()
        .find(|m| !m.starts_with('/') || m.len() > 4096 || m.contains('\0'))
    {
        let mut shown = bad.clone();
        vmkit_protocol::truncate_text(&mut shown, 200);
        return Err(format!("the guest named a bad mountpoint {shown:?}"));
    }
    if !mountpoints.iter().any(|m| m == "/") {
        return Err("the guest could not freeze its root filesystem".into());
    }
    Ok(())
}

/// Unpack a tar stream in the guest (`microagent cp HOST NAME:PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyInRequest {
    /// Absolute guest path. With `name`: an existing folder receives
    /// `name` inside it; otherwise `path` itself becomes the copy (its
    /// parent must exist). Without `name` (a raw tar stream), an existing
    /// folder the entries are unpacked into.
    pub path: String,
    /// The single top-level name every entry of the stream starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Ownership: absent, everything belongs to root; `keepOwner`, the
    /// archive's uid/gid; or the given `owner`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_owner: bool,
    /// `uid:gid` for every file created (wins over `keepOwner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<CopyOwner>,
}

/// A numeric owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyOwner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Send a guest path as a tar stream (`microagent cp NAME:PATH HOST`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyOutRequest {
    /// Absolute guest path: a file, a symlink (sent as a link) or a folder
    /// (sent with everything under it). Entries start with its last
    /// component.
    pub path: String,
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyStats {
    /// Archive entries written or created.
    pub entries: u64,
    /// File content bytes.
    pub bytes: u64,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TtySize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The workspace's "booted" notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// [`crate::PROTOCOL_VERSION`] of the guest init.
    pub protocol_version: u32,
    /// The vsock port the exec service listens on.
    pub exec_port: u32,
    /// Milliseconds since the guest kernel started (from `/proc/uptime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
}

/// The outcome of one setup command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetupStep {
    /// Position in the boot spec's `setup` list, from 0.
    pub index: u32,
    /// The shell command.
    pub command: String,
    /// How it ended.
    pub result: RunResult,
}

/// The JSON part of a frame. Byte-carrying messages only name their length
/// here; the bytes follow the JSON. Kept private so that [`Message`] is the
/// only shape callers see.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum Header {
    Exec(ExecRequest),
    Stdin { len: u32 },
    StdinEof,
    Signal { signal: i32 },
    Resize(TtySize),
    CopyIn(CopyInRequest),
    CopyOut(CopyOutRequest),
    Data { len: u32 },
    DataEnd,
    CopyDone(CopyStats),
    Shutdown,
    Ping,
    Pong,
    Ack,
    Ready(Ready),
    Stdout { len: u32 },
    Stderr { len: u32 },
    SetupStarted { index: u32, command: String },
    SetupResult(SetupStep),
    SetupFailed(SetupStep),
    Result(RunResult),
    Forward { port: u16 },
    Freeze(FreezeRequest),
    Frozen { mountpoints: Vec<String> },
    Thaw,
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn freeze_deadlines_are_bounded() {
        let hold = |ms| FreezeRequest { timeout_ms: ms }.hold();
        assert_eq!(
            hold(None).unwrap(),
            Duration::from_millis(DEFAULT_FREEZE_MS)
        );
        assert_eq!(hold(Some(1)).unwrap(), Duration::from_millis(1));
        assert_eq!(
            hold(Some(MAX_FREEZE_MS)).unwrap(),
            Duration::from_millis(MAX_FREEZE_MS)
        );
        for bad in [0, MAX_FREEZE_MS + 1, u64::MAX] {
            assert!(hold(Some(bad)).unwrap_err().contains("timeoutMs"), "{bad}");
        }
    }

    #[test]
    fn a_frozen_answer_must_be_bounded_and_name_the_root() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_frozen(&list(&["/", "/data"])).unwrap();
        let cases = [
            (list(&[]), "root filesystem"),
            (list(&["/data"]), "root filesystem"),
            (list(&["/", "relative"]), "bad mountpoint"),
            (list(&["/", "/a\0b"]), "bad mountpoint"),
            (vec!["/".repeat(5000)], "bad mountpoint"),
            (vec!["/".to_string(); MAX_FROZEN_MOUNTS + 1], "more than"),
        ];
        for (mounts, why) in cases {
            let err = check_frozen(&mounts).unwrap_err();
            assert!(err.contains(why), "{err}");
            assert!(err.len() < 400, "{err}");
        }
    }
}

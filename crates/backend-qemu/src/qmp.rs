//! A small blocking client for QEMU's machine protocol (QMP).
//!
//! QMP is line-delimited JSON on a Unix socket: QEMU greets with
//! `{"QMP": {...}}`, the client enters command mode with
//! `qmp_capabilities`, then each `{"execute": ...}` gets one
//! `{"return": ...}` or `{"error": {"class", "desc"}}`, with asynchronous
//! `{"event": ...}` lines interleaved. microagent needs a handful of
//! commands (`stop`, `cont`, `query-status`, `migrate`...), so this is a
//! client for exactly that: one connection per use, a deadline on every
//! read, and a bound on every line (QEMU is our child, but what it sends
//! is still parsed as untrusted input).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest line accepted from QEMU (a `query-migrate` answer is a few KiB).
pub const MAX_LINE: usize = 256 * 1024;
/// Default deadline for one command, send to answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("connecting to QMP at {}: {source}", socket.display())]
    Connect {
        /// The QMP socket.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing failed, or QEMU closed the connection.
    #[error("talking QMP: {0}")]
    Io(#[source] io::Error),
    /// No answer before the deadline.
    #[error("QEMU did not answer {command} within {}s", .timeout.as_secs_f64())]
    Timeout {
        /// The command waited for.
        command: String,
        /// The deadline.
        timeout: Duration,
    },
    /// QEMU sent something that is not QMP as we know it.
    #[error("malformed QMP message: {0}")]
    Malformed(String),
    /// QEMU refused the command.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Refused {
        /// The command.
        command: String,
        /// QMP's error class, e.g. `GenericError`.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// One QMP session in command mode.
#[derive(Debug)]
pub struct QmpClient {
    reader: BufReader<UnixStream>,
    timeout: Duration,
    /// Events seen while waiting for answers, oldest first (bounded).
    events: Vec<Value>,
}

/// Most events kept while waiting for answers.
const MAX_EVENTS: usize = 64;

impl QmpClient {
    /// Connects to `socket`, reads the greeting and enters command mode.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(socket).map_err(|source| QmpError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
        let mut client = QmpClient {
            reader: BufReader::new(stream),
            timeout,
            events: Vec::new(),
        };
        let deadline = Instant::now() + timeout;
        let greeting = client.read_message(deadline, "the greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Malformed(format!(
                "expected a QMP greeting, got {}",
                excerpt(&greeting)
            )));
        }
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// Runs `command` with `arguments`; the `return` value on success.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut message = json!({ "execute": command });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        let deadline = Instant::now() + self.timeout;
        let stream = self.reader.get_mut();
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(QmpError::Io)?;
        stream.write_all(line.as_bytes()).map_err(QmpError::Io)?;
        loop {
            let answer = self.read_message(deadline, command)?;
            if answer.get("event").is_some() {
                if self.events.len() < MAX_EVENTS {
                    self.events.push(answer);
                }
                continue;
            }
            if let Some(ret) = answer.get("return") {
                return Ok(ret.clone());
            }
            if let Some(error) = answer.get("error") {
                let field = |k: &str| {
                    error
                        .get(k)
                        .and_then(Value::as_str)
                        .map(printable)
                        .unwrap_or_default()
                };
                return Err(QmpError::Refused {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Malformed(format!(
                "answer to {command} is neither return nor error: {}",
                excerpt(&answer)
            )));
        }
    }

    /// The run state QEMU reports (`running`, `paused`, `inmigrate`,
    /// `postmigrate`...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let ret = self.execute("query-status", None)?;
        ret.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Malformed(format!("query-status: {}", excerpt(&ret))))
    }

    /// Events QEMU sent while this client waited for answers.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Reads one JSON object line, within `deadline`.
    fn read_message(&mut self, deadline: Instant, waiting_for: &str) -> Result<Value, QmpError> {
        let timeout = || QmpError::Timeout {
            command: waiting_for.to_owned(),
            timeout: self.timeout,
        };
        let mut line = Vec::new();
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(timeout)?;
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(QmpError::Io)?;
            let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
            match (&mut self.reader).take(room).read_until(b'\n', &mut line) {
                Ok(0) => {
                    return Err(QmpError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "QEMU closed the QMP connection",
                    )))
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timeout())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(QmpError::Io(e)),
            }
            if line.len() > MAX_LINE {
                return Err(QmpError::Malformed(format!(
                    "a line longer than {MAX_LINE} bytes"
                )));
            }
            if line.ends_with(b"\n") {
                break;
            }
        }
        let value: Value = serde_json::from_slice(&line).map_err(|e| {
            QmpError::Malformed(format!(
                "{e}: {}",
                printable(&String::from_utf8_lossy(&line[..line.len().min(200)]))
            ))
        })?;
        if !value.is_object() {
            return Err(QmpError::Malformed(format!(
                "not an object: {}",
                excerpt(&value)
            )));
        }
        Ok(value)
    }
}

fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    printable(&text.chars().take(200).collect::<String>())
}

fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;

    /// A server that greets, then answers each line from `script` in order
    /// (after the capabilities handshake), returning what it was sent.
    fn serve(
        script: Vec<&'static str>,
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut got = String::new();
            writer
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            for reply in std::iter::once("{\"return\": {}}").chain(script) {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                got.push_str(&line);
                writer.write_all(reply.as_bytes()).unwrap();
                writer.write_all(b"\r\n").unwrap();
            }
            got
        });
        (dir, path, handle)
    }

    #[test]
    fn commands_get_their_answers_past_events() {
        let (_dir, path, server) = serve(vec![
            "{\"event\": \"STOP\", \"timestamp\": {}}\r\n{\"return\": {}}",
            "{\"return\": {\"status\": \"paused\", \"running\": false}}",
        ]);
        let mut qmp = QmpClient::connect(&path, Duration::from_secs(5)).unwrap();
        qmp.execute("stop", None).unwrap();
        assert_eq!(qmp.status().unwrap(), "paused");
        assert_eq!(qmp.events().len(), 1);
        drop(qmp);
        let sent = server.join().unwrap();
        let lines: Vec<&str> = sent.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"stop"}"#,
                r#"{"execute":"query-status"}"#
            ]
        );
    }

    #[test]
    fn a_refusal_names_the_class_and_description() {
        let (_dir, path, _server) = serve(vec![
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\\u0007 way\"}}",
        ]);
        let mut qmp = QmpClient::connect(&path, Duration::from_secs(5)).unwrap();
        let err = qmp.execute("cont", None).unwrap_err();
        assert_eq!(err.to_string(), "QEMU refused cont: no? way (GenericError)");
    }

    #[test]
    fn garbage_oversize_and_silence_are_errors() {
        let (_dir, path, _server) = serve(vec!["[1, 2]", "not json"]);
        let mut qmp = QmpClient::connect(&path, Duration::from_secs(5)).unwrap();
        assert!(matches!(
            qmp.execute("a", None),
            Err(QmpError::Malformed(_))
        ));
        assert!(matches!(
            qmp.execute("b", None),
            Err(QmpError::Malformed(_))
        ));
        // The script is done: the server closes.
        assert!(matches!(qmp.execute("c", None), Err(QmpError::Io(_))));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.sock");
        let listener = UnixListener::bind(&p).unwrap();
        let t = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // An endless line, then silence.
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..5 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
            thread::sleep(Duration::from_millis(200));
        });
        let err = QmpClient::connect(&p, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, QmpError::Malformed(_)), "{err}");
        t.join().unwrap();

        let listener = UnixListener::bind(dir.path().join("silent.sock")).unwrap();
        let err = QmpClient::connect(&dir.path().join("silent.sock"), Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        drop(listener);
    }
}

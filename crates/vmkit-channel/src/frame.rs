//! Framing: how a [`Message`] travels on a byte stream.
//!
//! ```text
//! frame   = len:u32 (big-endian)  header:[u8; len]  payload
//! header  = one JSON object, {"type": ..., ...}; at most MAX_HEADER_LEN bytes
//! payload = nothing, except for "stdin"/"stdout"/"stderr" headers, which carry
//!           {"len": N}: then exactly N raw bytes follow (N <= MAX_CHUNK_LEN)
//! ```
//!
//! Output is binary and large, so it is not put inside JSON: a 64 KiB chunk
//! costs a ~30 byte header and no encoding. Both limits are checked before any
//! allocation, so a hostile peer cannot make the reader allocate more than
//! about 1 MiB per frame. After any error the stream's framing is lost: the
//! caller must close the connection.

use std::io::{self, Read, Write};

use crate::message::{Header, Message};

/// Largest JSON header accepted (1 MiB): room for an exec request with a big
/// environment, small enough that a hostile length cannot exhaust memory.
pub const MAX_HEADER_LEN: u32 = 1 << 20;
/// Largest byte payload accepted in one frame (1 MiB). Senders use
/// [`crate::CHUNK_SIZE`] (64 KiB).
pub const MAX_CHUNK_LEN: u32 = 1 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed (includes read timeouts: `WouldBlock`/`TimedOut`).
    #[error("channel i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the stream in the middle of a frame.
    #[error("channel closed in the middle of a frame")]
    Truncated,
    /// A length field exceeds its bound.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// `"frame header"` or `"payload"`.
        what: &'static str,
        /// The length the peer announced.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The header is not a JSON message we know.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl FrameError {
    /// True when the error is a read timeout (the socket's `SO_RCVTIMEO` fired).
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Writes one message as a single `write_all`, so that writers sharing a
/// stream behind a mutex never interleave frames.
pub fn write_message<W: Write + ?Sized>(w: &mut W, msg: &Message) -> Result<(), FrameError> {
    let buf = encode(msg)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Encodes one message into a complete frame.
pub fn encode(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let payload: &[u8] = match msg {
        Message::Stdin(b) | Message::Stdout(b) | Message::Stderr(b) | Message::Data(b) => b,
        _ => &[],
    };
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_CHUNK_LEN)
        .ok_or(FrameError::Oversized {
            what: "payload",
            len: payload.len() as u64,
            max: u64::from(MAX_CHUNK_LEN),
        })?;
    let header = match msg {
        Message::Exec(r) => Header::Exec(r.clone()),
        Message::Stdin(_) => Header::Stdin { len },
        Message::StdinEof => Header::StdinEof,
        Message::Signal { signal } => Header::Signal { signal: *signal },
        Message::Resize(t) => Header::Resize(*t),
        Message::CopyIn(r) => Header::CopyIn(r.clone()),
        Message::CopyOut(r) => Header::CopyOut(r.clone()),
        Message::Data(_) => Header::Data { len },
        Message::DataEnd => Header::DataEnd,
        Message::CopyDone(s) => Header::CopyDone(*s),
        Message::Shutdown => Header::Shutdown,
        Message::Ping => Header::Ping,
        Message::Pong => Header::Pong,
        Message::Ack => Header::Ack,
        Message::Ready(r) => Header::Ready(r.clone()),
        Message::Stdout(_) => Header::Stdout { len },
        Message::Stderr(_) => Header::Stderr { len },
        Message::SetupStarted { index, command } => Header::SetupStarted {
            index: *index,
            command: command.clone(),
        },
        Message::SetupResult(s) => Header::SetupResult(s.clone()),
        Message::SetupFailed(s) => Header::SetupFailed(s.clone()),
        Message::Result(r) => Header::Result(r.clone()),
        Message::Forward { port } => Header::Forward { port: *port },
        Message::Freeze(r) => Header::Freeze(*r),
        Message::Frozen { mountpoints } => Header::Frozen {
            mountpoints: mountpoints.clone(),
        },
        Message::Thaw => Header::Thaw,
        Message::Error { message } => Header::Error {
            message: message.clone(),
        },
    };
    let json = serde_json::to_vec(&header).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let hlen = u32::try_from(json.len())
        .ok()
        .filter(|&l| l <= MAX_HEADER_LEN)
        .ok_or(FrameError::Oversized {
            what: "frame header",
            len: json.len() as u64,
            max: u64::from(MAX_HEADER_LEN),
        })?;
    let mut buf = Vec::with_capacity(4 + json.len() + payload.len());
    buf.extend_from_slice(&hlen.to_be_bytes());
    buf.extend_from_slice(&json);
    buf.extend_from_slice(payload);
    Ok(buf)
}

/// Reads one message. `Ok(None)` means the peer closed the stream cleanly
/// between frames; a close inside a frame is [`FrameError::Truncated`].
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Option<Message>, FrameError> {
    let mut len_buf = [0u8; 4];
    if !read_exact_or_eof(r, &mut len_buf)? {
        return Ok(None);
    }
    let hlen = u32::from_be_bytes(len_buf);
    if hlen > MAX_HEADER_LEN {
        return Err(FrameError::Oversized {
            what: "frame header",
            len: u64::from(hlen),
            max: u64::from(MAX_HEADER_LEN),
        });
    }
    let mut json = vec![0u8; hlen as usize];
    read_exact(r, &mut json)?;
    let header: Header =
        serde_json::from_slice(&json).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let mut payload = |len: u32| -> Result<Vec<u8>, FrameError> {
        if len > MAX_CHUNK_LEN {
            return Err(FrameError::Oversized {
                what: "payload",
                len: u64::from(len),
                max: u64::from(MAX_CHUNK_LEN),
            });
        }
        let mut buf = vec![0u8; len as usize];
        read_exact(r, &mut buf)?;
        Ok(buf)
    };
    Ok(Some(match header {
        Header::Exec(r) => Message::Exec(r),
        Header::Stdin { len } => Message::Stdin(payload(len)?),
        Header::StdinEof => Message::StdinEof,
        Header::Signal { signal } => Message::Signal { signal },
        Header::Resize(t) => Message::Resize(t),
        Header::CopyIn(r) => Message::CopyIn(r),
        Header::CopyOut(r) => Message::CopyOut(r),
        Header::Data { len } => Message::Data(payload(len)?),
        Header::DataEnd => Message::DataEnd,
        Header::CopyDone(s) => Message::CopyDone(s),
        Header::Shutdown => Message::Shutdown,
        Header::Ping => Message::Ping,
        Header::Pong => Message::Pong,
        Header::Ack => Message::Ack,
        Header::Ready(r) => Message::Ready(r),
        Header::Stdout { len } => Message::Stdout(payload(len)?),
        Header::Stderr { len } => Message::Stderr(payload(len)?),
        Header::SetupStarted { index, command } => Message::SetupStarted { index, command },
        Header::SetupResult(s) => Message::SetupResult(s),
        Header::SetupFailed(s) => Message::SetupFailed(s),
        Header::Result(r) => Message::Result(r),
        Header::Forward { port } => Message::Forward { port },
        Header::Freeze(r) => Message::Freeze(r),
        Header::Frozen { mountpoints } => Message::Frozen { mountpoints },
        Header::Thaw => Message::Thaw,
        Header::Error { message } => Message::Error { message },
    }))
}

fn read_exact<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    if read_exact_or_eof(r, buf)? || buf.is_empty() {
        Ok(())
    } else {
        Err(FrameError::Truncated)
    }
}

/// Fills `buf`; `Ok(false)` if the stream ended before the first byte.
fn read_exact_or_eof<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ExecRequest, Ready, SetupStep};
    use vmkit_protocol::RunResult;

    fn round_trip(msg: Message) {
        let buf = encode(&msg).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_message(&mut r).unwrap(), Some(msg));
        assert!(r.is_empty(), "frame not fully consumed");
        assert!(read_message(&mut r).unwrap().is_none());
    }

    #[test]
    fn every_message_round_trips() {
        let mut req = ExecRequest::shell("echo hi");
        req.env.insert("A".into(), "b".into());
        req.stdin = true;
        req.timeout_ms = Some(5);
        let result = RunResult {
            exit_code: Some(3),
            error: Some("x".into()),
            ..RunResult::default()
        };
        for msg in [
            Message::Exec(req),
            Message::Stdin(vec![0, 255, 10]),
            Message::StdinEof,
            Message::Signal { signal: 15 },
            Message::Resize(crate::message::TtySize {
                rows: 40,
                cols: 120,
            }),
            Message::Shutdown,
            Message::Ping,
            Message::Pong,
            Message::Ack,
            Message::Ready(Ready {
                protocol_version: 1,
                exec_port: 5,
                uptime_ms: Some(7),
            }),
            Message::Stdout((0..=255).collect()),
            Message::Stderr(Vec::new()),
            Message::SetupStarted {
                index: 1,
                command: "true".into(),
            },
            Message::SetupResult(SetupStep {
                index: 0,
                command: "true".into(),
                result: result.clone(),
            }),
            Message::SetupFailed(SetupStep {
                index: 2,
                command: "false".into(),
                result: result.clone(),
            }),
            Message::Result(result),
            Message::Forward { port: 8080 },
            Message::Freeze(crate::message::FreezeRequest {
                timeout_ms: Some(5000),
            }),
            Message::Freeze(crate::message::FreezeRequest::default()),
            Message::Frozen {
                mountpoints: vec!["/".into(), "/data".into()],
            },
            Message::Thaw,
            Message::Error {
                message: "no".into(),
            },
        ] {
            round_trip(msg);
        }
    }

    #[test]
    fn wire_format_is_length_json_payload() {
        let buf = encode(&Message::Stdout(b"hi".to_vec())).unwrap();
        let json = br#"{"type":"stdout","len":2}"#;
        assert_eq!(&buf[..4], &(json.len() as u32).to_be_bytes());
        assert_eq!(&buf[4..4 + json.len()], json);
        assert_eq!(&buf[4 + json.len()..], b"hi");
    }

    fn frame(json: &[u8]) -> Vec<u8> {
        let mut v = (json.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(json);
        v
    }

    #[test]
    fn oversized_header_is_refused_without_allocating() {
        let buf = u32::MAX.to_be_bytes();
        let err = read_message(&mut &buf[..]).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Oversized {
                    what: "frame header",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn oversized_payload_is_refused() {
        let buf = frame(br#"{"type":"stdout","len":4294967295}"#);
        let err = read_message(&mut &buf[..]).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Oversized {
                    what: "payload",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        for json in [
            &b"not json"[..],
            br#"{"type":"launchMissiles"}"#,
            br#"{"len":3}"#,
            br#"{"type":"exec","argv":["x"],"surprise":1}"#,
            br#"{"type":"stdout","len":-1}"#,
            br#"{"type":"freeze","timeoutMs":-5}"#,
            br#"{"type":"freeze","timeoutMs":"10"}"#,
            br#"{"type":"freeze","paths":["/"]}"#,
            br#"{"type":"frozen"}"#,
            br#"{"type":"frozen","mountpoints":"/"}"#,
            b"",
        ] {
            let buf = frame(json);
            let err = read_message(&mut &buf[..]).unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "{json:?}: {err}");
        }
    }

    #[test]
    fn truncation_is_an_error_but_a_clean_eof_is_not() {
        let buf = encode(&Message::Stdout(vec![1; 100])).unwrap();
        for cut in 1..buf.len() {
            let err = read_message(&mut &buf[..cut]).unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "cut {cut}: {err}");
        }
        assert!(read_message(&mut &[][..]).unwrap().is_none());
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        // A cheap fuzzer: xorshift bytes, and valid frames with bytes flipped.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = [
            encode(&Message::Exec(ExecRequest::shell("echo hi"))).unwrap(),
            encode(&Message::Frozen {
                mountpoints: vec!["/".into(), "/data".into()],
            })
            .unwrap(),
            encode(&Message::Freeze(crate::message::FreezeRequest {
                timeout_ms: Some(100),
            }))
            .unwrap(),
        ];
        for i in 0..20_000 {
            let buf: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 64) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if b.len() >= 4 && next() % 2 == 0 {
                    // Plausible small lengths reach the JSON parser.
                    let n = (b.len() - 4) as u32;
                    b[..4].copy_from_slice(&n.to_be_bytes());
                }
                b
            } else {
                let mut b = valid[i % 3].clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
                b
            };
            let mut r = &buf[..];
            while let Ok(Some(_)) = read_message(&mut r) {}
        }
    }

    #[test]
    fn writer_refuses_oversized_payload() {
        let err = encode(&Message::Stdout(vec![0; MAX_CHUNK_LEN as usize + 1])).unwrap_err();
        assert!(matches!(err, FrameError::Oversized { .. }));
    }
}

//! A small blocking HTTP/1.1 client for Firecracker's API socket.
//!
//! Firecracker serves its API on a Unix socket with its own minimal HTTP
//! server. All microagent needs is a handful of `PUT`s with JSON bodies
//! before boot, so this is a client for exactly that: one connection per
//! request (nothing to get out of step when a request fails half-way),
//! `Content-Length` bodies, a deadline on every request, and hard limits
//! on what is read back. The response head is parsed by `httparse`.
//!
//! Firecracker is our own child process, but its answers are still
//! treated as untrusted input: an oversized, slow or malformed response is
//! an error, never a panic or an unbounded read.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most a response head (status line and headers) may take.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most a response body may take. Firecracker's bodies are small JSON
/// documents (a fault message, the instance info).
pub const MAX_BODY: usize = 64 * 1024;
/// Most of a fault message quoted in an error.
const MAX_FAULT_CHARS: usize = 1000;
/// Headers `httparse` may see in one response; Firecracker sends three or four.
const MAX_HEADERS: usize = 32;
/// The default deadline for one request, connect to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be connected.
    #[error("connecting to {}: {source}", socket.display())]
    Connect {
        /// The API socket.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("talking to the API: {0}")]
    Io(#[source] io::Error),
    /// The deadline passed before the whole response arrived.
    #[error("no complete response within {}s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The response is not HTTP/1.x as we read it.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The response exceeds [`MAX_HEAD`] or [`MAX_BODY`].
    #[error("response {0} exceeds {1} bytes")]
    TooLarge(&'static str, usize),
    /// Firecracker refused the request.
    #[error("{status}: {message}")]
    Fault {
        /// The HTTP status.
        status: u16,
        /// Firecracker's `fault_message` (or, lacking one, what the body said).
        message: String,
    },
}

/// A response as read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body (at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
}

/// A client for one Firecracker API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the API socket at `socket`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ApiClient {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-request deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PUT path` with a JSON body. Any status but 2xx is an
    /// [`ApiError::Fault`] carrying Firecracker's `fault_message`.
    pub fn put(&self, path: &str, body: &serde_json::Value) -> Result<(), ApiError> {
        self.put_within(path, body, self.timeout)
    }

    /// [`Self::put`] with a deadline of its own (starting a VM takes longer
    /// than configuring one).
    pub fn put_within(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        self.send_json("PUT", path, body, timeout)
    }

    /// `method path` with a JSON body (`PUT` for configuration, `PATCH`
    /// for changes to a running VM such as `/vm`), within `timeout`.
    pub fn send_json(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ApiError::Malformed(format!("encoding the request body: {e}")))?;
        let response = self.send(method, path, Some(&body), timeout)?;
        fault_of(&response).map_or(Ok(()), Err)
    }

    /// `GET path`; the body of a 2xx answer.
    pub fn get(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        let response = self.send("GET", path, None, self.timeout)?;
        match fault_of(&response) {
            None => Ok(response.body),
            Some(e) => Err(e),
        }
    }

    /// Sends one request on a fresh connection and reads the response.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, ApiError> {
        // The request line is built from our own constants and ids, but a
        // space or line break in it would smuggle a second request.
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
            return Err(ApiError::Malformed(format!(
                "refusing to send request path {path:?}"
            )));
        }
        let deadline = Instant::now() + timeout;
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| ApiError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        stream
            .set_write_timeout(Some(remaining(deadline, timeout)?))
            .map_err(ApiError::Io)?;
        stream
            .write_all(&bytes)
            .map_err(|e| io_or_timeout(e, timeout))?;
        read_response(&mut stream, deadline, timeout)
    }
}

/// The time left before `deadline`, or a timeout error.
fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, ApiError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ApiError::Timeout(timeout))
    } else {
        Ok(left)
    }
}

fn io_or_timeout(e: io::Error, timeout: Duration) -> ApiError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ApiError::Timeout(timeout),
        _ => ApiError::Io(e),
    }
}

/// Reads into `buf` once, with the read timeout set to what is left of
/// the deadline (a server that trickles bytes cannot stretch it).
fn read_some(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<usize, ApiError> {
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline, timeout)?))
            .map_err(ApiError::Io)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_or_timeout(e, timeout)),
        }
    }
}

fn read_response(
    stream: &mut UnixStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // The head: read until httparse sees the blank line.
    let (head_len, status, content_length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = parsed
                    .code
                    .ok_or_else(|| ApiError::Malformed("no status code".into()))?;
                let length = content_length(parsed.headers)?;
                break (n, status, length);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(ApiError::Malformed(format!("response head: {e}"))),
        }
        if buf.len() >= MAX_HEAD {
            return Err(ApiError::TooLarge("head", MAX_HEAD));
        }
        let want = chunk.len().min(MAX_HEAD - buf.len());
        let n = read_some(stream, &mut chunk[..want], deadline, timeout)?;
        if n == 0 {
            return Err(ApiError::Malformed(if buf.is_empty() {
                "the API closed the connection without answering".into()
            } else {
                "the connection closed inside the response head".into()
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if (100..200).contains(&status) {
        // We never send `Expect`, so an interim answer is not Firecracker's.
        return Err(ApiError::Malformed(format!(
            "unexpected interim status {status}"
        )));
    }
    let mut body = buf.split_off(head_len);
    // RFC 9112 section 6.3: these never have a body, whatever the headers say.
    if status == 204 || status == 304 {
        return Ok(Response {
            status,
            body: Vec::new(),
        });
    }
    match content_length {
        Some(len) => {
            if len > MAX_BODY {
                return Err(ApiError::TooLarge("body", MAX_BODY));
            }
            if body.len() > len {
                // Bytes past the body: a second response we never asked for.
                return Err(ApiError::Malformed(
                    "more bytes than Content-Length announced".into(),
                ));
            }
            while body.len() < len {
                let want = chunk.len().min(len - body.len());
                let n = read_some(stream, &mut chunk[..want], deadline, timeout)?;
                if n == 0 {
                    return Err(ApiError::Malformed(format!(
                        "the connection closed after {} of {len} body bytes",
                        body.len()
                    )));
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            // No length: the body runs to the end of the connection.
            loop {
                if body.len() > MAX_BODY {
                    return Err(ApiError::TooLarge("body", MAX_BODY));
                }
                let n = read_some(stream, &mut chunk, deadline, timeout)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
    }
    Ok(Response { status, body })
}

/// The `Content-Length`, if any. Chunked bodies are refused: Firecracker
/// never sends them, and supporting them would only widen what a broken
/// peer can make us do.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<usize>, ApiError> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::Malformed(
                "Transfer-Encoding is not supported".into(),
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| ApiError::Malformed("bad Content-Length".into()))?;
            if length.is_some_and(|l| l != value) {
                return Err(ApiError::Malformed("conflicting Content-Length".into()));
            }
            length = Some(value);
        }
    }
    Ok(length)
}

/// `None` for a 2xx response; otherwise the fault, with Firecracker's
/// `fault_message` (its `Error` definition) or, failing that, a printable
/// excerpt of the body.
fn fault_of(response: &Response) -> Option<ApiError> {
    if (200..300).contains(&response.status) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Fault {
        fault_message: Option<String>,
    }
    let message = match serde_json::from_slice::<Fault>(&response.body) {
        Ok(Fault {
            fault_message: Some(m),
        }) => m,
        _ if response.body.is_empty() => "(no fault message)".to_string(),
        _ => String::from_utf8_lossy(&response.body).into_owned(),
    };
    Some(ApiError::Fault {
        status: response.status,
        message: printable(&message),
    })
}

/// `text` made safe to print on one line: control characters become
/// spaces, and it is cut at [`MAX_FAULT_CHARS`].
fn printable(text: &str) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .take(MAX_FAULT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().chars().count() > MAX_FAULT_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A server that reads one request, then writes `reply` and closes.
    fn serve_once(reply: Vec<u8>) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read until the head and the announced body are in.
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                got.extend_from_slice(&chunk[..n]);
                if n == 0 || request_complete(&got) {
                    break;
                }
            }
            let _ = s.write_all(&reply);
            got
        });
        (dir, sock, handle)
    }

    fn request_complete(got: &[u8]) -> bool {
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        got.len() >= end + 4 + len
    }

    #[test]
    fn put_sends_json_with_length_and_accepts_204() {
        let (_d, sock, server) = serve_once(
            b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        );
        ApiClient::new(&sock)
            .put("/machine-config", &serde_json::json!({"vcpu_count": 2}))
            .unwrap();
        let request = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(
            request.starts_with("PUT /machine-config HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Content-Type: application/json\r\n"));
        assert!(request.contains("Content-Length: 16\r\n"));
        assert!(request.ends_with("\r\n\r\n{\"vcpu_count\":2}"));
    }

    #[test]
    fn a_400_carries_the_fault_message() {
        let body = br#"{"fault_message":"Invalid kernel path: No such file"}"#;
        let mut reply = format!(
            "HTTP/1.1 400 \r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        reply.extend_from_slice(body);
        let (_d, sock, _server) = serve_once(reply);
        let err = ApiClient::new(&sock)
            .put("/boot-source", &serde_json::json!({}))
            .unwrap_err();
        match err {
            ApiError::Fault { status, message } => {
                assert_eq!(status, 400);
                assert_eq!(message, "Invalid kernel path: No such file");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fault_without_json_quotes_a_printable_excerpt() {
        let mut reply = b"HTTP/1.1 500 Oops\r\nContent-Length: 2005\r\n\r\n".to_vec();
        reply.extend_from_slice(b"bad\n\x1b[31m");
        reply.extend(std::iter::repeat_n(b'x', 1996));
        let (_d, sock, _server) = serve_once(reply);
        let err = ApiClient::new(&sock)
            .put("/actions", &serde_json::json!({}))
            .unwrap_err();
        let ApiError::Fault { status, message } = err else {
            panic!("{err:?}")
        };
        assert_eq!(status, 500);
        assert!(message.starts_with("bad  [31m"), "{message}");
        assert_eq!(message.chars().count(), MAX_FAULT_CHARS + 1);
        assert!(!message.chars().any(char::is_control));
    }

    #[test]
    fn an_endless_head_is_cut_off() {
        let mut reply = b"HTTP/1.1 200 OK\r\nX-Filler: ".to_vec();
        reply.extend(std::iter::repeat_n(b'y', 2 * MAX_HEAD));
        let (_d, sock, _server) = serve_once(reply);
        let err = ApiClient::new(&sock).get("/").unwrap_err();
        assert!(matches!(err, ApiError::TooLarge("head", _)), "{err:?}");
    }

    #[test]
    fn an_oversized_body_is_refused_before_reading_it() {
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let (_d, sock, _server) = serve_once(reply.into_bytes());
        let err = ApiClient::new(&sock).get("/").unwrap_err();
        assert!(matches!(err, ApiError::TooLarge("body", _)), "{err:?}");
    }

    #[test]
    fn a_body_without_length_is_bounded() {
        let mut reply = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        reply.extend(std::iter::repeat_n(b'y', MAX_BODY + 10_000));
        let (_d, sock, _server) = serve_once(reply);
        let err = ApiClient::new(&sock).get("/").unwrap_err();
        assert!(matches!(err, ApiError::TooLarge("body", _)), "{err:?}");
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        for reply in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 20",
            b"",
        ] {
            let (_d, sock, _server) = serve_once(reply.to_vec());
            let err = ApiClient::new(&sock).get("/").unwrap_err();
            assert!(matches!(err, ApiError::Malformed(_)), "{reply:?}: {err:?}");
        }
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let started = Instant::now();
        let err = ApiClient::new(&sock)
            .with_timeout(Duration::from_millis(200))
            .put(
                "/actions",
                &serde_json::json!({"action_type": "InstanceStart"}),
            )
            .unwrap_err();
        assert!(matches!(err, ApiError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_missing_socket_is_a_connect_error() {
        let err = ApiClient::new("/nonexistent/fc.sock").get("/").unwrap_err();
        assert!(matches!(err, ApiError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/fc.sock"));
    }

    #[test]
    fn request_paths_cannot_smuggle_lines() {
        let err = ApiClient::new("/nonexistent/fc.sock")
            .get("/x HTTP/1.1\r\nHost: y\r\n\r\nGET /")
            .unwrap_err();
        assert!(matches!(err, ApiError::Malformed(_)), "{err:?}");
    }
}

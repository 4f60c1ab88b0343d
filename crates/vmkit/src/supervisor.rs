//! The external-supervisor form of the protocol: one JSON request on stdin,
//! one JSON response on stdout, exit 0 iff `"ok": true`, diagnostics on
//! stderr. This is what `microagent supervisor` runs, and the shape the
//! Swift supervisor for Apple VF implements on the other side.

use std::io::{Read, Write};

use vmkit_protocol::{BackendKind, ProtocolError, Request, Response, MAX_REQUEST_BYTES};

/// Reads one request from `input`, answers it on `output`, and returns the
/// process exit code (0 iff ok). Garbage, truncated or oversized input gets
/// `{"ok":false,...}` and a non-zero code; nothing here panics on input.
pub fn serve(mut input: impl Read, mut output: impl Write, mut diagnostics: impl Write) -> i32 {
    let response = match read_bounded(&mut input) {
        Ok(bytes) => match Request::from_json(&bytes) {
            Ok(request) => crate::dispatch::dispatch_with_kind(&request),
            Err(e) => Response::failure(guess_backend(&bytes), e),
        },
        Err(e) => Response::failure(BackendKind::Qemu, e),
    };
    if let Some(err) = &response.error {
        let _ = writeln!(diagnostics, "microagent supervisor: {}", err.message);
    }
    let line = serde_json::to_string(&response).expect("responses always serialize");
    if writeln!(output, "{line}")
        .and_then(|_| output.flush())
        .is_err()
    {
        return 1;
    }
    if response.ok {
        0
    } else {
        1
    }
}

/// Reads all of `input` but refuses more than [`MAX_REQUEST_BYTES`], without
/// ever holding more than one byte past the limit.
fn read_bounded(input: &mut impl Read) -> Result<Vec<u8>, ProtocolError> {
    let mut bytes = Vec::new();
    input
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ProtocolError::invalid(format!("reading the request: {e}")))?;
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(ProtocolError::invalid(format!(
            "request exceeds the {MAX_REQUEST_BYTES}-byte limit"
        )));
    }
    Ok(bytes)
}

/// Echoes the requested backend in a failure when the request names one.
fn guess_backend(bytes: &[u8]) -> BackendKind {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["identity"]["backend"].as_str().map(str::to_owned))
        .and_then(|b| b.parse().ok())
        .unwrap_or(BackendKind::Qemu)
}

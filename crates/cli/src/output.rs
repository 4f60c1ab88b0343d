//! How results reach the user: plain streams, or JSON lines with `--json`.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde_json::json;
use vmkit::protocol::{Event, RunResult};
use vmkit::Observer;

use crate::exit::Source;

/// The version of the `--json` line schema (docs/json-output.md). Bumped
/// when a line changes incompatibly; new fields and new line types do not.
pub const JSON_OUTPUT_VERSION: u32 = 1;

/// Prints events as JSON lines (with `--json`) as they happen.
pub fn event_observer(json: bool) -> Option<Observer> {
    json.then(|| {
        let lock = Arc::new(Mutex::new(()));
        Arc::new(move |e: &Event| {
            let _guard = lock.lock();
            let mut line = serde_json::to_value(e).expect("events serialize");
            line["type"] = "event".into();
            println!("{line}");
        }) as Observer
    })
}

/// A sink that turns guest output into `{"type":"stdout","data":...}` lines
/// (docs/json-output.md). Chunks are carried faithfully: valid UTF-8 goes out
/// as text, with an incomplete character at a chunk's end held back until the
/// next chunk completes it; anything else goes out as
/// `{"data":"<base64>","encoding":"base64"}`. Call [`JsonStream::finish`]
/// before printing the result line, so held-back bytes come first.
pub struct JsonStream {
    kind: &'static str,
    /// The start of a UTF-8 sequence the last chunk ended in (at most 3 bytes).
    carry: Vec<u8>,
}

impl JsonStream {
    pub fn stdout() -> Self {
        JsonStream {
            kind: "stdout",
            carry: Vec::new(),
        }
    }
    pub fn stderr() -> Self {
        JsonStream {
            kind: "stderr",
            carry: Vec::new(),
        }
    }

    /// Emits whatever is held back (an incomplete character), as base64.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.carry.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.carry);
        emit(&chunk_line(self.kind, &rest, false))
    }

    /// The lines for one chunk, updating the carry.
    fn lines_for(&mut self, buf: &[u8]) -> Vec<serde_json::Value> {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(buf);
        match std::str::from_utf8(&bytes) {
            Ok(_) => vec![chunk_line(self.kind, &bytes, true)],
            Err(e) if e.error_len().is_none() => {
                // Valid up to an incomplete last character: keep its start.
                let valid = e.valid_up_to();
                self.carry = bytes[valid..].to_vec();
                if valid == 0 {
                    vec![]
                } else {
                    vec![chunk_line(self.kind, &bytes[..valid], true)]
                }
            }
            Err(_) => vec![chunk_line(self.kind, &bytes, false)],
        }
    }
}

/// `{"type":kind,"data":...}`: text when `text` (the bytes are UTF-8), else base64.
fn chunk_line(kind: &str, bytes: &[u8], text: bool) -> serde_json::Value {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(s) if text => json!({"type": kind, "data": s}),
        _ => json!({
            "type": kind,
            "data": base64::engine::general_purpose::STANDARD.encode(bytes),
            "encoding": "base64",
        }),
    }
}

fn emit(line: &serde_json::Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
}

impl Write for JsonStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for line in self.lines_for(buf) {
            emit(&line)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

impl Drop for JsonStream {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Prints a `--json` line for a command's output: `value` with `"type"` set.
pub fn print_typed(kind: &str, value: impl serde::Serialize) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(value)?;
    match v.as_object_mut() {
        Some(obj) => {
            obj.insert("type".into(), kind.into());
        }
        None => anyhow::bail!("{kind} output is not a JSON object"),
    }
    println!("{v}");
    Ok(())
}

/// Prints a command's outcome as the final JSON line; `source` says whether
/// the exit code is the guest's or microagent's own.
pub fn print_result(
    name: &str,
    result: &RunResult,
    (exit_code, source): (u8, Source),
    extra: serde_json::Value,
) {
    let mut line = json!({
        "type": "result",
        "name": name,
        "exitCode": exit_code,
        "exitCodeSource": source.as_str(),
        "result": result,
    });
    if let (Some(obj), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(lines: &[serde_json::Value]) -> Vec<u8> {
        use base64::Engine as _;
        let mut out = Vec::new();
        for l in lines {
            let data = l["data"].as_str().unwrap();
            if l.get("encoding").is_some() {
                assert_eq!(l["encoding"], "base64");
                out.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap(),
                );
            } else {
                out.extend_from_slice(data.as_bytes());
            }
        }
        out
    }

    #[test]
    fn a_character_split_across_chunks_stays_text() {
        let mut s = JsonStream::stdout();
        let euro = "€".as_bytes(); // 3 bytes
        let mut lines = s.lines_for(&[b'a', euro[0]]);
        lines.extend(s.lines_for(&euro[1..2]));
        lines.extend(s.lines_for(&[euro[2], b'b']));
        assert!(s.carry.is_empty());
        assert!(lines.iter().all(|l| l.get("encoding").is_none()));
        assert_eq!(lines[0]["data"], "a");
        assert_eq!(lines.last().unwrap()["data"], "€b");
        assert_eq!(decoded(&lines), "a€b".as_bytes());
    }

    #[test]
    fn binary_chunks_go_out_as_base64_byte_for_byte() {
        let mut s = JsonStream::stderr();
        let bytes: Vec<u8> = (0..=255u8).collect();
        let lines = s.lines_for(&bytes);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["type"], "stderr");
        assert_eq!(lines[0]["encoding"], "base64");
        assert_eq!(decoded(&lines), bytes);
    }

    #[test]
    fn every_split_of_mixed_output_round_trips() {
        let input: Vec<u8> = [&b"ok "[..], "ünï€😀".as_bytes(), &[0xff, 0xc3], &b"x"[..]].concat();
        for cut in 0..=input.len() {
            let mut s = JsonStream::stdout();
            let mut lines = s.lines_for(&input[..cut]);
            lines.extend(s.lines_for(&input[cut..]));
            if !s.carry.is_empty() {
                lines.push(chunk_line("stdout", &std::mem::take(&mut s.carry), false));
            }
            assert_eq!(decoded(&lines), input, "cut at {cut}");
        }
    }
}

//! A workspace's egress audit log read back: the last decisions, bounded,
//! for callers that cannot follow the file (an MCP client, a summary).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};

use crate::{Runtime, VmkitError};

/// A line longer than this is not a record the stack wrote: it is skipped.
const MAX_LINE: usize = 64 * 1024;

/// The newest records of an egress log.
#[derive(Debug, Default)]
pub struct EgressTail {
    /// Up to the asked-for number of records, oldest first, each a JSON
    /// object as the stack wrote it (docs/json-output.md, `egress`).
    pub records: Vec<serde_json::Value>,
    /// Records in the log in all (the rotated file included).
    pub total: u64,
    /// Lines that were not JSON objects (damaged, or overlong) and were skipped.
    pub skipped: u64,
}

impl Runtime {
    /// The last `max` decisions of workspace `name` (the rotated file
    /// `egress.jsonl.1`, then `egress.jsonl`). Memory stays bounded by
    /// `max` lines of at most 64 KiB, whatever the files hold.
    pub fn egress_tail(&self, name: &str, max: usize) -> Result<EgressTail, VmkitError> {
        let path = self.egress_log(name)?;
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        let mut tail = EgressTail::default();
        let mut kept: VecDeque<serde_json::Value> = VecDeque::new();
        for file in [std::path::PathBuf::from(rotated), path] {
            let f = match std::fs::File::open(&file) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_error(&file, e).into()),
            };
            let mut reader = BufReader::new(f);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = (&mut reader)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .map_err(|e| read_error(&file, e))?;
                if n == 0 {
                    break;
                }
                if line.last() != Some(&b'\n') && n > MAX_LINE {
                    skip_line(&mut reader).map_err(|e| read_error(&file, e))?;
                    tail.skipped += 1;
                    continue;
                }
                match serde_json::from_slice::<serde_json::Value>(&line) {
                    Ok(v) if v.is_object() => {
                        tail.total += 1;
                        if max > 0 {
                            if kept.len() == max {
                                kept.pop_front();
                            }
                            kept.push_back(v);
                        }
                    }
                    _ if line.iter().all(u8::is_ascii_whitespace) => {}
                    _ => tail.skipped += 1,
                }
            }
        }
        tail.records = kept.into();
        Ok(tail)
    }
}

fn read_error(file: &std::path::Path, e: std::io::Error) -> vmkit_protocol::ProtocolError {
    vmkit_protocol::ProtocolError::new(
        vmkit_protocol::ErrorCode::Internal,
        format!("reading {}: {e}", file.display()),
    )
}

/// Consumes the rest of an overlong line without holding it.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

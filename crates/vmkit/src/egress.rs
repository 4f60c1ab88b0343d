//! A workspace's egress audit log read back: the last decisions, bounded,
//! for callers that cannot follow the file (an MCP client, a summary).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use vmkit_protocol::{ErrorCode, ProtocolError};

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
    /// Hands each decision of workspace `name` (one JSON line) to
    /// `on_line`, oldest first: the rotated file, then the current one;
    /// with `follow`, new ones as they are made, until the workspace is
    /// deleted or `on_line` fails.
    pub fn egress(
        &self,
        name: &str,
        follow: bool,
        on_line: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> Result<(), VmkitError> {
        let path = self.egress_log(name)?;
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        let alive = || self.egress_log(name).is_ok();
        crate::follow::lines(Path::new(&rotated), false, &alive, on_line)
            .and_then(|()| crate::follow::lines(&path, follow, &alive, on_line))
            .map_err(|e| read_error(&path, e).into())
    }

    /// The last `max` decisions of workspace `name` (the rotated file
    /// `egress.jsonl.1`, then `egress.jsonl`). Memory stays bounded by
    /// `max` lines of at most 64 KiB, whatever the files hold.
    pub fn egress_tail(&self, name: &str, max: usize) -> Result<EgressTail, VmkitError> {
        let path = self.egress_log(name)?;
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        Ok(tail(&[PathBuf::from(rotated), path], max)?)
    }
}

/// The last `max` JSON-object lines of `files`, read in order (a missing
/// file counts as empty).
fn tail(files: &[PathBuf], max: usize) -> Result<EgressTail, ProtocolError> {
    let mut tail = EgressTail::default();
    let mut kept: VecDeque<serde_json::Value> = VecDeque::new();
    for file in files {
        let f = match std::fs::File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_error(file, e)),
        };
        let mut reader = BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| read_error(file, e))?;
            if n == 0 {
                break;
            }
            if n > MAX_LINE && line.last() != Some(&b'\n') {
                skip_line(&mut reader).map_err(|e| read_error(file, e))?;
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

fn read_error(file: &Path, e: std::io::Error) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_records_come_back_in_order_and_damage_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("e.1"), dir.path().join("e"));
        std::fs::write(&old, "{\"n\":1}\n{\"n\":2}\nnot json\n").unwrap();
        let long = format!("{{\"n\":\"{}\"}}\n", "x".repeat(MAX_LINE + 10));
        std::fs::write(&new, format!("[1]\n{long}{{\"n\":3}}\n\n{{\"n\":4}}")).unwrap();
        let t = tail(&[old.clone(), new.clone()], 3).unwrap();
        let ns: Vec<_> = t.records.iter().map(|r| r["n"].clone()).collect();
        assert_eq!(ns, [2, 3, 4]);
        assert_eq!((t.total, t.skipped), (4, 3));
        let none = tail(&[dir.path().join("missing")], 10).unwrap();
        assert_eq!((none.total, none.records.len()), (0, 0));
        assert!(tail(&[old, new], 0).unwrap().records.is_empty());
    }
}

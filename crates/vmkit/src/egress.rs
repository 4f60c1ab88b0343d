//! A workspace's egress audit log read back: the last decisions, bounded,
//! for callers that cannot follow the file (an MCP client, a summary).

use std::collections::VecDeque;
use std::path::Path;

use vmkit_protocol::{ErrorCode, ProtocolError};

use crate::{Runtime, VmkitError};

/// The newest records of an egress log.
#[derive(Debug, Default)]
pub struct EgressTail {
    /// Up to the asked-for number of records, oldest first, each a JSON
    /// object as the stack wrote it (docs/json-output.md, `egress`).
    pub records: Vec<serde_json::Value>,
    /// Records in the log in all (the rotated file included).
    pub total: u64,
    /// Lines that were not JSON objects (damaged, or pieces of a line
    /// longer than the reader's bound) and were skipped.
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

    /// The last `max` decisions of workspace `name`, read as
    /// [`Runtime::egress`] reads them; memory stays bounded by `max`
    /// records whatever the files hold.
    pub fn egress_tail(&self, name: &str, max: usize) -> Result<EgressTail, VmkitError> {
        let mut tail = Tail::new(max);
        self.egress(name, false, &mut |line| {
            tail.push(line);
            Ok(())
        })?;
        Ok(tail.finish())
    }
}

/// Keeps the newest `max` JSON-object lines it is given, counts the rest.
struct Tail {
    max: usize,
    kept: VecDeque<serde_json::Value>,
    total: u64,
    skipped: u64,
}

impl Tail {
    fn new(max: usize) -> Tail {
        Tail {
            max,
            kept: VecDeque::new(),
            total: 0,
            skipped: 0,
        }
    }

    fn push(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => {
                self.total += 1;
                if self.max > 0 {
                    if self.kept.len() == self.max {
                        self.kept.pop_front();
                    }
                    self.kept.push_back(v);
                }
            }
            // Damaged, or a piece of an overlong line the reader cut.
            _ => self.skipped += 1,
        }
    }

    fn finish(self) -> EgressTail {
        EgressTail {
            records: self.kept.into(),
            total: self.total,
            skipped: self.skipped,
        }
    }
}

fn read_error(file: &Path, e: std::io::Error) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
        format!("reading {}: {e}", file.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_records_are_kept_in_order_and_damage_is_counted() {
        let mut t = Tail::new(3);
        for line in [
            "{\"n\":1}",
            "{\"n\":2}",
            "not json",
            "[1]",
            "",
            "{\"n\":3}",
            "{\"n\":4}",
        ] {
            t.push(line);
        }
        let t = t.finish();
        let ns: Vec<_> = t.records.iter().map(|r| r["n"].clone()).collect();
        assert_eq!(ns, [2, 3, 4]);
        assert_eq!((t.total, t.skipped), (4, 2));
        let mut none = Tail::new(0);
        none.push("{}");
        let none = none.finish();
        assert_eq!((none.total, none.records.len()), (1, 0));
    }
}

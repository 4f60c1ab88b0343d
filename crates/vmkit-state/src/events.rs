use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use vmkit_protocol::Event;

use crate::StateError;

/// A workspace's append-only event log (`events.jsonl`).
#[derive(Debug, Clone)]
pub struct EventLog {
    path: PathBuf,
}

impl EventLog {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as one line. A single `write` on an `O_APPEND` file
    /// keeps lines whole even if two writers ever raced.
    pub fn append(&self, event: &Event) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(event).expect("events always serialize");
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(|e| StateError::io("opening", &self.path, e))?;
        file.write_all(&line)
            .map_err(|e| StateError::io("appending to", &self.path, e))
    }

    /// Reads every event. Lines that do not parse (a torn write after a
    /// crash, a newer format) are skipped rather than failing the whole log.
    pub fn read_all(&self) -> Result<Vec<Event>, StateError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::io("reading", &self.path, e)),
        };
        let mut events = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| StateError::io("reading", &self.path, e))?;
            if let Ok(event) = serde_json::from_str(&line) {
                events.push(event);
            }
        }
        Ok(events)
    }
}

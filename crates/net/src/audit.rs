//! The egress audit log: one JSON line per policy decision, appended to the
//! workspace's `egress.jsonl`, bounded and rotated.
//!
//! A line (fields with `?` are left out when unknown):
//!
//! ```json
//! {"time":"2026-12-01T15:00:00.123Z","decision":"allow","proto":"tcp",
//!  "dst":"203.0.113.10:443","name":"pkg.test","nameSource":"sni",
//!  "rule":"pkg.test","reason":"...","bytesOut":517,"bytesIn":4096,"durationMs":35}
//! ```
//!
//! - `decision`: `allow` or `deny`.
//! - `proto`: `tcp`, `udp`, or `dns` (a query answered by the stack).
//! - `dst`: the destination the guest asked for, `IP:PORT`.
//! - `name`?, `nameSource`?: the name the decision was about and how it was
//!   known: `dns` (this VM's own DNS answer for that address, or the query),
//!   `sni` (TLS ClientHello), `host` (HTTP Host header).
//! - `rule`?: the rule that decided, as written; `reason`?: why, in words.
//! - `bytesOut` (guest to world), `bytesIn` (world to guest), `durationMs`:
//!   for an allowed flow, written when it ends; 0 for a deny.
//!
//! When the file passes its size bound it is renamed to `egress.jsonl.1`
//! (replacing the previous one) and a new file is started.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The transport of an audited decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Proto {
    /// A TCP connection.
    Tcp,
    /// A UDP flow (one guest port to one destination).
    Udp,
    /// A DNS query the stack answered (or refused).
    Dns,
}

/// How the name of a decision was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NameSource {
    /// This VM's DNS (the query, or the answer that returned the address).
    Dns,
    /// The TLS ClientHello's server name.
    Sni,
    /// The HTTP request's Host header.
    Host,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Decision {
    /// The flow went out (or the query was answered).
    Allow,
    /// The flow was refused (or the query was refused).
    Deny,
}

/// One line of `egress.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When the decision was made (RFC 3339, UTC).
    pub time: String,
    /// Allowed or denied.
    pub decision: Decision,
    /// The transport.
    pub proto: Proto,
    /// The destination, `IP:PORT`.
    pub dst: String,
    /// The name the decision was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How that name was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_source: Option<NameSource>,
    /// The rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes from the guest to the destination.
    pub bytes_out: u64,
    /// Bytes from the destination to the guest.
    pub bytes_in: u64,
    /// How long the flow lasted, in milliseconds.
    pub duration_ms: u64,
}

/// The default size bound of `egress.jsonl` before it is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;

/// An append-only, size-bounded writer of [`AuditRecord`] lines.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl AuditLog {
    /// Opens (creating or appending to) the log at `path`.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<AuditLog> {
        let file = Self::open_file(path)?;
        let written = file.metadata()?.len();
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes,
        })
    }

    fn open_file(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Appends one line (one `write` call, so a reader never sees half a
    /// line), rotating first if the bound would be passed.
    pub fn append(&mut self, record: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, &rotated)?;
            self.file = Self::open_file(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }
}

/// The current time as the audit log writes it.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> AuditRecord {
        AuditRecord {
            time: now_rfc3339(),
            decision: Decision::Deny,
            proto: Proto::Tcp,
            dst: "10.0.0.1:80".to_string(),
            name: Some("pkg.test".into()),
            name_source: Some(NameSource::Sni),
            rule: None,
            reason: Some("refused range".into()),
            bytes_out: n,
            bytes_in: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn lines_have_the_documented_shape() {
        let line = serde_json::to_value(record(3)).unwrap();
        assert_eq!(line["decision"], "deny");
        assert_eq!(line["proto"], "tcp");
        assert_eq!(line["nameSource"], "sni");
        assert_eq!(line["bytesOut"], 3);
        assert!(line.get("rule").is_none());
        for key in ["time", "dst", "bytesIn", "durationMs", "reason", "name"] {
            assert!(line.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn the_log_rotates_at_its_bound_and_keeps_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.jsonl");
        let mut log = AuditLog::open(&path, 1000).unwrap();
        for n in 0..40 {
            log.append(&record(n)).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("egress.jsonl.1")).unwrap();
        assert!(current.len() <= 1000 && rotated.len() <= 1000);
        for line in current.lines().chain(rotated.lines()) {
            let _: AuditRecord = serde_json::from_str(line).unwrap();
        }
        let last: AuditRecord = serde_json::from_str(current.lines().last().unwrap()).unwrap();
        assert_eq!(last.bytes_out, 39);
    }
}

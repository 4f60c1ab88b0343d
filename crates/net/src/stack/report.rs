//! Writing decisions: the audit log, and a warning on stderr (which the
//! lifecycle keeps in its log) for each denied flow. Identical denies and
//! identical DNS answers in quick succession (a guest retrying in a loop, a
//! resolver without a cache asking before every request, a flood) are
//! written once per [`REPEAT_WINDOW`], with the count of the ones left out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::audit::{now_rfc3339, AuditLog, AuditRecord, Decision, Proto};
use crate::policy::Verdict;

/// Within this window an identical deny is counted, not written again.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(5);
const MAX_TRACKED: usize = 4096;

/// What makes two decisions identical: transport, destination, name, verdict.
type RepeatKey = (Proto, SocketAddr, Option<String>, bool);

/// The stack's reporter of decisions.
#[derive(Debug)]
pub struct Reporter {
    log: Option<AuditLog>,
    recent: HashMap<RepeatKey, (Instant, u64)>,
    /// Records written (for tests and stats).
    pub written: u64,
    /// Records left out as repeats.
    pub suppressed: u64,
    warn: bool,
}

/// The facts of a finished (or refused) flow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Guest to world.
    pub bytes_out: u64,
    /// World to guest.
    pub bytes_in: u64,
    /// How long it lasted.
    pub duration: Duration,
}

impl Reporter {
    /// A reporter writing to `log` (if any); `warn`: also print denies on
    /// stderr.
    pub fn new(log: Option<AuditLog>, warn: bool) -> Reporter {
        Reporter {
            log,
            recent: HashMap::new(),
            written: 0,
            suppressed: 0,
            warn,
        }
    }

    /// Reports a decision.
    pub fn report(
        &mut self,
        proto: Proto,
        dst: SocketAddr,
        verdict: &Verdict,
        traffic: Traffic,
        now: Instant,
    ) {
        let mut reason = verdict.reason.clone();
        if !verdict.allow || proto == Proto::Dns {
            if self.recent.len() >= MAX_TRACKED {
                // Keep what is recent, and what still owes a summary.
                self.recent.retain(|_, (at, repeats)| {
                    *repeats > 0 || now.duration_since(*at) < REPEAT_WINDOW
                });
            }
            let key = (proto, dst, verdict.name.clone(), verdict.allow);
            match self.recent.get_mut(&key) {
                Some((at, repeats)) if now.duration_since(*at) < REPEAT_WINDOW => {
                    *repeats += 1;
                    self.suppressed += 1;
                    return;
                }
                Some((at, repeats)) => {
                    if *repeats > 0 {
                        let r = reason.unwrap_or_default();
                        reason = Some(format!(
                            "{r} (and {repeats} identical decisions not written)"
                        ));
                    }
                    *at = now;
                    *repeats = 0;
                }
                None => {
                    // A flood of distinct decisions: each is written, and
                    // the ones already tracked go on being summarised.
                    if self.recent.len() < MAX_TRACKED {
                        self.recent.insert(key, (now, 0));
                    }
                }
            }
        }
        let record = AuditRecord {
            time: now_rfc3339(),
            decision: if verdict.allow {
                Decision::Allow
            } else {
                Decision::Deny
            },
            proto,
            dst: dst.to_string(),
            name: verdict.name.clone(),
            name_source: verdict.name_source,
            rule: verdict.rule.clone(),
            reason,
            bytes_out: traffic.bytes_out,
            bytes_in: traffic.bytes_in,
            duration_ms: u64::try_from(traffic.duration.as_millis()).unwrap_or(u64::MAX),
        };
        if self.warn && !verdict.allow {
            let name = record
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            eprintln!(
                "warning: egress denied: {} {}{name}: {}",
                serde_json::to_value(proto)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                record.dst,
                record.reason.as_deref().unwrap_or("denied")
            );
        }
        if let Some(log) = &mut self.log {
            if let Err(e) = log.append(&record) {
                eprintln!("warning: audit log: {e}");
            }
        }
        self.written += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_denies_are_counted_then_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.jsonl");
        let mut reporter = Reporter::new(Some(AuditLog::open(&path, 1 << 20).unwrap()), false);
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let deny = Verdict::denied("refused range".to_string());
        let start = Instant::now();
        for _ in 0..100 {
            reporter.report(Proto::Tcp, dst, &deny, Traffic::default(), start);
        }
        assert_eq!((reporter.written, reporter.suppressed), (1, 99));
        reporter.report(
            Proto::Tcp,
            dst,
            &deny,
            Traffic::default(),
            start + REPEAT_WINDOW,
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let last: AuditRecord = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert!(last.reason.unwrap().contains("99 identical"), "{text}");
    }
}

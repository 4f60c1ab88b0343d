//! Writing decisions: the audit log, and a warning on stderr (which the
//! lifecycle keeps in its log) for each denied flow. Identical denies in
//! quick succession (a guest retrying in a loop, a flood) are written once
//! per [`REPEAT_WINDOW`], with the count of the ones left out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::audit::{now_rfc3339, AuditLog, AuditRecord, Decision, Proto};
use crate::policy::Verdict;

/// Within this window an identical deny is counted, not written again.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(5);
const MAX_TRACKED: usize = 4096;

/// The stack's reporter of decisions.
#[derive(Debug)]
pub struct Reporter {
    log: Option<AuditLog>,
    recent: HashMap<(Proto, SocketAddr, Option<String>), (Instant, u64)>,
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
        if !verdict.allow {
            if self.recent.len() >= MAX_TRACKED {
                self.recent
                    .retain(|_, (at, _)| now.duration_since(*at) < REPEAT_WINDOW);
                if self.recent.len() >= MAX_TRACKED {
                    self.recent.clear();
                }
            }
            let key = (proto, dst, verdict.name.clone());
            match self.recent.get_mut(&key) {
                Some((at, repeats)) if now.duration_since(*at) < REPEAT_WINDOW => {
                    *repeats += 1;
                    self.suppressed += 1;
                    return;
                }
                Some((at, repeats)) => {
                    if *repeats > 0 {
                        let r = reason.unwrap_or_default();
                        reason = Some(format!("{r} (and {repeats} identical denies not written)"));
                    }
                    *at = now;
                    *repeats = 0;
                }
                None => {
                    self.recent.insert(key, (now, 0));
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

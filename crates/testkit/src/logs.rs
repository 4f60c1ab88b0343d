//! Checks on the capped logs a log relay writes (`rotatelogs -n 2`).

use std::path::Path;

/// A capped log and its one rotated file hold something, and at most two
/// caps' worth (plus a last chunk).
pub fn assert_capped(dir: &Path, log: &str, cap: u64) {
    let total: u64 = [log.to_string(), format!("{log}.1")]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
        .sum();
    assert!(
        total > 0 && total <= 2 * cap + 64 * 1024,
        "{total} bytes kept in {log}"
    );
}

//! Guest output as the model sees it: bounded, with the truncation said,
//! and bytes that are not UTF-8 carried as base64 rather than mangled.

use std::io::{self, Write};

use base64::Engine as _;

/// Default cap per stream on what goes back to the model.
pub const DEFAULT_OUTPUT_LIMIT: usize = 64 * 1024;

/// A sink that keeps the first `limit` bytes and counts the rest.
#[derive(Debug)]
pub struct Capture {
    kept: Vec<u8>,
    limit: usize,
    total: u64,
}

impl Capture {
    /// Keeps at most `limit` bytes.
    pub fn new(limit: usize) -> Capture {
        Capture {
            kept: Vec::new(),
            limit,
            total: 0,
        }
    }

    /// Whether more was written than was kept.
    pub fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }

    /// How many bytes were written in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The kept bytes as text: up to the last whole character when the cap
    /// cut one, with invalid sequences replaced (U+FFFD).
    pub fn text(&self) -> String {
        let mut bytes = &self.kept[..];
        if self.truncated() {
            if let Err(e) = std::str::from_utf8(bytes) {
                if e.error_len().is_none() {
                    bytes = &bytes[..e.valid_up_to()];
                }
            }
        }
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// The kept bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.kept
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&buf[..room.min(buf.len())]);
        self.total = self.total.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// File content for the model: `("utf-8", text)` when it is text, else
/// `("base64", ...)`.
pub fn encode_content(bytes: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(bytes) {
        Ok(text) => ("utf-8", text.to_owned()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ),
    }
}

/// Decodes base64 content from a client.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("contentBase64 is not valid base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_the_head_and_flags_the_rest() {
        let mut c = Capture::new(4);
        c.write_all(b"ab").unwrap();
        c.write_all(b"cdef").unwrap();
        assert_eq!(c.bytes(), b"abcd");
        assert_eq!(c.total(), 6);
        assert!(c.truncated());
        let mut c = Capture::new(4);
        c.write_all(b"abcd").unwrap();
        assert!(!c.truncated());
    }

    #[test]
    fn a_character_cut_by_the_cap_is_dropped_not_mangled() {
        let mut c = Capture::new(4);
        c.write_all("ab€".as_bytes()).unwrap();
        assert_eq!(c.text(), "ab");
    }

    #[test]
    fn binary_content_goes_as_base64() {
        assert_eq!(encode_content(b"hi"), ("utf-8", "hi".into()));
        let (enc, data) = encode_content(&[0xff, 0]);
        assert_eq!(enc, "base64");
        assert_eq!(decode_base64(&data).unwrap(), vec![0xff, 0]);
        assert!(decode_base64("not base64!").is_err());
    }
}

//! Guest text on its way to a terminal. A guest's console or error text can
//! carry terminal escapes (an OSC 52 sequence writes the clipboard, others
//! retitle windows or rewrite the screen); wherever such text is printed for
//! a human it goes through [`terminal_safe`].

/// `text` with every control character but newline and tab shown as a
/// visible escape (`\x1b`, `\x07`, `\u{9b}`), so that a terminal prints it
/// instead of obeying it.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// [`terminal_safe`] over bytes (invalid UTF-8 shows as U+FFFD).
pub fn terminal_safe_bytes(bytes: &[u8]) -> String {
    terminal_safe(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_cannot_reach_the_terminal() {
        // OSC 52 (clipboard write), CSI clear screen, 8-bit CSI, BEL, CR.
        let hostile = "ok\x1b]52;c;cHduZWQ=\x07\x1b[2J\u{9b}31m\rlast\tline\n";
        let safe = terminal_safe(hostile);
        assert!(
            !safe
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{safe:?}"
        );
        assert_eq!(
            safe,
            "ok\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\u{9b}31m\\x0dlast\tline\n"
        );
        assert_eq!(terminal_safe_bytes(b"a\xffb\x1b"), "a\u{fffd}b\\x1b");
    }
}

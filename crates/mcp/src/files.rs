//! Files in a running workspace, moved through the exec channel with the
//! image's own shell tools (`sh`, `cat`, `wc`, `tail`, `head`, `chmod`), so
//! they work with any image that has a POSIX shell.

/// Writes stdin to `$1` (parents created), then sets mode `$2`.
pub const WRITE_SCRIPT: &str =
    r#"umask 022; mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1""#;

/// Prints `$1`'s size on stderr, then up to `$3` bytes from byte `$2` (1-based) on stdout.
pub const READ_SCRIPT: &str = r#"[ -f "$1" ] || { echo "$1: no such regular file" >&2; exit 2; }; wc -c < "$1" >&2 || exit 2; tail -c +"$2" "$1" | head -c "$3""#;

/// Checks a guest path from a client: absolute, no NUL, bounded.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must be absolute"));
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if path.len() > 4096 {
        return Err("path is longer than 4096 bytes".into());
    }
    Ok(())
}

/// Parses an octal mode such as "0644" or "755".
pub fn parse_mode(mode: Option<&str>) -> Result<String, String> {
    let mode = mode.unwrap_or("0644");
    let valid = (3..=4).contains(&mode.len()) && mode.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !valid {
        return Err(format!("mode {mode:?} is not an octal mode like \"0644\""));
    }
    Ok(mode.to_owned())
}

/// The file size `READ_SCRIPT` printed on stderr.
pub fn parse_size(stderr: &str) -> Result<u64, String> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("could not read the file: {}", stderr.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_modes_are_checked() {
        assert!(check_path("/root/a").is_ok());
        assert!(check_path("root/a").is_err());
        assert!(check_path("/a\0b").is_err());
        assert_eq!(parse_mode(None).unwrap(), "0644");
        assert_eq!(parse_mode(Some("755")).unwrap(), "755");
        assert!(parse_mode(Some("0999")).is_err());
        assert!(parse_mode(Some("u+x")).is_err());
        assert!(parse_mode(Some("; rm -rf /")).is_err());
    }

    #[test]
    fn sizes_come_from_the_last_number_on_stderr() {
        assert_eq!(parse_size("  42\n").unwrap(), 42);
        assert!(parse_size("/x: no such regular file\n")
            .unwrap_err()
            .contains("no such"));
    }
}

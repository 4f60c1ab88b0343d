//! Guest hostnames: checked once here, and derived from a workspace name
//! when the caller gives none (a workspace name may hold `_`, which a
//! hostname may not).

use crate::ProtocolError;

/// Longest hostname Linux accepts (`HOST_NAME_MAX`).
pub const MAX_HOSTNAME_BYTES: usize = 64;

/// Checks an RFC 1123 hostname: 1-64 bytes of dot-separated labels, each
/// 1-63 letters, digits or `-`, not starting or ending with `-`.
pub fn validate_hostname(name: &str) -> Result<(), ProtocolError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !name.is_empty() && name.len() <= MAX_HOSTNAME_BYTES && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ProtocolError::invalid(format!(
            "hostname must be 1-{MAX_HOSTNAME_BYTES} characters of dot-separated labels of letters, digits and '-' (not at a label's start or end); got {name:?}"
        )))
    }
}

/// The hostname of a workspace whose caller named none: its name with every
/// character a hostname cannot hold (`_`, `.`) turned into `-`. A valid
/// workspace name always gives a valid hostname.
pub fn hostname_for(runtime_id: &str) -> String {
    let mapped: String = runtime_id
        .chars()
        .take(MAX_HOSTNAME_BYTES)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "workspace".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_workspace_name_gives_a_valid_hostname() {
        for id in [
            "my_ws",
            "a.b",
            "a..b",
            "x_",
            "ws-1",
            "A_B.c-d",
            &"z_".repeat(31),
        ] {
            crate::validate_runtime_id(id).unwrap();
            let h = hostname_for(id);
            validate_hostname(&h).unwrap_or_else(|e| panic!("{id:?} -> {h:?}: {e}"));
        }
        assert_eq!(hostname_for("my_ws"), "my-ws");
        assert_eq!(hostname_for("ws-1"), "ws-1");
    }

    #[test]
    fn bad_hostnames_are_refused() {
        for h in [
            "",
            "my_ws",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(validate_hostname(h).is_err(), "{h:?} accepted");
        }
        validate_hostname("ws-1.example").unwrap();
    }
}

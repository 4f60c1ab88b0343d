//! The kernel configuration fragment kept in the repository
//! (`config/microagent-x86_64.config`) and the check that a generated
//! `.config` honours it.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The x86_64 fragment, applied on top of `make allnoconfig`.
pub const X86_64_FRAGMENT: &str = include_str!("../config/microagent-x86_64.config");

/// The aarch64 fragment (QEMU `-M virt` and Virtualization.framework).
pub const AARCH64_FRAGMENT: &str = include_str!("../config/microagent-aarch64.config");

/// Bumped when the build recipe changes in a way the fragment does not show
/// (a different base config, make target or post-processing), so existing
/// kernels count as stale.
const RECIPE_VERSION: &str = "recipe-1";

/// sha256 (hex) identifying the fragment plus the recipe that applies it.
/// Stored in the manifest; a mismatch means the installed kernel is stale.
pub fn fragment_sha256(fragment: &str) -> String {
    let mut h = Sha256::new();
    h.update(RECIPE_VERSION.as_bytes());
    h.update(b"\n");
    h.update(fragment.as_bytes());
    hex::encode(h.finalize())
}

/// The options a fragment sets: name -> value (`None` for "is not set").
pub fn parse(fragment: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for line in fragment.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                if name.starts_with("CONFIG_") {
                    out.insert(name.to_string(), None);
                }
            }
            continue;
        }
        if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") {
                out.insert(name.to_string(), Some(value.to_string()));
            }
        }
    }
    out
}

/// Lists every option the fragment asks for that the generated `.config`
/// does not have, e.g. because of an unmet dependency. Empty means honoured.
pub fn mismatches(fragment: &str, dot_config: &str) -> Vec<String> {
    let have = parse(dot_config);
    parse(fragment)
        .into_iter()
        .filter_map(|(name, want)| {
            let got = have.get(&name).cloned().flatten();
            (got != want).then(|| {
                format!(
                    "{name}: asked {}, got {}",
                    want.as_deref().unwrap_or("not set"),
                    got.as_deref().unwrap_or("not set")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shipped_fragment() {
        let opts = parse(X86_64_FRAGMENT);
        for must in [
            "CONFIG_PVH",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_VIRTIO_NET",
            "CONFIG_VSOCKETS",
            "CONFIG_VIRTIO_VSOCKETS",
            "CONFIG_EXT4_FS",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_DEVTMPFS_MOUNT",
            "CONFIG_HPET_TIMER",
            "CONFIG_X86_PM_TIMER",
            "CONFIG_KVM_GUEST",
        ] {
            assert_eq!(opts.get(must), Some(&Some("y".to_string())), "{must}");
        }
        assert_eq!(opts.get("CONFIG_LOCALVERSION_AUTO"), Some(&None));
        assert!(!opts.contains_key("CONFIG_MODULES"));
    }

    #[test]
    fn finds_unhonoured_options() {
        let frag = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n";
        assert!(mismatches(frag, "CONFIG_A=y\nCONFIG_C=\"x\"\n").is_empty());
        let m = mismatches(frag, "# CONFIG_A is not set\nCONFIG_B=y\n");
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains("CONFIG_A: asked y, got not set"));
    }

    #[test]
    fn hash_changes_with_the_fragment() {
        assert_ne!(fragment_sha256("CONFIG_A=y"), fragment_sha256("CONFIG_A=n"));
        assert_eq!(fragment_sha256(X86_64_FRAGMENT).len(), 64);
    }
}

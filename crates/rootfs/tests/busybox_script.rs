//! `scripts/busybox-image` (what the README's offline main command uses)
//! makes a layout the builder turns into a bootable-shaped disk.

mod common;

use std::path::Path;
use std::process::Command;

use common::{cat, fsck_clean, readlink, stat};
use vmkit_rootfs::{BuildOptions, ImageRef, RootfsBuilder};

#[test]
fn busybox_image_script_makes_a_buildable_layout() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-image");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("busybox");
    let out = Command::new(&script)
        .arg(&layout)
        .output()
        .expect("running scripts/busybox-image");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let built = RootfsBuilder::new(tmp.path().join("state"))
        .build(
            &ImageRef::parse(&format!("oci-layout:{}", layout.display())).unwrap(),
            &BuildOptions::default(),
        )
        .unwrap();
    fsck_clean(&built.path);
    assert_eq!(
        cat(&built.path, "/bin/busybox"),
        std::fs::read("/bin/busybox").unwrap()
    );
    let bb = stat(&built.path, "/bin/busybox").unwrap();
    assert_eq!((bb.mode, bb.uid, bb.gid), (0o755, 0, 0));
    assert_eq!(readlink(&built.path, "/bin/sh"), "/bin/busybox");
    assert_eq!(stat(&built.path, "/tmp").unwrap().mode, 0o1777);
    assert_eq!(built.image_config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(built.image_config.working_dir.as_deref(), Some("/root"));
    assert!(built
        .image_config
        .env
        .as_ref()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("PATH=")));

    // Running it again adds the tag without breaking the layout.
    let out = Command::new(&script)
        .arg(&layout)
        .arg("v2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = RootfsBuilder::new(tmp.path().join("state"))
        .build(
            &ImageRef::parse(&format!("oci-layout:{}:v2", layout.display())).unwrap(),
            &BuildOptions::default(),
        )
        .unwrap();
    assert_eq!(
        cat(&again.path, "/bin/busybox"),
        std::fs::read("/bin/busybox").unwrap()
    );
}

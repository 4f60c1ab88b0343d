//! Registry credentials: a registry requiring basic auth (htpasswd), no
//! credentials (a clear error), wrong ones, and the right ones from the
//! auth file named by REGISTRY_AUTH_FILE. Alone in its own test binary
//! because it sets that environment variable.

use base64::Engine as _;
use vmkit_rootfs::{BuildOptions, ImageRef, RootfsBuilder, RootfsError};
use vmkit_testkit::images;
use vmkit_testkit::registry::{htpasswd_line, Registry};

#[test]
fn basic_auth_comes_from_the_auth_file() {
    let reg = Registry::start_with_htpasswd(&htpasswd_line("alice", "s3cret"));
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    images::busybox_oci_layout(&layout, "latest");
    let pushed = reg.push_oci_layout_as(
        &layout,
        "latest",
        "private/app:latest",
        Some("alice:s3cret"),
    );
    let image = ImageRef::parse(&format!("{}/private/app:latest", reg.addr())).unwrap();
    let auth_file = tmp.path().join("auth.json");
    std::env::set_var("REGISTRY_AUTH_FILE", &auth_file);

    // No auth file: anonymous, refused with the registry's reason.
    let err = RootfsBuilder::new(tmp.path().join("s1"))
        .build(&image, &BuildOptions::default())
        .unwrap_err();
    assert!(matches!(err, RootfsError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains("auth.json"), "{err}");

    let write_auth = |creds: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(creds);
        std::fs::write(
            &auth_file,
            format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, reg.addr()),
        )
        .unwrap();
    };
    write_auth("alice:wrong");
    let err = RootfsBuilder::new(tmp.path().join("s2"))
        .build(&image, &BuildOptions::default())
        .unwrap_err();
    assert!(matches!(err, RootfsError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains("not authorized"), "{err}");

    write_auth("alice:s3cret");
    let built = RootfsBuilder::new(tmp.path().join("s3"))
        .build(&image, &BuildOptions::default())
        .unwrap();
    assert_eq!(built.manifest_digest, pushed);

    std::fs::write(&auth_file, "{broken").unwrap();
    let err = RootfsBuilder::new(tmp.path().join("s4"))
        .build(&image, &BuildOptions::default())
        .unwrap_err();
    assert!(matches!(err, RootfsError::AuthFile { .. }), "{err:?}");
}

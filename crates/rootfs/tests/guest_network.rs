//! A root disk built for a guest network carries the `/etc/resolv.conf` and
//! `/etc/hosts` the guest init would write for it (so the boot writes
//! nothing), without following the image's symlinks out of the root.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;

use common::{cat, readlink, stat};
use vmkit_channel::{GuestNetwork, HOST_ALIAS};
use vmkit_rootfs::{BuildOptions, BuiltRootfs, ImageRef, RootfsBuilder};
use vmkit_testkit::images::{self, Compression, ImageSpec, LayerBuilder};

fn net() -> GuestNetwork {
    GuestNetwork::behind_gateway(
        Ipv4Addr::new(10, 0, 2, 15),
        24,
        Ipv4Addr::new(10, 0, 2, 2),
        1500,
    )
}

fn build(dir: &Path, layer: LayerBuilder, network: Option<GuestNetwork>) -> BuiltRootfs {
    let layout = dir.join("layout");
    let spec = ImageSpec::new(
        vec![(layer.finish(), Compression::Gzip)],
        serde_json::json!({}),
    );
    images::write_oci_layout(&layout, "t", &spec);
    let image = ImageRef::parse(&format!("oci-layout:{}:t", layout.display())).unwrap();
    let opts = BuildOptions {
        guest_network: network,
        ..Default::default()
    };
    RootfsBuilder::new(dir.join("state"))
        .build(&image, &opts)
        .unwrap()
}

fn text(img: &Path, path: &str) -> String {
    String::from_utf8(cat(img, path)).unwrap()
}

#[test]
fn resolv_conf_and_hosts_are_written_as_the_guest_init_would() {
    let tmp = tempfile::tempdir().unwrap();
    let image_hosts = "127.0.0.1\tlocalhost\n10.1.1.1\tdb\n";
    let layer = || {
        let mut l = LayerBuilder::new();
        l.dir("etc", 0o755, 0, 0)
            .file("etc/hosts", image_hosts.as_bytes(), 0o644, 0, 0)
            .symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf");
        l
    };
    let with = build(tmp.path(), layer(), Some(net()));
    let img = &with.path;
    // The symlink is replaced by a file, as the guest init does at boot.
    let resolv = stat(img, "/etc/resolv.conf").unwrap();
    assert_eq!((resolv.kind.as_str(), resolv.mode), ("regular", 0o644));
    assert_eq!(text(img, "/etc/resolv.conf"), net().resolv_conf());
    assert!(text(img, "/etc/resolv.conf").contains("nameserver 10.0.2.2\n"));
    // The image's lines stay; the network's entry is added once.
    let hosts = text(img, "/etc/hosts");
    assert_eq!(hosts, net().hosts_file(image_hosts));
    assert!(hosts.starts_with(image_hosts), "{hosts}");
    assert_eq!(hosts.matches(HOST_ALIAS).count(), 1, "{hosts}");
    // Written again over that, nothing changes: the guest init skips it.
    assert_eq!(net().hosts_file(&hosts), hosts);

    // Without a network the image's files are left as they are, in
    // another cache entry.
    let without = build(tmp.path(), layer(), None);
    assert_ne!(without.path, with.path);
    assert_eq!(text(&without.path, "/etc/hosts"), image_hosts);
    assert_eq!(
        readlink(&without.path, "/etc/resolv.conf"),
        "../run/systemd/resolve/stub-resolv.conf"
    );
}

#[test]
fn a_symlinked_etc_is_resolved_inside_the_root_and_a_symlinked_hosts_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let mut l = LayerBuilder::new();
    // /etc points at an absolute host path; /etc/hosts is a symlink.
    l.dir("real-etc", 0o755, 0, 0)
        .symlink("real-etc/hosts", "/proc/self/hosts")
        .symlink("etc", victim.to_str().unwrap());
    let built = build(tmp.path(), l, Some(net()));
    assert!(
        std::fs::read_dir(&victim).unwrap().next().is_none(),
        "the build wrote outside the image's root"
    );
    let etc = format!("{}/resolv.conf", victim.display());
    assert_eq!(text(&built.path, &etc), net().resolv_conf());
    // The image's /real-etc/hosts symlink is not the disk's /etc/hosts; the
    // one under the resolved /etc is new, made from nothing.
    assert_eq!(readlink(&built.path, "/real-etc/hosts"), "/proc/self/hosts");
    let hosts = text(&built.path, &format!("{}/hosts", victim.display()));
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
}

#[test]
fn an_odd_hosts_file_is_left_for_the_guest_init() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = LayerBuilder::new();
    l.dir("etc", 0o755, 0, 0)
        .file("etc/hosts.real", b"127.0.0.1\tlocalhost\n", 0o644, 0, 0)
        .symlink("etc/hosts", "hosts.real");
    let built = build(tmp.path(), l, Some(net()));
    assert_eq!(readlink(&built.path, "/etc/hosts"), "hosts.real");
    assert_eq!(
        text(&built.path, "/etc/hosts.real"),
        "127.0.0.1\tlocalhost\n"
    );
    assert_eq!(text(&built.path, "/etc/resolv.conf"), net().resolv_conf());
}

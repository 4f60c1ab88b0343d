//! `cp` through the exec service over Unix socket pairs, driven by the
//! host client: the code that runs over vsock in the VM.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vmkit_channel::host::{copy_in_over, copy_out_over};
use vmkit_channel::{ChannelError, CopyInRequest, CopyOutRequest};
use vmkit_guest_init::image::{Defaults, ImageConfig};
use vmkit_guest_init::service::Service;

const IDLE: Duration = Duration::from_secs(30);

fn service() -> Arc<Service> {
    let d = Defaults::new(&ImageConfig::default(), &Default::default(), None, None);
    Arc::new(Service::new(d, None))
}

fn connection(svc: &Arc<Service>) -> UnixStream {
    let (host, guest) = UnixStream::pair().unwrap();
    svc.spawn_handler(guest);
    host
}

fn tree(root: &std::path::Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/big"), vec![3u8; 1 << 20]).unwrap();
    std::fs::write(root.join("x.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("x.sh"), PermissionsExt::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("a/b/big", root.join("l")).unwrap();
}

#[test]
fn copy_in_then_out_round_trips() {
    let svc = service();
    let host = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    tree(&host.path().join("proj"));
    let mut tar = Vec::new();
    vmkit_archive::pack(&host.path().join("proj"), "proj".as_ref(), &mut tar).unwrap();

    // Into an existing folder: lands as folder/proj.
    let req = CopyInRequest {
        path: guest.path().to_str().unwrap().into(),
        name: Some("proj".into()),
        ..CopyInRequest::default()
    };
    let stats = copy_in_over(&connection(&svc), &req, &mut &tar[..], IDLE).unwrap();
    assert_eq!(stats.bytes, (1 << 20) + 10);
    let copied = guest.path().join("proj");
    assert_eq!(
        std::fs::read(copied.join("a/b/big")).unwrap(),
        vec![3u8; 1 << 20]
    );
    // No temporary folder is left next to it.
    assert_eq!(std::fs::read_dir(guest.path()).unwrap().count(), 1);

    // To a new name.
    let req = CopyInRequest {
        path: guest.path().join("renamed").to_str().unwrap().into(),
        name: Some("proj".into()),
        ..CopyInRequest::default()
    };
    copy_in_over(&connection(&svc), &req, &mut &tar[..], IDLE).unwrap();
    assert!(guest.path().join("renamed/x.sh").exists());

    // And back out.
    let mut out = Vec::new();
    let req = CopyOutRequest {
        path: copied.to_str().unwrap().into(),
    };
    copy_out_over(&connection(&svc), &req, &mut out, IDLE).unwrap();
    let back = tempfile::tempdir().unwrap();
    vmkit_archive::extract(&out[..], back.path(), &Default::default()).unwrap();
    let m = std::fs::metadata(back.path().join("proj/x.sh")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o750);
    assert_eq!(
        std::fs::read_link(back.path().join("proj/l")).unwrap(),
        std::path::Path::new("a/b/big")
    );
}

#[test]
fn bad_copies_get_the_guests_error_and_leave_nothing() {
    let svc = service();
    let guest = tempfile::tempdir().unwrap();
    let missing = CopyOutRequest {
        path: guest.path().join("nope").to_str().unwrap().into(),
    };
    let err = copy_out_over(&connection(&svc), &missing, &mut Vec::new(), IDLE).unwrap_err();
    assert!(
        matches!(&err, ChannelError::Guest(m) if m.contains("nope")),
        "{err}"
    );

    // A guest symlink inside the destination cannot lead entries out of it.
    let dst = guest.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::symlink("../..", dst.join("up")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "up/escaped", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let req = CopyInRequest {
        path: dst.to_str().unwrap().into(),
        ..CopyInRequest::default()
    };
    let err = copy_in_over(&connection(&svc), &req, &mut &tar[..], IDLE).unwrap_err();
    assert!(
        matches!(&err, ChannelError::Guest(m) if m.contains("outside")),
        "{err}"
    );
    assert!(!guest.path().parent().unwrap().join("escaped").exists());

    // A broken archive into a new name: nothing of it stays.
    let req = CopyInRequest {
        path: guest.path().join("new").to_str().unwrap().into(),
        name: Some("new".into()),
        ..CopyInRequest::default()
    };
    let err = copy_in_over(&connection(&svc), &req, &mut &[7u8; 1000][..], IDLE).unwrap_err();
    assert!(matches!(err, ChannelError::Guest(_)), "{err}");
    let left: Vec<_> = std::fs::read_dir(guest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["dst"], "half-written copy left behind");
}

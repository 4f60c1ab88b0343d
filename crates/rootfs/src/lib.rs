//! The rootfs builder: turns an OCI image into an ext4 root disk for a
//! microVM.
//!
//! It pulls (or imports) the manifest, config and layers, verifies every
//! blob, applies the layers in order into a staging tree (whiteouts, hard
//! links, symlinks, devices, FIFOs, ownership, modes, mtimes, xattrs),
//! refuses anything that would escape that tree, injects the guest init at
//! `/sbin/microagent-init`, records the image config at
//! `/etc/microagent/image-config.json`, and runs `mke2fs -t ext4 -d`.
//! Results are cached by the image's digest, so the second build of an
//! image is a lookup; [`clone_disk`] then gives each workspace its own copy.
//!
//! ```no_run
//! use vmkit_rootfs::{clone_disk, BuildOptions, ImageRef, RootfsBuilder};
//!
//! let image = ImageRef::parse("127.0.0.1:5000/agent:latest")?;
//! let built = RootfsBuilder::new("/var/lib/microagent").build(
//!     &image,
//!     &BuildOptions {
//!         init_binary: Some("/usr/lib/microagent/microagent-init".into()),
//!         ..Default::default()
//!     },
//! )?;
//! clone_disk(&built.path, "/var/lib/microagent/workspaces/w1/root.ext4".as_ref())?;
//! println!("cmd: {:?}", built.image_config.cmd);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Where things live under the state folder:
//!
//! - `images/blobs/sha256/<hex>`: verified blobs of pulled images;
//!   `images/refs/*.json`: one record per pulled reference and platform;
//!   `images/lock`: shared by pulls and builds, exclusive for `image rm`.
//! - `rootfs/<key>/{disk.ext4,meta.json}`: cached disks, keyed by image
//!   digest, platform, init binary digest and size option;
//!   `rootfs/tmp/`: builds in progress; `rootfs/file-digests/`: remembered
//!   digests of tarballs and init binaries.
//! - Layers are unpacked in `/dev/shm` when the content fits comfortably in
//!   memory (else in `rootfs/tmp/`), in a 0700 folder.
//!
//! Layers are treated as hostile: see the `apply` module for the rules,
//! [`Limits`] for the bounds. When not running as root, ownership, device
//! nodes and privileged xattrs are written into the ext4 with `debugfs`.
//!
//! [`RootfsBuilder::build`] is synchronous; from async code call it via
//! `spawn_blocking`. Registry pulls run on a private runtime thread.

mod apply;
pub mod auth;
mod builder;
mod error;
mod ext4;
mod oci;
mod reference;
mod registry;
mod registry_http;
mod sources;
mod store;
mod tar_meter;

pub use apply::Limits;
pub use builder::{
    BuildOptions, BuiltRootfs, PullPolicy, RootfsBuilder, IMAGE_CONFIG_PATH, INIT_PATH,
    MOUNT_POINTS,
};
pub use error::RootfsError;
pub use ext4::DEFAULT_HEADROOM_MIB;
pub use oci::{ImageConfig, Platform, MAX_JSON_BYTES};
pub use reference::{ImageRef, RegistryRef, DOCKER_HUB};
pub use store::{ImageStore, StoredImage};
pub use vmkit_disk_clone::{clone_disk, CloneError, CloneMethod};

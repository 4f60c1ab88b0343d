//! The build pipeline and its cache.
//!
//! `<state_dir>/rootfs/<key>/{disk.ext4,meta.json}` where the key hashes
//! the image's digest, the platform, the init binary's digest and the size
//! option. An entry is assembled in `<state_dir>/rootfs/tmp/build-*/` and
//! renamed into place as a whole directory, so a reader sees a complete
//! entry or none; a crashed build leaves only a temp folder, which later
//! builds sweep.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::apply::{Limits, Staging};
use crate::error::{IoContext, RootfsError};
use crate::oci::{ImageConfig, Platform};
use crate::reference::{ImageRef, RegistryRef};
use crate::sources::{self, Resolved};
use crate::store::{ImageStore, StoredImage};
use crate::{ext4, registry};

/// Where the guest init is injected.
pub const INIT_PATH: &str = "sbin/microagent-init";
/// Where the image config is recorded for the guest init.
pub const IMAGE_CONFIG_PATH: &str = "etc/microagent/image-config.json";
/// Folders the guest init mounts onto, created when the image lacks them.
pub const MOUNT_POINTS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
];

/// An image's `/etc/hosts` bigger than this is left for the guest init.
const MAX_HOSTS_BYTES: u64 = 1 << 20;
/// Bumped whenever the builder's output for the same input changes.
const CACHE_VERSION: &str = "microagent-rootfs-v1";
/// Temp folders older than this are leftovers of crashed builds.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// When to contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Use the local copy of a reference if there is one (docker's default).
    #[default]
    Missing,
    /// Always ask the registry what the reference points to now.
    Always,
    /// Never contact a registry.
    Never,
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Disk size; `None` sizes to the content plus headroom.
    pub size_mib: Option<u64>,
    /// Platform to pick from multi-platform images; `None` is this host's.
    pub platform: Option<Platform>,
    /// The guest init to inject at `/sbin/microagent-init`.
    pub init_binary: Option<PathBuf>,
    /// Show a progress bar while pulling (only when stdout is a terminal).
    pub progress: bool,
    /// When to contact the registry.
    pub pull: PullPolicy,
    /// Bounds on hostile input.
    pub limits: Limits,
    /// Where to unpack layers; `None` picks `/dev/shm` when the content
    /// fits comfortably in memory, else a folder next to the cache.
    pub staging_dir: Option<PathBuf>,
    /// Write `/etc/resolv.conf` and `/etc/hosts` as the guest init would
    /// for this network, so a guest booted on it finds them in place and
    /// its boot writes nothing to the root filesystem (under TCG the first
    /// write costs ~15 ms). The guest init still rewrites them when its
    /// network differs.
    pub guest_network: Option<vmkit_channel::GuestNetwork>,
    /// Most content staged in memory before the build moves to disk
    /// (default: the smaller of half the free tmpfs and a quarter of the
    /// available memory).
    pub memory_staging_limit: Option<u64>,
}

/// A built (or cached) root disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltRootfs {
    /// The cached ext4. Shared: give each workspace its own copy with
    /// [`crate::clone_disk`] rather than writing to it.
    pub path: PathBuf,
    /// The image's manifest digest (for `docker-archive:` the config digest,
    /// for `rootfs-tar:` the tarball's digest).
    pub manifest_digest: String,
    /// How the image wants its process run.
    pub image_config: ImageConfig,
    /// Whether this came from the cache.
    pub cached: bool,
    /// Disk size.
    pub size_mib: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheMeta {
    reference: String,
    manifest_digest: String,
    platform: String,
    image_config: ImageConfig,
    size_mib: u64,
    created_at: String,
}

/// Builds root disks from images, with a cache under the state folder.
#[derive(Debug, Clone)]
pub struct RootfsBuilder {
    state_dir: PathBuf,
    store: ImageStore,
}

enum Identified {
    Store(String),
    Layout {
        dir: PathBuf,
        manifest: crate::oci::Descriptor,
        bytes: Vec<u8>,
    },
    Ready(Resolved),
    Tar {
        file: PathBuf,
        digest: String,
    },
}

impl RootfsBuilder {
    /// A builder using `state_dir` (images under `images/`, disks under
    /// `rootfs/`).
    pub fn new(state_dir: impl Into<PathBuf>) -> RootfsBuilder {
        let state_dir = state_dir.into();
        RootfsBuilder {
            store: ImageStore::new(&state_dir),
            state_dir,
        }
    }

    /// The local image store.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Where cached disks live.
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("rootfs")
    }

    /// Pulls a registry image into the local store (always asks the
    /// registry).
    pub fn pull(
        &self,
        image: &RegistryRef,
        platform: Option<&Platform>,
        progress: bool,
    ) -> Result<StoredImage, RootfsError> {
        self.secure()?;
        let platform = platform.cloned().unwrap_or_else(Platform::host);
        let pulled = registry::pull(&self.store, image, &platform, &Limits::default(), progress);
        self.secure()?;
        pulled
    }

    /// Builds (or finds in the cache) the ext4 for `image`.
    pub fn build(&self, image: &ImageRef, opts: &BuildOptions) -> Result<BuiltRootfs, RootfsError> {
        self.secure()?;
        let built = self.build_secured(image, opts);
        self.secure()?;
        built
    }

    /// Keeps the caches private (other users could read an image's baked-in
    /// secrets from them): the state folder, `images/` and `rootfs/` must be
    /// the user's own and writable by no one else, and everything in them
    /// 0700/0600, whatever an older version left.
    fn secure(&self) -> Result<(), RootfsError> {
        let check = |dir: &Path, follow: bool| {
            vmkit_state::ensure_private_dir(dir, follow)
                .ctx(|| format!("securing {}", dir.display()))
        };
        check(&self.state_dir, true)?;
        for dir in [self.store.root().to_path_buf(), self.cache_dir()] {
            check(&dir, false)?;
            // `tmp` holds staging trees, whose modes are the image's.
            vmkit_state::tighten_tree(&dir, &["tmp"])
                .ctx(|| format!("tightening {}", dir.display()))?;
        }
        Ok(())
    }

    fn build_secured(
        &self,
        image: &ImageRef,
        opts: &BuildOptions,
    ) -> Result<BuiltRootfs, RootfsError> {
        let started = Instant::now();
        let platform = opts.platform.clone().unwrap_or_else(Platform::host);
        // Keeps `image rm` from deleting blobs this build is about to read.
        let _lock = match image {
            ImageRef::Registry(_) => Some(self.store.lock(false)?),
            _ => None,
        };
        let identified = self.identify(image, &platform, opts)?;
        let digest = match &identified {
            Identified::Store(d) => d.clone(),
            Identified::Layout { manifest, .. } => manifest.digest.clone(),
            Identified::Ready(r) => r.digest.clone(),
            Identified::Tar { digest, .. } => digest.clone(),
        };
        let init_digest = match &opts.init_binary {
            Some(p) => self.file_digest(p)?,
            None => "-".into(),
        };
        let kind = match image {
            ImageRef::Registry(_) | ImageRef::OciLayout { .. } => "manifest",
            ImageRef::DockerArchive { .. } => "docker-archive",
            ImageRef::RootfsTar { .. } => "rootfs-tar",
        };
        let size = opts.size_mib.map_or("auto".to_string(), |s| s.to_string());
        let mut key_text =
            format!("{CACHE_VERSION}\n{kind}\n{digest}\n{platform}\n{init_digest}\n{size}\n");
        if let Some(net) = &opts.guest_network {
            key_text.push_str(&serde_json::to_string(net).unwrap_or_default());
            key_text.push('\n');
        }
        let key = hex::encode(Sha256::digest(key_text));
        let entry = self.cache_dir().join(&key[..40]);
        if let Some(hit) = read_entry(&entry)? {
            tracing::info!(image = %image, elapsed = ?started.elapsed(), "rootfs cache hit");
            return Ok(hit);
        }

        let resolved = match identified {
            Identified::Store(d) => sources::from_store(&self.store, &d, &opts.limits)?,
            Identified::Layout {
                dir,
                manifest,
                bytes,
            } => sources::from_layout(&dir, &manifest, &bytes, &opts.limits)?,
            Identified::Ready(r) => r,
            Identified::Tar { file, digest } => sources::from_rootfs_tar(&file, digest),
        };
        self.build_entry(image, &platform, resolved, opts, &entry)?;
        let built = read_entry(&entry)?.ok_or_else(|| {
            RootfsError::io(
                format!("reading {}", entry.display()),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        tracing::info!(image = %image, elapsed = ?started.elapsed(), "rootfs built");
        Ok(BuiltRootfs {
            cached: false,
            ..built
        })
    }

    fn identify(
        &self,
        image: &ImageRef,
        platform: &Platform,
        opts: &BuildOptions,
    ) -> Result<Identified, RootfsError> {
        Ok(match image {
            ImageRef::Registry(r) => {
                let local = match opts.pull {
                    PullPolicy::Always => None,
                    _ => self.store.get(r, &platform.to_string()),
                };
                let record = match (local, opts.pull) {
                    (Some(rec), _) => rec,
                    (None, PullPolicy::Never) => {
                        return Err(RootfsError::NotFound(format!(
                            "image {r} is not in the local store (pull it, or build without --pull never)"
                        )))
                    }
                    (None, _) => {
                        registry::pull(&self.store, r, platform, &opts.limits, opts.progress)?
                    }
                };
                Identified::Store(record.manifest_digest)
            }
            ImageRef::OciLayout { dir, tag } => {
                let (manifest, bytes) = sources::layout_manifest(dir, tag.as_deref(), platform)?;
                Identified::Layout {
                    dir: dir.clone(),
                    manifest,
                    bytes,
                }
            }
            ImageRef::DockerArchive { file } => {
                Identified::Ready(sources::from_docker_archive(file, &opts.limits)?)
            }
            ImageRef::RootfsTar { file } => Identified::Tar {
                file: file.clone(),
                digest: self.file_digest(file)?,
            },
        })
    }

    /// A file's digest (tarballs, the init binary), remembered by (device,
    /// inode, size, mtime) so an unchanged file is not hashed again.
    fn file_digest(&self, file: &Path) -> Result<String, RootfsError> {
        let m = fs::metadata(file).ctx(|| format!("inspecting {}", file.display()))?;
        let stamp = format!(
            "{} {} {} {}.{}",
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        );
        let canon = fs::canonicalize(file).ctx(|| format!("resolving {}", file.display()))?;
        let memo_dir = self.cache_dir().join("file-digests");
        let memo =
            memo_dir.join(&hex::encode(Sha256::digest(canon.as_os_str().as_encoded_bytes()))[..32]);
        if let Ok(s) = fs::read_to_string(&memo) {
            if let Some((st, d)) = s.rsplit_once('\n') {
                if st == stamp && crate::reference::validate_digest(d).is_ok() {
                    return Ok(d.to_string());
                }
            }
        }
        let digest = sources::hash_file(file)?;
        if fs::create_dir_all(&memo_dir).is_ok() {
            if let Ok(mut t) = tempfile::NamedTempFile::new_in(&memo_dir) {
                use std::io::Write;
                if t.write_all(format!("{stamp}\n{digest}").as_bytes()).is_ok() {
                    let _ = t.persist(&memo);
                }
            }
        }
        Ok(digest)
    }

    fn build_entry(
        &self,
        image: &ImageRef,
        platform: &Platform,
        resolved: Resolved,
        opts: &BuildOptions,
        entry: &Path,
    ) -> Result<(), RootfsError> {
        let tmp_root = self.cache_dir().join("tmp");
        fs::create_dir_all(&tmp_root).ctx(|| format!("creating {}", tmp_root.display()))?;
        sweep_stale(&tmp_root, "");
        sweep_stale(Path::new("/dev/shm"), "microagent-stage-");
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&tmp_root)
            .ctx(|| format!("creating a folder in {}", tmp_root.display()))?;

        // Stage in memory (tmpfs) when the content surely fits: writing and
        // deleting thousands of files there costs no journal traffic. A
        // full tmpfs falls back to staging next to the cache.
        let estimate = staging_estimate(&resolved);
        let memory = match &opts.staging_dir {
            Some(dir) => Some((dir.clone(), None)),
            None => tmpfs_with_room(estimate).map(|(dir, budget)| {
                let budget = opts.memory_staging_limit.map_or(budget, |l| l.min(budget));
                (dir, Some(budget))
            }),
        };
        let (stage_holder, mut staging) = match memory {
            Some((parent, budget)) => match self.stage(&parent, &resolved, opts, budget) {
                // More content than memory can spare (or a compression
                // bomb): start over on disk, where the normal bounds apply.
                Err(e) if budget.is_some() && is_no_space(&e) => {
                    tracing::info!("content outgrew tmpfs staging; staging on disk");
                    self.stage(work.path(), &resolved, opts, None)?
                }
                other => other?,
            },
            None => self.stage(work.path(), &resolved, opts, None)?,
        };
        let stage = staging.root().to_path_buf();

        for (dir, mode) in MOUNT_POINTS {
            staging.ensure_dir(dir, *mode)?;
        }
        let config_json = serde_json::to_vec_pretty(&resolved.config)
            .map_err(|e| RootfsError::io("encoding image config", e.into()))?;
        staging.inject_file(
            IMAGE_CONFIG_PATH,
            &mut config_json.as_slice(),
            config_json.len() as u64,
            0o644,
        )?;
        if let Some(net) = &opts.guest_network {
            let mut files = vec![("etc/resolv.conf", net.resolv_conf())];
            // An odd /etc/hosts (a symlink, a huge file) is the guest init's.
            if let Some(image_hosts) = staging.read_text("etc/hosts", MAX_HOSTS_BYTES)? {
                files.push(("etc/hosts", net.hosts_file(&image_hosts)));
            }
            for (path, text) in files {
                staging.inject_file(path, &mut text.as_bytes(), text.len() as u64, 0o644)?;
            }
        }
        if let Some(init) = &opts.init_binary {
            let mut f =
                File::open(init).ctx(|| format!("opening init binary {}", init.display()))?;
            let len = f
                .metadata()
                .ctx(|| format!("inspecting {}", init.display()))?
                .len();
            staging.inject_file(INIT_PATH, &mut f, len, 0o755)?;
        }
        staging.finish()?;

        let needed = ext4::min_size_mib(staging.content_bytes, staging.inodes);
        let size_mib = match opts.size_mib {
            Some(s) if s < needed / 2 => {
                return Err(RootfsError::TooSmall {
                    requested: s,
                    needed,
                })
            }
            Some(s) => s,
            None => ext4::auto_size_mib(staging.content_bytes, staging.inodes),
        };
        let out_dir = work.path().join("entry");
        fs::create_dir(&out_dir).ctx(|| format!("creating {}", out_dir.display()))?;
        let disk = out_dir.join("disk.ext4");
        let t = Instant::now();
        ext4::mkfs(
            &stage,
            &disk,
            size_mib,
            staging.inodes,
            opts.size_mib,
            needed,
        )?;
        ext4::apply_fixups(&disk, &staging.fixups, work.path())?;
        let t_rm = Instant::now();
        drop(stage_holder);
        tracing::debug!(elapsed = ?t_rm.elapsed(), "staging removed");
        tracing::debug!(elapsed = ?t.elapsed(), size_mib, fixups = staging.fixups.len(), "ext4 made");

        let meta = CacheMeta {
            reference: image.to_string(),
            manifest_digest: resolved.digest.clone(),
            platform: platform.to_string(),
            image_config: resolved.config.clone(),
            size_mib,
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        let meta_path = out_dir.join("meta.json");
        fs::write(
            &meta_path,
            serde_json::to_vec_pretty(&meta)
                .map_err(|e| RootfsError::io("encoding meta.json", e.into()))?,
        )
        .ctx(|| format!("writing {}", meta_path.display()))?;
        // Durable before visible: after a crash the entry is whole or absent.
        for p in [&disk, &meta_path] {
            File::open(p)
                .and_then(|f| f.sync_all())
                .ctx(|| format!("syncing {}", p.display()))?;
        }
        File::open(&out_dir)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("syncing {}", out_dir.display()))?;
        if let Err(e) = fs::rename(&out_dir, entry) {
            match read_entry(entry) {
                // Another build of the same key won the race; its entry is as good.
                Ok(Some(_)) => {}
                // A damaged entry (never trusted): move it out of the way.
                _ if entry.exists() => {
                    let aside = work.path().join("damaged");
                    fs::rename(entry, &aside)
                        .ctx(|| format!("moving aside {}", entry.display()))?;
                    fs::rename(&out_dir, entry).ctx(|| format!("storing {}", entry.display()))?;
                }
                _ => return Err(RootfsError::io(format!("storing {}", entry.display()), e)),
            }
        }
        let _ = File::open(self.cache_dir()).and_then(|f| f.sync_all());
        drop(work);
        Ok(())
    }

    /// Applies every layer into a fresh staging folder under `parent`.
    fn stage(
        &self,
        parent: &Path,
        resolved: &Resolved,
        opts: &BuildOptions,
        budget: Option<u64>,
    ) -> Result<(tempfile::TempDir, Staging), RootfsError> {
        // 0700 (tempfile's default): setuid files and device nodes in the
        // staging tree are unreachable for other users.
        let holder = tempfile::Builder::new()
            .prefix("microagent-stage-")
            .tempdir_in(parent)
            .ctx(|| format!("creating a folder in {}", parent.display()))?;
        let stage = holder.path().join("root");
        fs::create_dir(&stage).ctx(|| format!("creating {}", stage.display()))?;
        fs::set_permissions(&stage, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", stage.display()))?;
        let privileged = nix::unistd::geteuid().is_root();
        let mut staging = Staging::new(stage, privileged, opts.limits.clone());
        staging.memory_budget = budget;
        let t = Instant::now();
        for (i, layer) in resolved.layers.iter().enumerate() {
            sources::apply(&mut staging, layer, i)?;
        }
        tracing::debug!(elapsed = ?t.elapsed(), layers = resolved.layers.len(), staging = %parent.display(), "layers applied");
        Ok((holder, staging))
    }

    /// Removes a pulled image (every platform), the blobs only it used,
    /// and the disks built from it unless another reference still names
    /// the same manifest: all under the store's exclusive lock, so a pull
    /// or build running at the same time waits rather than racing it.
    /// Returns the removed records.
    pub fn remove_image(&self, reference: &RegistryRef) -> Result<Vec<StoredImage>, RootfsError> {
        let _lock = self.store.lock(true)?;
        let removed = self.store.remove_locked(reference)?;
        let live = self.store.list()?;
        for img in &removed {
            if !live
                .iter()
                .any(|l| l.manifest_digest == img.manifest_digest)
            {
                self.forget_digest(&img.manifest_digest)?;
            }
        }
        Ok(removed)
    }

    /// Removes cached disks built from `manifest_digest`.
    pub fn forget_digest(&self, manifest_digest: &str) -> Result<usize, RootfsError> {
        let mut n = 0;
        let Ok(rd) = fs::read_dir(self.cache_dir()) else {
            return Ok(0);
        };
        for e in rd.flatten() {
            let meta = e.path().join("meta.json");
            let Ok(bytes) = fs::read(&meta) else { continue };
            let Ok(m) = serde_json::from_slice::<CacheMeta>(&bytes) else {
                continue;
            };
            if m.manifest_digest == manifest_digest {
                // Unpublish first (rename away), then delete.
                let doomed = self
                    .cache_dir()
                    .join("tmp")
                    .join(format!("rm-{}", e.file_name().to_string_lossy()));
                let _ = fs::create_dir_all(self.cache_dir().join("tmp"));
                fs::rename(e.path(), &doomed).ctx(|| format!("removing {}", e.path().display()))?;
                fs::remove_dir_all(&doomed).ctx(|| format!("removing {}", doomed.display()))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

fn read_entry(entry: &Path) -> Result<Option<BuiltRootfs>, RootfsError> {
    let meta_path = entry.join("meta.json");
    let bytes = match fs::read(&meta_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RootfsError::io(
                format!("reading {}", meta_path.display()),
                e,
            ))
        }
    };
    let disk = entry.join("disk.ext4");
    let Ok(meta) = serde_json::from_slice::<CacheMeta>(&bytes) else {
        return Ok(None);
    };
    if !disk.is_file() {
        return Ok(None);
    }
    Ok(Some(BuiltRootfs {
        path: disk,
        manifest_digest: meta.manifest_digest,
        image_config: meta.image_config,
        cached: true,
        size_mib: meta.size_mib,
    }))
}

fn sweep_stale(tmp_root: &Path, prefix: &str) {
    let Ok(rd) = fs::read_dir(tmp_root) else {
        return;
    };
    let now = SystemTime::now();
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_AFTER);
        if old {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A generous guess of the unpacked size: compressed layers grow about 3x.
fn staging_estimate(resolved: &Resolved) -> u64 {
    resolved
        .layers
        .iter()
        .map(|l| {
            let len = match l.range {
                Some((_, len)) => len,
                None => fs::metadata(&l.file)
                    .map(|m| m.len())
                    .unwrap_or(u64::MAX / 64),
            };
            len.saturating_mul(4)
        })
        .fold(0u64, u64::saturating_add)
}

/// `/dev/shm` if it is a tmpfs we can write with room for `estimate`
/// twice over, and the machine has memory to spare for it; with the most
/// content staging there may hold before moving to disk.
fn tmpfs_with_room(estimate: u64) -> Option<(PathBuf, u64)> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let shm = Path::new("/dev/shm");
    let fs = nix::sys::statfs::statfs(shm).ok()?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    if fs.filesystem_type().0 as i64 != TMPFS_MAGIC {
        return None;
    }
    let vfs = nix::sys::statvfs::statvfs(shm).ok()?;
    #[allow(clippy::unnecessary_cast)] // fsblkcnt_t's width differs between libcs
    let free = (vfs.blocks_available() as u64).saturating_mul(vfs.fragment_size() as u64);
    let available = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })?;
    let room = estimate.saturating_mul(2).saturating_add(256 << 20);
    let budget = (free / 2).min(available / 4);
    (free >= room
        && budget >= estimate
        && nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK).is_ok())
    .then(|| (shm.to_path_buf(), budget))
}

fn is_no_space(e: &RootfsError) -> bool {
    matches!(e, RootfsError::Io { source, .. } if source.raw_os_error() == Some(28))
}

//! The kernel store: `<state_dir>/kernels/<arch>/{vmlinux,manifest.json}`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::fsutil::{self, sync_dir};
use crate::manifest::{KernelSource, Manifest, MANIFEST_SCHEMA};
use crate::KernelError;

/// Kernels are tens of megabytes; refuse to copy anything absurdly large.
const MAX_VMLINUX_BYTES: u64 = 1 << 30;

/// The guest architecture this host's VMs run, as used in store paths.
pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

/// The installed kernels under one state folder.
#[derive(Debug, Clone)]
pub struct KernelStore {
    root: PathBuf,
    arch: String,
}

/// An installed kernel: its `vmlinux` and the manifest describing it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledKernel {
    vmlinux: PathBuf,
    manifest: Manifest,
}

impl InstalledKernel {
    /// The kernel image to hand to the VMM.
    pub fn vmlinux_path(&self) -> &Path {
        &self.vmlinux
    }

    /// What is recorded about it.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether this is a build of the current fragment (user-installed
    /// kernels are never "current": they are whatever the user chose).
    pub fn is_current_build(&self) -> bool {
        self.manifest.config_fragment_sha256.as_deref()
            == crate::recipe::recipe(&self.manifest.arch)
                .map(|r| crate::fragment::fragment_sha256(r.fragment))
                .as_deref()
    }
}

/// The result of [`KernelStore::check`], also what `kernel check --json` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// True when a kernel is installed and its sha256 matches the manifest.
    pub ok: bool,
    /// Architecture checked.
    pub arch: String,
    /// The kernel image path (whether or not it exists).
    pub vmlinux: PathBuf,
    /// The manifest, when one could be read.
    pub manifest: Option<Manifest>,
    /// The sha256 computed from the file on disk, when it could be read.
    pub actual_sha256: Option<String>,
    /// Whether a built kernel matches the current config fragment
    /// (`None` for kernels installed from a file or when nothing is installed).
    pub current_build: Option<bool>,
    /// What is wrong, in words, when `ok` is false.
    pub problem: Option<String>,
}

/// Exclusive lock on the store, held while installing or building so two
/// processes never interleave their writes. Released on drop.
pub(crate) struct StoreLock {
    _lock: nix::fcntl::Flock<File>,
    store: PathBuf,
}

impl Drop for StoreLock {
    /// What was installed under the lock is made private before others may go on.
    fn drop(&mut self) {
        if let Err(e) = vmkit_state::tighten_tree(&self.store, &[".build-", "build"]) {
            tracing::warn!("tightening {}: {e}", self.store.display());
        }
    }
}

impl KernelStore {
    /// The store under `state_dir` for this host's architecture.
    pub fn new(state_dir: impl AsRef<Path>) -> Self {
        Self::with_arch(state_dir, host_arch())
    }

    /// The store under `state_dir` for a given guest architecture.
    pub fn with_arch(state_dir: impl AsRef<Path>, arch: &str) -> Self {
        KernelStore {
            root: state_dir.as_ref().join("kernels"),
            arch: arch.to_string(),
        }
    }

    /// `<state_dir>/kernels`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The guest architecture of this store.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// `<state_dir>/kernels/<arch>`.
    pub fn arch_dir(&self) -> PathBuf {
        self.root.join(&self.arch)
    }

    /// Where the installed kernel image lives.
    pub fn vmlinux_path(&self) -> PathBuf {
        self.arch_dir().join("vmlinux")
    }

    /// Where the installed kernel's manifest lives.
    pub fn manifest_path(&self) -> PathBuf {
        self.arch_dir().join("manifest.json")
    }

    /// The log of the last build.
    pub fn build_log_path(&self) -> PathBuf {
        self.root.join("build.log")
    }

    /// The installed kernel, `None` when there is none. A kernel image with
    /// no readable manifest is an error (it was not installed by us, or an
    /// install was interrupted): reinstall or rebuild with `--force`.
    pub fn installed(&self) -> Result<Option<InstalledKernel>, KernelError> {
        let vmlinux = self.vmlinux_path();
        let manifest_path = self.manifest_path();
        let has_image = fs::symlink_metadata(&vmlinux).is_ok();
        let has_manifest = fs::symlink_metadata(&manifest_path).is_ok();
        if !has_image && !has_manifest {
            return Ok(None);
        }
        if !has_image {
            return Err(KernelError::BadManifest {
                path: manifest_path,
                reason: format!(
                    "{} is missing; run `microagent kernel build --force`",
                    vmlinux.display()
                ),
            });
        }
        let manifest = Manifest::load(&manifest_path).map_err(|e| match e {
            KernelError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                KernelError::BadManifest {
                    path: manifest_path.clone(),
                    reason: format!(
                        "missing next to {}; run `microagent kernel build --force` or `kernel install --from`",
                        vmlinux.display()
                    ),
                }
            }
            other => other,
        })?;
        Ok(Some(InstalledKernel { vmlinux, manifest }))
    }

    /// Every installed kernel, one per architecture folder.
    pub fn list(&self) -> Result<Vec<InstalledKernel>, KernelError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KernelError::io("listing", &self.root, e)),
        };
        let mut arches: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect();
        arches.sort();
        let mut out = Vec::new();
        for arch in arches {
            let store = KernelStore {
                root: self.root.clone(),
                arch,
            };
            if let Some(k) = store.installed()? {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Verifies the installed kernel against its manifest's sha256.
    pub fn check(&self) -> Result<CheckReport, KernelError> {
        let mut report = CheckReport {
            ok: false,
            arch: self.arch.clone(),
            vmlinux: self.vmlinux_path(),
            manifest: None,
            actual_sha256: None,
            current_build: None,
            problem: None,
        };
        let installed = match self.installed() {
            Ok(Some(k)) => k,
            Ok(None) => {
                report.problem = Some(format!(
                    "no kernel is installed for {}; run `microagent kernel build`",
                    self.arch
                ));
                return Ok(report);
            }
            Err(e) => {
                report.problem = Some(e.to_string());
                return Ok(report);
            }
        };
        report.current_build = installed
            .manifest
            .config_fragment_sha256
            .is_some()
            .then(|| installed.is_current_build());
        match fsutil::sha256_file(&installed.vmlinux) {
            Ok((sha, size)) => {
                if sha != installed.manifest.sha256 {
                    report.problem = Some(format!(
                        "{} has sha256 {sha} but the manifest records {}: the file was modified or the install was interrupted; reinstall it",
                        installed.vmlinux.display(),
                        installed.manifest.sha256
                    ));
                } else if size != installed.manifest.size {
                    report.problem = Some("size differs from the manifest".into());
                } else {
                    report.ok = true;
                }
                report.actual_sha256 = Some(sha);
            }
            Err(e) => report.problem = Some(e.to_string()),
        }
        report.manifest = Some(installed.manifest);
        Ok(report)
    }

    /// Installs a user's `vmlinux`: it must be an x86_64 ELF kernel with a
    /// PVH entry note. Missing, unreadable or wrong files fail with a clear
    /// error and leave the installed kernel untouched.
    pub fn install_from(&self, path: &Path) -> Result<InstalledKernel, KernelError> {
        let not_kernel = |reason: String| KernelError::NotAKernel {
            path: path.to_path_buf(),
            reason,
        };
        let recipe = crate::recipe::recipe(&self.arch)
            .ok_or_else(|| KernelError::UnsupportedArch(self.arch.clone()))?;
        let meta = fs::metadata(path).map_err(|e| {
            not_kernel(match e.kind() {
                std::io::ErrorKind::NotFound => "it does not exist".into(),
                std::io::ErrorKind::PermissionDenied => format!("it cannot be read: {e}"),
                _ => format!("it cannot be examined: {e}"),
            })
        })?;
        if meta.is_dir() {
            return Err(not_kernel(
                "it is a directory, not a kernel image file".into(),
            ));
        }
        if !meta.is_file() {
            return Err(not_kernel("it is not a regular file".into()));
        }
        if meta.len() > MAX_VMLINUX_BYTES {
            return Err(not_kernel(format!(
                "it is {} bytes, more than the {MAX_VMLINUX_BYTES} bytes a kernel image can plausibly be",
                meta.len()
            )));
        }
        let file = File::open(path).map_err(|e| not_kernel(format!("it cannot be read: {e}")))?;
        (recipe.check)(&file, path).map_err(not_kernel)?;
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let _lock = self.lock()?;
        self.install_image(
            file,
            path,
            KernelSource::File {
                path: canonical.display().to_string(),
            },
            None,
            None,
        )
    }

    /// Copies `image` into place with its manifest. The caller holds the
    /// lock. The copy is hashed and scanned for the version banner as it
    /// streams, so what is recorded is what was written.
    pub(crate) fn install_image(
        &self,
        image: File,
        image_path: &Path,
        source: KernelSource,
        config_fragment_sha256: Option<String>,
        build_seconds: Option<f64>,
    ) -> Result<InstalledKernel, KernelError> {
        let dir = self.arch_dir();
        fs::create_dir_all(&dir).map_err(|e| KernelError::io("creating", &dir, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".vmlinux-")
            .tempfile_in(&dir)
            .map_err(|e| KernelError::io("creating a temp file in", &dir, e))?;
        let mut hasher = Sha256::new();
        let mut banner = BannerScanner::default();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        // `take` bounds the copy even if the file grows while we read it.
        let mut reader = image.take(MAX_VMLINUX_BYTES + 1);
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(KernelError::NotAKernel {
                        path: image_path.to_path_buf(),
                        reason: format!("reading it failed: {e}"),
                    })
                }
            };
            size += n as u64;
            if size > MAX_VMLINUX_BYTES {
                return Err(KernelError::NotAKernel {
                    path: image_path.to_path_buf(),
                    reason: "it grew past the size limit while being copied".into(),
                });
            }
            hasher.update(&buf[..n]);
            banner.feed(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| KernelError::io("writing", tmp.path(), e))?;
        }
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| KernelError::io("writing", tmp.path(), e))?;
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA,
            arch: self.arch.clone(),
            version: banner.version(),
            sha256: hex::encode(hasher.finalize()),
            size,
            config_fragment_sha256,
            source,
            installed_at: chrono::Utc::now(),
            build_seconds,
        };
        let vmlinux = self.vmlinux_path();
        // Image first, then manifest: an interruption in between leaves a
        // mismatch that `check` reports, never a manifest describing a file
        // that is not there yet.
        tmp.persist(&vmlinux)
            .map_err(|e| KernelError::io("renaming into place", &vmlinux, e.error))?;
        sync_dir(&dir);
        manifest.store(&self.manifest_path())?;
        Ok(InstalledKernel { vmlinux, manifest })
    }

    /// Takes the store's exclusive lock, waiting for another installer.
    pub(crate) fn lock(&self) -> Result<StoreLock, KernelError> {
        self.secure()?;
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| KernelError::io("opening", &path, e))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| KernelError::io("locking", &path, e.into()))?;
        Ok(StoreLock {
            _lock: lock,
            store: self.root.clone(),
        })
    }

    /// Keeps `kernels/` private: the user's own, writable by no one else,
    /// everything in it 0700/0600 (build trees are tightened, not entered).
    fn secure(&self) -> Result<(), KernelError> {
        if let Some(state) = self.root.parent() {
            vmkit_state::ensure_private_dir(state, true)
                .map_err(|e| KernelError::io("securing", state, e))?;
        }
        vmkit_state::ensure_private_dir(&self.root, false)
            .map_err(|e| KernelError::io("securing", &self.root, e))?;
        vmkit_state::tighten_tree(&self.root, &[".build-", "build"])
            .map_err(|e| KernelError::io("tightening", &self.root, e))
    }
}

/// Finds `Linux version <release> ` (the kernel's `linux_banner`) in a byte
/// stream fed in arbitrary chunks.
#[derive(Default)]
struct BannerScanner {
    tail: Vec<u8>,
    found: Option<String>,
}

impl BannerScanner {
    const NEEDLE: &'static [u8] = b"Linux version ";
    /// Releases are short; this also bounds what we keep between chunks.
    const MAX_RELEASE: usize = 64;

    fn feed(&mut self, chunk: &[u8]) {
        if self.found.is_some() {
            return;
        }
        let keep = Self::NEEDLE.len() + Self::MAX_RELEASE;
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = find(&window[start..], Self::NEEDLE) {
            let at = start + pos + Self::NEEDLE.len();
            let rest = &window[at..window.len().min(at + Self::MAX_RELEASE + 1)];
            match rest.iter().position(|&b| b == b' ') {
                Some(end)
                    if end > 0
                        && rest[0].is_ascii_digit()
                        && rest[..end].iter().all(|b| b.is_ascii_graphic()) =>
                {
                    self.found = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
                    return;
                }
                // Cut off at the chunk end: retry with the next chunk.
                None if window.len() - at <= Self::MAX_RELEASE => break,
                _ => start = at,
            }
        }
        let from = window.len().saturating_sub(keep);
        self.tail = window[from..].to_vec();
    }

    fn version(&self) -> Option<String> {
        self.found.clone()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_found_across_chunk_boundaries() {
        let data = b"xxxxLinux version %s\0junk Linux version 6.1.192-microagent (x@y) #1";
        for split in 0..data.len() {
            let mut s = BannerScanner::default();
            s.feed(&data[..split]);
            s.feed(&data[split..]);
            assert_eq!(
                s.version().as_deref(),
                Some("6.1.192-microagent"),
                "{split}"
            );
        }
        let mut s = BannerScanner::default();
        s.feed(b"no banner here");
        assert_eq!(s.version(), None);
    }

    fn fake_kernel(dir: &Path, name: &str) -> PathBuf {
        let mut bytes = crate::elf::tests::fake_vmlinux(62, &crate::elf::tests::pvh_note());
        bytes.extend_from_slice(b"\0Linux version 6.1.999-test (t@t) #1\0");
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn installs_records_and_checks_a_kernel() {
        let state = tempfile::tempdir().unwrap();
        let store = KernelStore::with_arch(state.path(), "x86_64");
        assert_eq!(store.installed().unwrap(), None);
        assert!(!store.check().unwrap().ok);
        let src = fake_kernel(state.path(), "my-vmlinux");
        let k = store.install_from(&src).unwrap();
        assert_eq!(
            k.vmlinux_path(),
            state.path().join("kernels/x86_64/vmlinux")
        );
        assert_eq!(k.manifest().version.as_deref(), Some("6.1.999-test"));
        assert!(matches!(k.manifest().source, KernelSource::File { .. }));
        assert_eq!(fs::read(k.vmlinux_path()).unwrap(), fs::read(&src).unwrap());
        assert_eq!(store.installed().unwrap().as_ref(), Some(&k));
        let report = store.check().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.current_build, None);
        assert_eq!(store.list().unwrap(), vec![k]);
        // No temp files left next to the kernel.
        let mut names: Vec<_> = fs::read_dir(store.arch_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["manifest.json", "vmlinux"]);
    }

    #[test]
    fn check_detects_a_tampered_kernel() {
        let state = tempfile::tempdir().unwrap();
        let store = KernelStore::with_arch(state.path(), "x86_64");
        store.install_from(&fake_kernel(state.path(), "k")).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.vmlinux_path())
            .unwrap();
        f.write_all(b"evil").unwrap();
        let report = store.check().unwrap();
        assert!(!report.ok);
        assert!(
            report.problem.as_deref().unwrap().contains("modified"),
            "{report:?}"
        );
        assert_ne!(report.actual_sha256, report.manifest.map(|m| m.sha256));
    }

    #[test]
    fn bad_inputs_fail_clearly_and_leave_the_installed_kernel_alone() {
        let state = tempfile::tempdir().unwrap();
        let store = KernelStore::with_arch(state.path(), "x86_64");
        let good = store
            .install_from(&fake_kernel(state.path(), "good"))
            .unwrap();
        let before_image = fs::read(store.vmlinux_path()).unwrap();
        let before_manifest = fs::read(store.manifest_path()).unwrap();

        let text = state.path().join("notes.txt");
        fs::write(&text, "just some text, not a kernel at all\n".repeat(10)).unwrap();
        let missing = state.path().join("does-not-exist");
        // CI runs as root, where mode 000 does not stop reads; a directory
        // and a path through a regular file cannot be opened as kernels.
        let dir = state.path().join("a-directory");
        fs::create_dir(&dir).unwrap();
        let through_file = text.join("vmlinux");
        let empty = state.path().join("empty");
        fs::write(&empty, b"").unwrap();

        for (path, expect) in [
            (&text, "not an ELF file"),
            (&missing, "does not exist"),
            (&dir, "is a directory"),
            (&through_file, "cannot be examined"),
            (&empty, "too short"),
            (&PathBuf::from("/dev/null"), "not a regular file"),
        ] {
            let err = store.install_from(path).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, KernelError::NotAKernel { .. }), "{msg}");
            assert!(msg.contains(expect), "{path:?}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert_eq!(fs::read(store.vmlinux_path()).unwrap(), before_image);
            assert_eq!(fs::read(store.manifest_path()).unwrap(), before_manifest);
        }
        assert_eq!(store.installed().unwrap(), Some(good));
        assert_eq!(fs::read_dir(store.arch_dir()).unwrap().count(), 2);
    }

    #[test]
    fn image_without_manifest_is_an_error_not_a_kernel() {
        let state = tempfile::tempdir().unwrap();
        let store = KernelStore::with_arch(state.path(), "x86_64");
        fs::create_dir_all(store.arch_dir()).unwrap();
        fs::write(store.vmlinux_path(), b"x").unwrap();
        let err = store.installed().unwrap_err().to_string();
        assert!(err.contains("kernel build --force"), "{err}");
    }
}

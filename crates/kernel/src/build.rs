//! Building the guest kernel from source.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fragment;
use crate::manifest::KernelSource;
use crate::store::{InstalledKernel, KernelStore};
use crate::KernelError;

/// Debian's kernel source package, the default source.
pub const DEBIAN_PACKAGE: &str = "linux-source-6.1";
/// Where that package puts its tarball.
pub const DEBIAN_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Roughly how many build steps (`CC`, `AS`, `LD`, ... lines) a build of the
/// fragment prints; only used to draw the progress bar.
const ESTIMATED_STEPS: u64 = 1730;
/// CPU-seconds a build takes on a current x86 core (measured: about 4.5
/// minutes on 2 cores); divided by the job count for the estimate.
const ESTIMATED_CPU_SECONDS: u64 = 540;

/// Where the kernel source comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BuildSource {
    /// Debian's `linux-source-6.1` tarball in /usr/src.
    #[default]
    Debian,
    /// A kernel source tarball (`.tar`, `.tar.xz`, `.tar.gz`, ...) or an
    /// unpacked, clean source tree (built out of tree, left untouched).
    Path(PathBuf),
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The kernel source.
    pub source: BuildSource,
    /// Rebuild even when an up-to-date kernel is installed.
    pub force: bool,
    /// Parallel make jobs (default: the number of CPUs).
    pub jobs: Option<usize>,
    /// Keep the build tree (`<state_dir>/kernels/.build-*`) for inspection.
    pub keep_build_dir: bool,
}

/// A step of the build, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildPhase {
    /// Checking tools and the source.
    Preparing,
    /// Unpacking the source tarball.
    Unpacking,
    /// `make allnoconfig` with the fragment, then checking the result.
    Configuring,
    /// `make vmlinux`.
    Compiling,
    /// Copying the image into the store and writing the manifest.
    Installing,
}

impl fmt::Display for BuildPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildPhase::Preparing => "preparing",
            BuildPhase::Unpacking => "unpacking source",
            BuildPhase::Configuring => "configuring",
            BuildPhase::Compiling => "compiling",
            BuildPhase::Installing => "installing",
        })
    }
}

/// What the build reports while it runs.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    /// A build is starting (not sent when the kernel is up to date).
    Started {
        /// Why: "no kernel is installed", "the config fragment changed", ...
        reason: String,
        /// What it builds from, in words.
        source: String,
        /// How long it usually takes on this host.
        estimate: Duration,
        /// The build log.
        log: PathBuf,
    },
    /// A new phase began.
    Phase(BuildPhase),
    /// One more compile step finished.
    Step {
        /// Steps done so far.
        done: u64,
        /// Rough total, for a bar; `done` may exceed it.
        estimated_total: u64,
        /// The step, e.g. `CC fs/ext4/inode.o`.
        what: String,
    },
    /// The installed kernel is already a build of this source and fragment.
    UpToDate,
    /// The build finished and the kernel is installed.
    Finished {
        /// Wall-clock build time.
        elapsed: Duration,
    },
}

impl fmt::Display for BuildEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildEvent::Started {
                reason,
                source,
                estimate,
                log,
            } => write!(
                f,
                "{reason}: building a guest kernel {source}; this usually takes about {} minutes here (log: {})",
                estimate.as_secs().div_ceil(60),
                log.display()
            ),
            BuildEvent::Phase(p) => write!(f, "kernel build: {p}"),
            BuildEvent::Step {
                done,
                estimated_total,
                what,
            } => write!(f, "kernel build: [{done}/~{estimated_total}] {what}"),
            BuildEvent::UpToDate => f.write_str("the installed kernel is up to date"),
            BuildEvent::Finished { elapsed } => {
                write!(f, "kernel built in {:.0} s", elapsed.as_secs_f64())
            }
        }
    }
}

/// How long a build usually takes with `jobs` parallel jobs.
pub fn estimated_build_time(jobs: usize) -> Duration {
    Duration::from_secs(ESTIMATED_CPU_SECONDS / jobs.clamp(1, 64) as u64)
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Makes sure a kernel is installed, building one from the default source
/// when there is none. What `run`, `create` and `start` call. `progress`
/// gets a [`BuildEvent::Started`] first that says what is happening and how
/// long it usually takes; a kernel that is already there (built or
/// user-installed, current or not) is returned as is.
pub fn ensure_installed(
    store: &KernelStore,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<InstalledKernel, KernelError> {
    if let Some(k) = store.installed()? {
        return Ok(k);
    }
    store.build(&BuildOptions::default(), progress)
}

/// The source after resolution: what to unpack or build from and what to
/// record.
struct ResolvedSource {
    kind: SourceKind,
    record: KernelSource,
    describe: String,
}

enum SourceKind {
    Tarball(PathBuf),
    Tree(PathBuf),
}

impl KernelStore {
    /// Builds the kernel from `options.source` with the repository's config
    /// fragment and installs it. A no-op (reporting
    /// [`BuildEvent::UpToDate`]) when the installed kernel was built from the
    /// same source and fragment, unless `options.force`.
    pub fn build(
        &self,
        options: &BuildOptions,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<InstalledKernel, KernelError> {
        let recipe = crate::recipe::recipe(self.arch())
            .ok_or_else(|| KernelError::UnsupportedArch(self.arch().to_string()))?;
        let frag_sha = fragment::fragment_sha256(recipe.fragment);
        let source = resolve_source(&options.source)?;
        let up_to_date = |store: &KernelStore| -> Result<Option<InstalledKernel>, KernelError> {
            Ok(store.installed()?.filter(|k| {
                k.manifest().config_fragment_sha256.as_deref() == Some(frag_sha.as_str())
                    && k.manifest().source == source.record
            }))
        };
        if !options.force {
            if let Ok(Some(k)) = up_to_date(self) {
                progress(BuildEvent::UpToDate);
                return Ok(k);
            }
        }
        let _lock = self.lock()?;
        // Another process may have built it while we waited for the lock.
        if !options.force {
            if let Ok(Some(k)) = up_to_date(self) {
                progress(BuildEvent::UpToDate);
                return Ok(k);
            }
        }
        let reason = match self.installed() {
            Ok(None) => "no kernel is installed".to_string(),
            Ok(Some(_)) if options.force => "rebuild requested".to_string(),
            Ok(Some(k)) if k.manifest().config_fragment_sha256.is_none() => {
                "replacing the user-installed kernel".to_string()
            }
            Ok(Some(k)) if k.manifest().config_fragment_sha256.as_deref() != Some(&frag_sha) => {
                "the kernel config fragment changed".to_string()
            }
            Ok(Some(_)) => "the kernel source changed".to_string(),
            Err(e) => format!("the installed kernel is unusable ({e})"),
        };
        let jobs = options.jobs.unwrap_or_else(default_jobs).max(1);
        let log_path = self.build_log_path();
        progress(BuildEvent::Started {
            reason,
            source: source.describe.clone(),
            estimate: estimated_build_time(jobs),
            log: log_path.clone(),
        });
        let started = Instant::now();

        progress(BuildEvent::Phase(BuildPhase::Preparing));
        check_tools(recipe, matches!(source.kind, SourceKind::Tarball(_)))?;
        remove_stale_build_dirs(self.root());
        let workdir = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(self.root())
            .map_err(|e| KernelError::io("creating a build folder in", self.root(), e))?;
        let mut log =
            File::create(&log_path).map_err(|e| KernelError::io("creating", &log_path, e))?;
        let _ = writeln!(
            log,
            "microagent kernel build: {}, {jobs} jobs, started {}",
            source.describe,
            chrono::Utc::now().to_rfc3339()
        );
        let mut run = Runner {
            log: &mut log,
            log_path: &log_path,
        };

        let out_dir = workdir.path().join("out");
        let src_dir = match &source.kind {
            SourceKind::Tarball(tarball) => {
                progress(BuildEvent::Phase(BuildPhase::Unpacking));
                let src = workdir.path().join("src");
                fs::create_dir_all(&src).map_err(|e| KernelError::io("creating", &src, e))?;
                let mut cmd = Command::new("tar");
                cmd.arg("-xf")
                    .arg(tarball)
                    .arg("-C")
                    .arg(&src)
                    .arg("--strip-components=1")
                    .arg("--no-same-owner");
                run.run("unpacking the source", &mut cmd, None)?;
                src
            }
            SourceKind::Tree(tree) => tree.clone(),
        };
        fs::create_dir_all(&out_dir).map_err(|e| KernelError::io("creating", &out_dir, e))?;

        progress(BuildEvent::Phase(BuildPhase::Configuring));
        let frag_path = workdir.path().join("microagent.config");
        fs::write(&frag_path, recipe.fragment)
            .map_err(|e| KernelError::io("writing", &frag_path, e))?;
        let make = |args: &[&str]| {
            let mut cmd = Command::new("make");
            cmd.arg("-C")
                .arg(&src_dir)
                .arg(format!("O={}", out_dir.display()))
                .arg(format!("ARCH={}", recipe.make_arch))
                .env("LC_ALL", "C")
                .env("KBUILD_BUILD_USER", "microagent")
                .env("KBUILD_BUILD_HOST", "microagent")
                .env_remove("CROSS_COMPILE")
                .env_remove("KCONFIG_CONFIG")
                .args(args);
            if let Some(prefix) = recipe.cross_compile() {
                cmd.arg(format!("CROSS_COMPILE={prefix}"));
            }
            cmd
        };
        let allconfig = format!("KCONFIG_ALLCONFIG={}", frag_path.display());
        run.run(
            "configuring",
            &mut make(&[allconfig.as_str(), "allnoconfig"]),
            None,
        )?;
        let dot_config_path = out_dir.join(".config");
        let dot_config = fs::read_to_string(&dot_config_path)
            .map_err(|e| KernelError::io("reading", &dot_config_path, e))?;
        let missing = fragment::mismatches(recipe.fragment, &dot_config);
        if !missing.is_empty() {
            return Err(KernelError::ConfigMismatch(missing.join("; ")));
        }

        progress(BuildEvent::Phase(BuildPhase::Compiling));
        let jobs_arg = format!("-j{jobs}");
        let mut done = 0u64;
        let mut on_line = |line: &str| {
            if let Some(step) = kbuild_step(line) {
                done += 1;
                progress(BuildEvent::Step {
                    done,
                    estimated_total: ESTIMATED_STEPS,
                    what: step,
                });
            }
        };
        run.run(
            "compiling",
            &mut make(&[jobs_arg.as_str(), recipe.make_target]),
            Some(&mut on_line),
        )?;

        progress(BuildEvent::Phase(BuildPhase::Installing));
        let image_path = out_dir.join(recipe.image);
        let image =
            File::open(&image_path).map_err(|e| KernelError::io("opening", &image_path, e))?;
        (recipe.check)(&image, &image_path).map_err(|reason| KernelError::NotAKernel {
            path: image_path.clone(),
            reason,
        })?;
        let elapsed = started.elapsed();
        let installed = self.install_image(
            image,
            &image_path,
            source.record,
            Some(frag_sha),
            Some((elapsed.as_secs_f64() * 10.0).round() / 10.0),
        )?;
        let _ = writeln!(
            log,
            "installed {} ({}) in {:.0} s",
            installed.vmlinux_path().display(),
            installed
                .manifest()
                .version
                .as_deref()
                .unwrap_or("unknown version"),
            elapsed.as_secs_f64()
        );
        if options.keep_build_dir {
            let kept = workdir.keep();
            let _ = writeln!(log, "build tree kept at {}", kept.display());
        } else {
            // Removing ~1.5 GB of objects takes a while; do it before
            // saying "finished" so the caller is not left waiting silently.
            let path = workdir.path().to_path_buf();
            if let Err(e) = workdir.close() {
                tracing::warn!(path = %path.display(), "could not remove the build folder: {e}");
            }
        }
        progress(BuildEvent::Finished { elapsed });
        Ok(installed)
    }
}

/// Turns a kbuild quiet-mode line (`  CC      fs/ext4/inode.o`) into a step.
fn kbuild_step(line: &str) -> Option<String> {
    let rest = line.strip_prefix("  ")?;
    let (tag, target) = rest.split_once(char::is_whitespace)?;
    if tag.is_empty()
        || !tag
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
    {
        return None;
    }
    Some(format!("{tag} {}", target.trim()))
}

fn resolve_source(source: &BuildSource) -> Result<ResolvedSource, KernelError> {
    match source {
        BuildSource::Debian => {
            let tarball = PathBuf::from(DEBIAN_TARBALL);
            if !tarball.is_file() {
                return Err(KernelError::MissingTool {
                    what: format!("the kernel source tarball {DEBIAN_TARBALL}"),
                    package: DEBIAN_PACKAGE.into(),
                });
            }
            let version =
                debian_package_version(DEBIAN_PACKAGE).ok_or_else(|| KernelError::MissingTool {
                    what: format!("the Debian package {DEBIAN_PACKAGE} (dpkg does not list it)"),
                    package: DEBIAN_PACKAGE.into(),
                })?;
            Ok(ResolvedSource {
                kind: SourceKind::Tarball(tarball.clone()),
                describe: format!("from Debian {DEBIAN_PACKAGE} {version}"),
                record: KernelSource::Debian {
                    package: DEBIAN_PACKAGE.into(),
                    package_version: version,
                    tarball: tarball.display().to_string(),
                },
            })
        }
        BuildSource::Path(path) => {
            let bad = |reason: String| KernelError::BadSource {
                path: path.clone(),
                reason,
            };
            let meta = fs::metadata(path).map_err(|e| bad(format!("cannot be examined: {e}")))?;
            let canonical = fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
            if meta.is_dir() {
                if !canonical.join("Makefile").is_file() || !canonical.join("Kconfig").is_file() {
                    return Err(bad(
                        "is not a kernel source tree (no Makefile and Kconfig)".into()
                    ));
                }
                if canonical.join(".config").exists() {
                    return Err(bad(
                        "has a .config, so it cannot be built out of tree; run `make mrproper` in it or pass a tarball".into(),
                    ));
                }
                let version = tree_version(&canonical).map_err(bad)?;
                Ok(ResolvedSource {
                    kind: SourceKind::Tree(canonical.clone()),
                    describe: format!("from the tree {} ({version})", canonical.display()),
                    record: KernelSource::Path {
                        path: canonical.display().to_string(),
                        identity: format!("tree {version}"),
                    },
                })
            } else if meta.is_file() {
                let (sha, _) = crate::fsutil::sha256_file(&canonical)?;
                Ok(ResolvedSource {
                    kind: SourceKind::Tarball(canonical.clone()),
                    describe: format!("from {}", canonical.display()),
                    record: KernelSource::Path {
                        path: canonical.display().to_string(),
                        identity: format!("sha256 {sha}"),
                    },
                })
            } else {
                Err(bad("is neither a tarball nor a source folder".into()))
            }
        }
    }
}

fn debian_package_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", package])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (status, version) = text.split_once('\t')?;
    (out.status.success() && status.ends_with("installed") && !version.is_empty())
        .then(|| version.trim().to_string())
}

fn tree_version(tree: &Path) -> Result<String, String> {
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(tree)
        .arg("kernelversion")
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running make kernelversion: {e}"))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        return Err("`make kernelversion` failed in it".into());
    }
    Ok(v)
}

fn check_tools(recipe: &crate::recipe::Recipe, need_tar: bool) -> Result<(), KernelError> {
    let cross_gcc = recipe.cross_compile().map(|p| format!("{p}gcc"));
    let cross_package = recipe
        .cross_compile()
        .map(|p| format!("gcc-{}", p.trim_end_matches('-')));
    let mut tools = vec![
        ("make", "make"),
        ("gcc", "gcc"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("perl", "perl"),
    ];
    if need_tar {
        tools.push(("tar", "tar"));
        tools.push(("xz", "xz-utils"));
    }
    if let (Some(gcc), Some(package)) = (&cross_gcc, &cross_package) {
        tools.push((gcc.as_str(), package.as_str()));
    }
    for (tool, package) in tools {
        if !on_path(tool) {
            return Err(KernelError::MissingTool {
                what: format!("`{tool}`"),
                package: package.into(),
            });
        }
    }
    // objtool (the x86 ORC unwinder) links against libelf.
    if recipe.needs_libelf
        && !Path::new("/usr/include/gelf.h").exists()
        && !Path::new("/usr/local/include/gelf.h").exists()
    {
        return Err(KernelError::MissingTool {
            what: "the libelf headers (gelf.h)".into(),
            package: "libelf-dev".into(),
        });
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(tool);
            fs::metadata(&p).is_ok_and(|m| m.is_file())
        })
    })
}

/// Leftover build folders from interrupted builds; only called with the
/// store lock held, so none of them belongs to a running build.
fn remove_stale_build_dirs(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".build-") {
                tracing::info!(path = %e.path().display(), "removing a stale kernel build folder");
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Runs build commands with their output going to the build log.
struct Runner<'a> {
    log: &'a mut File,
    log_path: &'a Path,
}

impl Runner<'_> {
    /// Runs `cmd`; stderr goes straight to the log, stdout is copied there
    /// line by line and handed to `on_line`.
    fn run(
        &mut self,
        step: &str,
        cmd: &mut Command,
        mut on_line: Option<&mut dyn FnMut(&str)>,
    ) -> Result<(), KernelError> {
        let _ = writeln!(self.log, "$ {cmd:?}");
        let stderr = self
            .log
            .try_clone()
            .map_err(|e| KernelError::io("opening", self.log_path, e))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| KernelError::BuildFailed {
                step: step.into(),
                status: format!("could not start: {e}"),
                log: self.log_path.to_path_buf(),
                tail: String::new(),
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            // Lines from make are short; a bound keeps a runaway line from
            // growing memory without limit.
            match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let _ = self.log.write_all(&line);
                    if let Some(cb) = on_line.as_mut() {
                        cb(String::from_utf8_lossy(&line).trim_end());
                    }
                }
                Err(_) => break,
            }
        }
        let status = child
            .wait()
            .map_err(|e| KernelError::io("waiting for", Path::new(step), e))?;
        if !status.success() {
            let _ = self.log.flush();
            return Err(KernelError::BuildFailed {
                step: step.into(),
                status: status.to_string(),
                log: self.log_path.to_path_buf(),
                tail: log_tail(self.log_path, 15),
            });
        }
        Ok(())
    }
}

/// The last `n` lines of the log, for the error message.
fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(8 * 1024);
    let mut buf = Vec::new();
    use std::io::Seek;
    if f.seek(std::io::SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!("\n{}", lines[from..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kbuild_steps() {
        assert_eq!(
            kbuild_step("  CC      fs/ext4/inode.o").as_deref(),
            Some("CC fs/ext4/inode.o")
        );
        assert_eq!(
            kbuild_step("  LD      vmlinux.o").as_deref(),
            Some("LD vmlinux.o")
        );
        assert_eq!(kbuild_step("make[1]: Entering directory"), None);
        assert_eq!(kbuild_step("#"), None);
    }

    #[test]
    fn estimate_scales_with_jobs() {
        assert_eq!(estimated_build_time(2), Duration::from_secs(270));
        assert!(estimated_build_time(0) >= estimated_build_time(1));
    }

    /// Puts a fake "build" of the current fragment from the current Debian
    /// source into a store, as a real build would have recorded it.
    fn fake_current_build(store: &KernelStore) -> InstalledKernel {
        let source =
            resolve_source(&BuildSource::Debian).expect("scripts/setup installs linux-source-6.1");
        let mut bytes = crate::elf::tests::fake_vmlinux(62, &crate::elf::tests::pvh_note());
        bytes.extend_from_slice(b"Linux version 6.1.0-fake (x@y) #1");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        fs::write(&path, bytes).unwrap();
        let _lock = store.lock().unwrap();
        store
            .install_image(
                File::open(&path).unwrap(),
                &path,
                source.record,
                Some(fragment::fragment_sha256(fragment::X86_64_FRAGMENT)),
                Some(1.0),
            )
            .unwrap()
    }

    #[test]
    fn build_is_a_fast_no_op_when_up_to_date() {
        let state = tempfile::tempdir().unwrap();
        let store = KernelStore::with_arch(state.path(), "x86_64");
        let installed = fake_current_build(&store);
        assert!(installed.is_current_build());
        let mut events = Vec::new();
        let started = Instant::now();
        let got = store
            .build(&BuildOptions::default(), &mut |e| events.push(e))
            .unwrap();
        assert_eq!(got, installed);
        assert!(
            matches!(events.as_slice(), [BuildEvent::UpToDate]),
            "{events:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!store.build_log_path().exists(), "no build ran");
    }

    #[test]
    fn ensure_installed_uses_what_is_there() {
        let state = tempfile::tempdir().unwrap();
        let store = KernelStore::with_arch(state.path(), "x86_64");
        let installed = fake_current_build(&store);
        let mut events = Vec::new();
        let got = ensure_installed(&store, &mut |e| events.push(e)).unwrap();
        assert_eq!(got, installed);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn started_event_says_what_and_how_long() {
        let ev = BuildEvent::Started {
            reason: "no kernel is installed".into(),
            source: "from Debian linux-source-6.1 6.1.192-2".into(),
            estimate: estimated_build_time(2),
            log: PathBuf::from("/s/kernels/build.log"),
        };
        let text = ev.to_string();
        assert!(text.contains("no kernel is installed"), "{text}");
        assert!(text.contains("about 5 minutes"), "{text}");
        assert!(text.contains("/s/kernels/build.log"), "{text}");
    }
}

//! What the test process itself has running.

/// The pids of this process's children, over all its threads: empty once
/// everything a test started has been killed and reaped. Meaningful in a
/// test binary of its own (other tests' children count too).
pub fn children() -> Vec<String> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("a task").path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pids.extend(text.split_whitespace().map(str::to_owned));
    }
    pids
}

/// Binary `bin` of workspace package `package`, built by cargo on first use
/// in this process (a test does not build another package's binaries by
/// itself).
pub fn cargo_binary(package: &str, bin: &str) -> std::path::PathBuf {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(bin) {
        return path.clone();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=short",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running cargo build -p {package}: {e}"));
    assert!(out.status.success(), "cargo build -p {package} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("debug").join(bin);
    assert!(path.is_file(), "{} was not built", path.display());
    built.insert(bin.to_owned(), path.clone());
    path
}

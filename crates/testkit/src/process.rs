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

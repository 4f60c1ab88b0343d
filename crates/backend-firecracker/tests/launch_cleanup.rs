//! A Firecracker launch that fails after any of its steps leaves no
//! process behind: each step in turn is made to fail (against the
//! stand-in `firecracker`), and the test process must then have no
//! children. (Its own test binary, so no other test's children count.)

mod mock;

use std::path::Path;
use std::sync::Arc;

use mock::server::{Behaviour, FakeFirecracker};
use mock::swagger::Spec;
use vmkit_firecracker::FirecrackerMachine;
use vmkit_lifecycle::{BootPlan, Machine, WorkspacePaths, INJECTED_FAILURE};
use vmkit_protocol::MachineConfig;

/// The pids of this process's children, over all its threads.
fn children() -> Vec<String> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pids.extend(text.split_whitespace().map(str::to_owned));
    }
    pids
}

fn plan(state: &Path) -> BootPlan {
    let dir = state.join("workspaces").join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let paths = WorkspacePaths::new(&dir).unwrap();
    BootPlan {
        config: MachineConfig {
            kernel_path: state.join("vmlinux").display().to_string(),
            rootfs_path: paths.disk.display().to_string(),
            state_dir: state.display().to_string(),
            memory_mib: 256,
            cpu_count: 1,
            disks: vec![],
            kernel_args: None,
            hostname: None,
            workload: None,
        },
        root_disk: paths.disk.clone(),
        paths,
        kernel_args: "root=/dev/vda rw".into(),
        detached: false,
    }
}

#[test]
fn a_launch_failing_after_any_step_leaves_no_process() {
    let spec = Arc::new(Spec::load());
    let state = tempfile::tempdir().unwrap();
    let plan = plan(state.path());
    let socket = plan.paths.dir.join(vmkit_firecracker::API_SOCKET);
    assert!(children().is_empty());
    let mut step = 0;
    loop {
        // A fresh stand-in per launch: each serves one process.
        let fake = FakeFirecracker::install(spec.clone(), Behaviour::default());
        std::env::set_var(
            "PATH",
            format!("{}:/usr/bin:/bin", fake.bin_dir().display()),
        );
        match FirecrackerMachine::failing_at_step(step).launch(&plan) {
            Err(e) => {
                assert!(e.message.starts_with(INJECTED_FAILURE), "{}", e.message);
                assert_eq!(children(), Vec::<String>::new(), "after {}", e.message);
                assert!(!socket.exists(), "after {}", e.message);
                step += 1;
            }
            Ok(mut launched) => {
                assert!(!children().is_empty());
                launched.shut_down();
                assert!(children().is_empty());
                break;
            }
        }
    }
    // The relay, firecracker, the configured and started instance.
    assert_eq!(step, 3);
}

//! A Firecracker launch that fails after any of its steps leaves no
//! process behind: each step in turn is made to fail (against the
//! stand-in `firecracker`), and the test process must then have no
//! children. (Its own test binary, so no other test's children count.)

mod mock;

use std::sync::Arc;

use mock::server::{Behaviour, FakeFirecracker};
use mock::swagger::Spec;
use vmkit_firecracker::FirecrackerMachine;
use vmkit_lifecycle::{Machine, INJECTED_FAILURE};
use vmkit_testkit::process::children;

#[test]
fn a_launch_failing_after_any_step_leaves_no_process() {
    let spec = Arc::new(Spec::load());
    let state = tempfile::tempdir().unwrap();
    let plan = mock::plan(state.path(), "w", Vec::new(), false);
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
    // The vmm.log relay, the console relay, firecracker, the configured
    // and started instance.
    assert_eq!(step, 4);
}

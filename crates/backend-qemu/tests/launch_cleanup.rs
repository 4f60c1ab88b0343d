//! A QEMU launch that fails after any of its steps leaves no process
//! behind: each step in turn is made to fail, and the test process must
//! then have no children. (Its own test binary, so no other test's
//! children are counted.)

use std::path::Path;

use vmkit_lifecycle::{BootPlan, Machine, WorkspacePaths, INJECTED_FAILURE};
use vmkit_protocol::MachineConfig;
use vmkit_qemu::transport::{Transport, RELAY_ENV};
use vmkit_qemu::QemuMachine;
use vmkit_testkit::process::children;

fn plan(dir: &Path) -> BootPlan {
    let paths = WorkspacePaths::new(dir).unwrap();
    BootPlan {
        config: MachineConfig {
            // QEMU starts and then fails to load it: the launch itself
            // (processes up) is what is tested, not a boot.
            ..MachineConfig::new(
                dir.join("no-kernel").to_string_lossy(),
                paths.disk.to_string_lossy(),
                dir.to_string_lossy(),
                128,
                1,
            )
        },
        root_disk: paths.disk.clone(),
        paths,
        kernel_args: String::new(),
        detached: false,
        nic: None,
        restore: None,
    }
}

#[test]
fn a_launch_failing_after_any_step_leaves_no_process() {
    // The serial transport's relay is `microagent channel-relay`.
    std::env::set_var(
        RELAY_ENV,
        vmkit_testkit::process::cargo_binary("microagent", "microagent"),
    );
    for transport in [Transport::Serial, Transport::Vsock] {
        let dir = tempfile::Builder::new()
            .prefix("qc")
            .tempdir_in("/tmp")
            .unwrap();
        let plan = plan(dir.path());
        assert!(children().is_empty());
        let mut step = 0;
        loop {
            match QemuMachine::with_transport(Ok(transport))
                .failing_at_step(step)
                .launch(&plan)
            {
                Err(e) => {
                    assert!(e.message.starts_with(INJECTED_FAILURE), "{}", e.message);
                    assert_eq!(children(), Vec::<String>::new(), "after {}", e.message);
                    assert!(!transport.helper_socket(dir.path()).exists());
                    step += 1;
                }
                Ok(mut launched) => {
                    // Past the last step: a real launch, whose processes are up.
                    assert!(!children().is_empty());
                    launched.shut_down();
                    assert!(children().is_empty());
                    break;
                }
            }
        }
        // The log relay, the channel helper (vhost-device-vsock or the
        // relay) started, its socket ready, the console relay, QEMU.
        assert_eq!(step, 5, "{transport:?}");
    }
}

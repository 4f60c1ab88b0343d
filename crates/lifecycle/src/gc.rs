//! Garbage collection lives on [`crate::Lifecycle::gc`]; this module only
//! holds its tests, which need no VM: a record whose processes are dead.

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use vmkit_protocol::{Accelerator, BackendKind, HostInfo, MachineConfig, ProtocolError, State};
    use vmkit_state::{LockWait, ProcessRecord, StateStore, WorkspaceRecord};

    use crate::{BootPlan, Launched, Lifecycle, Machine};

    struct NoMachine;
    impl Machine for NoMachine {
        fn kind(&self) -> BackendKind {
            BackendKind::Qemu
        }
        fn host(&self) -> HostInfo {
            HostInfo {
                os: "linux".into(),
                arch: "x86_64".into(),
                accelerator: Accelerator::Tcg,
                accelerator_reason: String::new(),
                checks: vec![],
            }
        }
        fn check(&self, _: &MachineConfig) -> Result<(), ProtocolError> {
            Ok(())
        }
        fn launch(&self, _: &BootPlan) -> Result<Launched, ProtocolError> {
            unreachable!("gc never launches")
        }
    }

    #[test]
    fn gc_kills_leftovers_of_a_dead_owner_and_marks_failed() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // A "VMM" that would outlive its owner, and an owner that is dead.
        let mut vmm = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let mut owner = std::process::Command::new("true").spawn().unwrap();
        let owner_rec = ProcessRecord::of(owner.id() as i32).unwrap_or(ProcessRecord {
            pid: owner.id() as i32,
            start_time: 1,
        });
        owner.wait().unwrap();
        let record = WorkspaceRecord {
            name: "orphan".into(),
            state: State::Running,
            backend: BackendKind::Qemu,
            image: "x".into(),
            config: MachineConfig {
                kernel_path: "/k".into(),
                rootfs_path: "/r".into(),
                state_dir: dir.path().to_string_lossy().into(),
                memory_mib: 128,
                cpu_count: 1,
                disks: vec![],
                kernel_args: None,
                hostname: None,
                arch: None,
                workload: None,
            },
            created_at: Utc::now(),
            updated_at: Utc::now(),
            keep: false,
            vmm: ProcessRecord::of(vmm.id() as i32),
            helpers: vec![],
            owner: Some(owner_rec),
            last_result: None,
            labels: Default::default(),
        };
        {
            let lock = store.lock("orphan", LockWait::NoWait).unwrap();
            store.create(&lock, &record).unwrap();
        }
        let cleaned = Lifecycle::new(NoMachine).gc(dir.path()).unwrap();
        assert_eq!(cleaned, ["orphan"]);
        // The VMM was killed (reap it to be sure it is really gone).
        let status = vmm.wait().unwrap();
        assert!(!status.success());
        let after = store.peek("orphan").unwrap().unwrap();
        assert_eq!(after.state, State::Failed);
        assert!(after.vmm.is_none());
        let events = store.events("orphan").unwrap().read_all().unwrap();
        assert_eq!(events.last().unwrap().state, State::Failed);
        // A second gc finds nothing to do.
        assert!(Lifecycle::new(NoMachine).gc(dir.path()).unwrap().is_empty());
    }
}

//! Garbage collection: VMs whose driving command died, or whose VMM is
//! gone, are cleaned up and marked failed.

use std::path::Path;

use vmkit_protocol::ProtocolError;
use vmkit_state::{LockWait, StateStore};

use crate::backend::identity_of;
use crate::workspace::state_err;
use crate::Lifecycle;

impl Lifecycle {
    /// Finds VMs whose driving command died or whose VMM is gone, cleans up
    /// their processes and marks them failed. Workspaces another command is
    /// working on right now are skipped. Returns the names cleaned.
    pub fn gc(&self, state_dir: &Path) -> Result<Vec<String>, ProtocolError> {
        let store = StateStore::open(state_dir).map_err(state_err)?;
        let mut cleaned = Vec::new();
        for record in store.list().map_err(state_err)? {
            if !record.state.has_vm() {
                continue;
            }
            let identity = identity_of(&record.name, record.keep, record.backend, "gc");
            let Ok(locked) = self.lock_with(state_dir, &identity, LockWait::NoWait) else {
                continue;
            };
            let Ok(mut ws) = locked.open() else {
                continue;
            };
            if ws.reconcile()? {
                cleaned.push(record.name.clone());
            }
        }
        Ok(cleaned)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use vmkit_protocol::{BackendKind, MachineConfig, State};
    use vmkit_state::{LockWait, ProcessRecord, StateStore, WorkspaceRecord};

    use crate::fake::{FakeMachine, Guest};
    use crate::Lifecycle;

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
            config: MachineConfig::new("/k", "/r", dir.path().to_string_lossy(), 128, 1),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            keep: false,
            vmm: ProcessRecord::of(vmm.id() as i32),
            helpers: vec![],
            owner: Some(owner_rec),
            exec_port: None,
            last_result: None,
            labels: Default::default(),
        };
        {
            let lock = store.lock("orphan", LockWait::NoWait).unwrap();
            store.create(&lock, &record).unwrap();
        }
        let cleaned = Lifecycle::new(FakeMachine::new(Guest::LaunchFails))
            .gc(dir.path())
            .unwrap();
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
        assert!(Lifecycle::new(FakeMachine::new(Guest::LaunchFails))
            .gc(dir.path())
            .unwrap()
            .is_empty());
    }
}

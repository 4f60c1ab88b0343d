//! `prepare`: a new workspace's folder, its own root disk and its record.

use std::path::Path;

use chrono::Utc;
use vmkit_protocol::{ErrorCode, Event, ProtocolError, Request, State};
use vmkit_state::WorkspaceRecord;

use crate::workspace::{state_err, Locked, Workspace};

impl<'l> Locked<'l> {
    /// Creates the workspace `request` describes; `keep` says whether it
    /// outlives the command that makes it. Nothing half-made stays behind
    /// on failure.
    pub(crate) fn prepare(
        self,
        request: &Request,
        keep: bool,
    ) -> Result<(Workspace<'l>, Event), ProtocolError> {
        let config = request
            .config
            .as_ref()
            .ok_or_else(|| ProtocolError::invalid("prepare needs config"))?;
        let name = &self.identity.runtime_id;
        if self.store.load(&self.lock).map_err(state_err)?.is_some() {
            return Err(ProtocolError::new(
                ErrorCode::AlreadyExists,
                format!("workspace {name:?} already exists"),
            ));
        }
        let machine = &self.lifecycle.machine;
        machine.check(config)?;
        crate::network::validate(&config.network, &config.publish)?;
        let source = Path::new(&config.rootfs_path);
        if !source.is_file() {
            return Err(ProtocolError::invalid(format!(
                "config.rootfsPath {} is not a file",
                source.display()
            )));
        }
        let paths = self.paths.clone();
        create_private_dir(&paths.dir)?;
        let created = (|| {
            if source != paths.disk {
                // The workspace's own writable copy: shared blocks where the
                // file system can, else a sparse copy; atomic either way.
                vmkit_disk_clone::clone_disk(source, &paths.disk).map_err(|e| {
                    ProtocolError::new(ErrorCode::Internal, format!("copying the root disk: {e}"))
                })?;
            }
            let now = Utc::now();
            let mut config = config.clone();
            config.rootfs_path = paths.disk.to_string_lossy().into_owned();
            let record = WorkspaceRecord {
                name: name.clone(),
                state: State::Prepared,
                backend: machine.kind(),
                // A request without an image names its disk directly.
                image: request
                    .image
                    .clone()
                    .unwrap_or_else(|| source.to_string_lossy().into_owned()),
                config,
                created_at: now,
                updated_at: now,
                keep,
                vmm: None,
                helpers: Vec::new(),
                owner: None,
                exec_port: None,
                last_result: None,
                labels: Default::default(),
            };
            self.store.create(&self.lock, &record).map_err(state_err)?;
            Ok(record)
        })();
        match created {
            Ok(record) => {
                let event = self.emit(State::Prepared, "disk ready");
                Ok((
                    Workspace {
                        locked: self,
                        record,
                    },
                    event,
                ))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&paths.dir);
                Err(e)
            }
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), ProtocolError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            ProtocolError::new(
                ErrorCode::Internal,
                format!("creating {}: {e}", dir.display()),
            )
        })
}

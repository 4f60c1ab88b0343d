//! What a state folder holds, for listings: workspaces, their event logs
//! and consoles, and pulled images. Also the runtimes that reach a
//! workspace through the backend it was created with.

use std::path::PathBuf;

use vmkit_lifecycle::{Observer, WorkspacePaths};
use vmkit_protocol::{BackendKind, ErrorCode, ProtocolError};
use vmkit_rootfs::{ImageRef, Platform, RegistryRef, RootfsBuilder, StoredImage};
use vmkit_state::{StateStore, WorkspaceRecord};

use crate::{Runtime, VmkitError};

impl Runtime {
    /// The runtime a command uses: the requested backend (else the host's
    /// default, see [`crate::select_backend`]), after cleaning up VMs whose
    /// driving command died, so nothing reports a dead VM as running.
    pub fn open(
        state_dir: impl Into<PathBuf>,
        backend: Option<BackendKind>,
        observer: Option<Observer>,
    ) -> Result<Self, VmkitError> {
        let choice = crate::select_backend(backend)?;
        let rt = Runtime::new(state_dir, choice.kind, observer)?;
        match rt.gc_dead_vms() {
            Ok(cleaned) => {
                for name in cleaned {
                    tracing::warn!("cleaned up orphaned VM of workspace {name}");
                }
            }
            // Cleaning up must not stop the command the user asked for.
            Err(e) => tracing::warn!("gc: {e}"),
        }
        Ok(rt)
    }

    /// [`Runtime::open`] with the backend workspace `name` was created with
    /// (the default for a name that does not exist: the command then says
    /// so).
    pub fn for_workspace(
        state_dir: impl Into<PathBuf>,
        name: &str,
        observer: Option<Observer>,
    ) -> Result<Self, VmkitError> {
        let state_dir = state_dir.into();
        let backend = StateStore::open(&state_dir)?.peek(name)?.map(|r| r.backend);
        Runtime::open(state_dir, backend, observer)
    }

    fn store(&self) -> Result<StateStore, VmkitError> {
        Ok(StateStore::open(self.state_dir())?)
    }

    /// Every workspace's record.
    pub fn workspaces(&self) -> Result<Vec<WorkspaceRecord>, VmkitError> {
        Ok(self.store()?.list()?)
    }

    /// One workspace's record; `not-found` when there is none.
    pub fn workspace(&self, name: &str) -> Result<WorkspaceRecord, VmkitError> {
        self.store()?.peek(name)?.ok_or_else(|| not_found(name))
    }

    /// Hands each line of the workspace's event log (one JSON event) to
    /// `on_line`; with `follow`, keeps handing new ones as they are
    /// appended until the workspace is deleted or `on_line` fails.
    pub fn events(
        &self,
        name: &str,
        follow: bool,
        on_line: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> Result<(), VmkitError> {
        let store = self.store()?;
        self.workspace(name)?;
        let log = store.events(name)?;
        let io = |e: std::io::Error| {
            VmkitError::Protocol(ProtocolError::new(
                ErrorCode::Internal,
                format!("reading {}: {e}", log.path().display()),
            ))
        };
        crate::follow::lines(
            log.path(),
            follow,
            &|| store.peek(name).is_ok_and(|r| r.is_some()),
            on_line,
        )
        .map_err(io)?;
        Ok(())
    }

    /// The workspace's serial console output of its current (or last) boot.
    pub fn console_log(&self, name: &str) -> Result<Vec<u8>, VmkitError> {
        let store = self.store()?;
        self.workspace(name)?;
        let paths = WorkspacePaths::new(&store.workspace_dir(name)?)?;
        Ok(vmkit_lifecycle::vmm_files::read_console(&paths.console_log))
    }

    fn images_builder(&self) -> RootfsBuilder {
        RootfsBuilder::new(self.state_dir())
    }

    /// Pulls `reference` (a registry reference; `platform` as `os/arch[/variant]`,
    /// default this host's) into the local image store.
    pub fn pull_image(
        &self,
        reference: &str,
        platform: Option<&str>,
        progress: bool,
    ) -> Result<StoredImage, VmkitError> {
        let reference = registry_ref(reference)?;
        let platform = platform.map(Platform::parse).transpose()?;
        Ok(self
            .images_builder()
            .pull(&reference, platform.as_ref(), progress)?)
    }

    /// The pulled images.
    pub fn images(&self) -> Result<Vec<StoredImage>, VmkitError> {
        Ok(self.images_builder().store().list()?)
    }

    /// Removes a pulled image, the blobs only it used and the disks built
    /// from it, under the image store's lock (see
    /// [`RootfsBuilder::remove_image`]).
    pub fn remove_image(&self, reference: &str) -> Result<Vec<StoredImage>, VmkitError> {
        let reference = registry_ref(reference)?;
        Ok(self.images_builder().remove_image(&reference)?)
    }
}

fn not_found(name: &str) -> VmkitError {
    ProtocolError::new(
        ErrorCode::NotFound,
        format!("workspace {name:?} does not exist"),
    )
    .into()
}

fn registry_ref(reference: &str) -> Result<RegistryRef, VmkitError> {
    match ImageRef::parse(reference)? {
        ImageRef::Registry(r) => Ok(r),
        other => Err(ProtocolError::invalid(format!(
            "{other} is a local image: it is read in place by `rootfs build` and `run`, there is nothing to pull or remove"
        ))
        .into()),
    }
}

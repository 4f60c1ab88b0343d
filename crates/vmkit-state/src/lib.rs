//! The on-disk state store.
//!
//! Layout under the state folder (default `~/.microagent`):
//!
//! ```text
//! workspaces/<name>/workspace.json   the record: state, config, VM processes
//! workspaces/<name>/events.jsonl     one JSON event per line, append-only
//! workspaces/<name>/...              disks, sockets, console.log (the backend's)
//! locks/<name>.lock                  flock target; kept outside the workspace
//!                                    folder so `delete` cannot pull it away
//!                                    from a waiter
//! ```
//!
//! Folders are 0700 and files 0600: workspaces hold their users' data. A
//! state root, `workspaces/`, `locks/` or workspace folder that another user
//! owns or could write to is refused (see [`ensure_private_dir`]): they could
//! have planted symlinks or sockets in it. Files are opened with
//! `O_NOFOLLOW`, and new ones with `O_EXCL`.
//! Records are replaced atomically (temp file, fsync, rename), so a reader
//! never sees half a record, and every mutation happens under the
//! workspace's exclusive lock, so two commands never interleave.
//!
//! ```no_run
//! use vmkit_state::{StateStore, LockWait};
//! # fn main() -> Result<(), vmkit_state::StateError> {
//! let store = StateStore::open("/tmp/ma-state")?;
//! let lock = store.lock("demo", LockWait::Block)?;
//! if let Some(record) = store.load(&lock)? {
//!     println!("{} is {}", record.name, record.state);
//! }
//! # Ok(()) }
//! ```

mod atomic;
mod error;
mod events;
mod lock;
mod private;
mod process;
mod record;
mod store;

pub use atomic::write_atomic;
pub use error::StateError;
pub use events::EventLog;
pub use lock::{LockWait, WorkspaceLock};
pub use private::{ensure_private_dir, tighten_tree};
pub use process::ProcessRecord;
pub use record::WorkspaceRecord;
pub use store::StateStore;

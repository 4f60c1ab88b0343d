//! The on-disk state store: one folder per workspace, atomic writes, an exclusive lock, and the JSON-lines event log.

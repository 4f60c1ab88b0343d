//! The Apple Virtualization.framework backend: spawns the Swift supervisor and speaks one JSON request/response over its stdin/stdout.

//! The one harness for microagent's end-to-end tests.
//!
//! Tests that need a registry, a fixture image or a guest kernel get them
//! from here, so every such test starts the same real components the same
//! way. Nothing here skips: a missing dependency is a loud failure, because
//! CI (`.ci/run`) installs every dependency.

pub mod images;
pub mod kernel;
pub mod logs;
pub mod net;
pub mod process;
pub mod registry;

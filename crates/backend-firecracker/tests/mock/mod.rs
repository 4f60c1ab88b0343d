//! A Firecracker stand-in checked against Firecracker's published API
//! description, for hosts where the real binary cannot run.
#![allow(dead_code)]

pub mod server;
pub mod swagger;

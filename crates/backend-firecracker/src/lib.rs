//! The Firecracker backend: drives the firecracker binary over its HTTP API socket.

//! The microagent library: picks a backend, orchestrates kernels, root filesystems and workspaces, and probes the host.

//! The host<->guest channel: length-prefixed JSON framing shared by guest and host, and the host side of Firecracker's hybrid vsock convention over Unix sockets.

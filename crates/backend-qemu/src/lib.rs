//! The QEMU backend: boots -M microvm with KVM when usable and TCG otherwise, supervising qemu and vhost-device-vsock.

//! The rootfs builder: pulls or imports an OCI image, applies its layers safely into a staging tree, injects the guest init, and builds a cached ext4 disk.

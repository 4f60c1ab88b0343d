//! The kernel installer: builds a minimal all-built-in guest kernel, installs user-supplied ones, and verifies what is installed.

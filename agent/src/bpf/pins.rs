//! The pinned side of the install under bpffs (links and maps), shared by the daemon and the
//! CLI: which links are pinned, whether anything is installed, and `uninstall`. The CLI reaches
//! the kernel only through this module (and the daemon's API).

pub use super::{is_installed, pinned_links, uninstall};

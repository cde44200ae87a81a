//! Loading, attaching, pinning and adopting the kernel programs.
//!
//! Layout under `--bpffs` (default `/sys/fs/bpf/chokepoint`):
//! `maps/<MAP>` for every map and `links/<program>` (TC: `links/cp_tc_egress@<iface>`) for every
//! link; on kernels without tcx (before 6.6) the TC backstop is a clsact filter whose program is
//! pinned at `tc/cp_tc_egress@<iface>` (see [`tc`]); the per-netns backstop pins
//! `links/cp_tc_egress@ns<INODE>_<IFACE>` (tcx) or `tc_netns/cp_tc_egress@ns<INODE>_<IFACE>`
//! (clsact; see [`backstop`]). Pinned links keep enforcing when the daemon exits; only `chokepoint uninstall` removes
//! them. At start the daemon reuses pinned maps (so policy, grants, socket tags and unread
//! records survive), and for every program either keeps the pinned link (same program) or
//! attaches the new program first and then replaces the old link's pin (no window without a
//! program).

pub mod backstop;
mod batch;
pub mod compat;
mod compat_hook;
pub mod features;
pub mod fqdn;
pub mod maps;
mod pinning;
pub mod pins;
mod slot_contents;
mod slots;
mod start;
pub mod tc;
mod tc_nl;

use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use chokepoint_common::names;

pub use self::{
    maps::{GrantSpec, IdentBinding, PolicyMaps, Stats},
    pinning::{prepare_bpffs, prog_path},
    pins::{is_installed, pinned_links, uninstall},
    start::{StartOptions, start},
};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chokepoint"));

/// Every map the agent pins.
pub const MAPS: [&str; 17] = [
    names::CONFIG,
    names::IDENT,
    names::RULES,
    names::GRANTS,
    names::CGCACHE,
    names::SKTAG,
    names::EVENTS,
    names::STATS,
    names::ATTEST,
    names::ACCEPT,
    names::REPLY,
    names::FQDN,
    names::DNSPX,
    names::DNSCFG,
    names::DNSORIG,
    names::DNSANS,
    names::DNSLOST,
];

/// Maps added after the first release: an install pinned without them adopts the rest and
/// gets these created (they hold only short-lived connection state).
const ADDED_MAPS: [&str; 4] = [names::ACCEPT, names::REPLY, names::DNSANS, names::DNSLOST];

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary holds no eBPF object.
    #[error("this binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild without it")]
    NoObject,
    /// The bpffs directory could not be made ready.
    #[error("cannot prepare bpffs at {path}: {source}")]
    Bpffs {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// aya could not load the object.
    #[error("loading the eBPF object failed: {0}")]
    Ebpf(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("program {name} (needs {}): {source}", features::needs(name))]
    Program {
        /// The program's name.
        name: String,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map is missing or of the wrong type.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: String,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// A map, program or link could not be pinned.
    #[error("pin {path}: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The maps pinned by an earlier install have another layout than this build's.
    #[error(
        "the pinned maps under {dir} do not match this build's layout ({what}); refusing to touch them (enforcement stays as pinned). Run `chokepoint uninstall` to remove them"
    )]
    LayoutMismatch {
        /// The pin directory.
        dir: PathBuf,
        /// What differs.
        what: String,
    },
    /// The cgroup root could not be opened.
    #[error("cgroup root {path}: {source}")]
    Cgroup {
        /// The cgroup root.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The first policy could not be written into the maps.
    #[error("writing the initial policy failed: {0}")]
    Fill(#[from] maps::MapsError),
}

/// State of one attached program.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attached {
    /// The program's name.
    pub program: String,
    /// What it is attached to: the cgroup root, or a network interface.
    pub target: String,
    /// Where its link is pinned.
    pub pin: PathBuf,
    /// `kept` (adopted as pinned), `attached` (new), `replaced` (new program, old link replaced).
    pub how: &'static str,
}

/// The loaded kernel side.
pub struct Kernel {
    /// The policy maps.
    pub policy: PolicyMaps,
    /// The attestation map.
    pub attest: maps::Attest,
    /// The `toFQDN` maps.
    pub fqdn: fqdn::FqdnMaps,
    /// `CP_EVENTS`, the flow records; `None` once the consumer has taken it.
    pub events: Option<RingBuf<MapData>>,
    /// DNS answers of identities (host names for the inventory) and their loss counter.
    pub dns_answers: Option<(RingBuf<MapData>, PerCpuArray<MapData, u64>)>,
    /// The kernel-side counters.
    pub stats: Stats,
    /// Every program attached (or kept as pinned).
    pub attached: Vec<Attached>,
    /// Programs that could not attach (e.g. no BPF LSM): name → reason.
    pub degraded: Vec<(String, String)>,
    /// Kernel features detected at start (BPF LSM, TC attach mode, packet socket coverage).
    pub features: features::Features,
    /// True when the maps were adopted from pins (a restart), false on a fresh install.
    pub adopted: bool,
}

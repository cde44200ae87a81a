//! The Chokepoint agent as a library: the daemon, the CLI client, the policy compiler and the
//! audit pipeline. The `chokepoint` binary is a thin `main` over it; fuzz targets and property
//! tests use the parsers directly. `docs/architecture.md` shows the module map and what may
//! depend on what.

#![warn(missing_docs)]

pub mod alerts;
pub mod api;
pub mod attest;
pub mod audit;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod dns;
pub mod fqdn;
pub mod httpd;
pub mod inventory;
pub mod k8s;
pub mod metrics;
pub mod options;
pub mod peer;
pub mod policy;
pub mod query;
pub mod state;
pub mod util;

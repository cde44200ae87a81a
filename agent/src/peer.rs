//! Who asked: the local API client's peer credentials (`SO_PEERCRED`, read when the connection
//! is accepted) and its command name from `/proc/PID/comm`, recorded in every audit record of a
//! change (policy apply and rollback, grants, revokes).

use serde::{Deserialize, Serialize};

/// The process behind an API request (or the daemon itself, for its own changes).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Who {
    /// User id of the process.
    pub uid: Option<u32>,
    /// Process id.
    pub pid: Option<u32>,
    /// Command name (`/proc/PID/comm`).
    pub comm: Option<String>,
}

impl Who {
    /// From a Unix socket peer's credentials.
    pub fn from_cred(cred: &tokio::net::unix::UCred) -> Self {
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
        Self {
            uid: Some(cred.uid()),
            pid,
            comm: pid.and_then(comm_of),
        }
    }

    /// The daemon itself (start-up `--policy`, DNS refresh, grant expiry).
    pub fn daemon() -> Self {
        let pid = std::process::id();
        Self {
            uid: Some(rustix::process::geteuid().as_raw()),
            pid: Some(pid),
            comm: comm_of(pid),
        }
    }
}

/// `/proc/PID/comm` (the process may already be gone: then `None`).
pub fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_daemon() {
        let w = Who::daemon();
        assert_eq!(w.pid, Some(std::process::id()));
        assert!(w.comm.is_some());
    }
}

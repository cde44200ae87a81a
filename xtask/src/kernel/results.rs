//! The result of a guest run, read from its serial console.

use std::time::Duration;

/// Result of the suite in one guest kernel.
pub(crate) struct GuestRun {
    pub series: String,
    pub release: String,
    pub lsm: String,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub ok: bool,
    pub boot: Duration,
    pub total: Duration,
}

impl GuestRun {
    pub(crate) fn summary(&self) -> String {
        format!(
            "kernel {} ({}, lsm {}): {} passed, {} failed, {} skipped; {} in {:.0} s (boot {:.1} s)",
            self.series,
            self.release,
            self.lsm,
            self.passed,
            self.failed,
            self.ignored,
            if self.ok { "ok" } else { "FAILED" },
            self.total.as_secs_f64(),
            self.boot.as_secs_f64()
        )
    }
}

/// The exit status the guest's run script reported (`CP-GUEST-RC=<n>`, the last one).
pub(super) fn guest_rc(console: &str) -> Option<i32> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CP-GUEST-RC="))
        .filter_map(|s| s.parse().ok())
        .next_back()
}

/// The LSMs the guest's `/init` found active (`cp-guest: kernel …, lsm <list>`), or `?`.
pub(super) fn guest_lsm(console: &str) -> String {
    console
        .lines()
        .find_map(|l| l.split_once(", lsm ").map(|(_, x)| x.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_results() {
        let console = "cp-guest: kernel 6.1.0-57-cloud-amd64, lsm lockdown,capability,bpf\n\
                       test result: ok.\nCP-GUEST-RC=99\r\n  CP-GUEST-RC=0\n";
        assert_eq!(guest_rc(console), Some(0));
        assert_eq!(guest_lsm(console), "lockdown,capability,bpf");
        assert_eq!(guest_rc("cp-guest: kernel 6.1\n"), None);
        assert_eq!(guest_lsm("no init line\n"), "?");
    }
}

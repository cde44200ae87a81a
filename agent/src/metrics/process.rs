//! The standard `process_*` metrics of the daemon itself, from `/proc/self`, with the clock tick
//! and page size the kernel reports (not assumed).

use super::family::{Family, Value};

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_start_time_seconds`, `process_open_fds`,
/// `process_max_fds`, `process_threads`; families whose source cannot be read are left out.
pub fn families() -> Vec<Family> {
    let mut out = Vec::new();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    if let Some(st) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(Stat::parse)
    {
        out.push(
            Family::counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )
            .with(vec![], Value::Float((st.utime + st.stime) as f64 / ticks)),
        );
        out.push(
            Family::gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )
            .with(vec![], Value::Int(st.rss_pages.saturating_mul(page))),
        );
        out.push(
            Family::gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )
            .with(vec![], Value::Int(st.vsize)),
        );
        out.push(
            Family::gauge("process_threads", "Number of OS threads in the process.")
                .with(vec![], Value::Int(st.threads)),
        );
        if let Some(boot) = boot_time() {
            out.push(
                Family::gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                )
                .with(vec![], Value::Float(boot + st.start_ticks as f64 / ticks)),
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push(
            Family::gauge("process_open_fds", "Number of open file descriptors.")
                .with(vec![], Value::Int(fds.count() as u64)),
        );
    }
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = lim.current {
        out.push(
            Family::gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )
            .with(vec![], Value::Int(max)),
        );
    }
    out
}

/// The fields of `/proc/self/stat` the metrics need.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    /// Parses the line; the command name (field 2) may hold spaces and parentheses, so fields
    /// are counted after its last `)`.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `f[0]` is field 3 (state): field N is f[N - 3].
        let at = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            utime: at(14)?,
            stime: at(15)?,
            threads: at(20)?,
            start_ticks: at(22)?,
            vsize: at(23)?,
            rss_pages: at(24)?,
        })
    }
}

/// The boot time (`btime` of `/proc/stat`), seconds since the epoch.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_tricky_comm() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2048 18446744073709551615";
        let st = Stat::parse(line).expect("parse");
        assert_eq!(
            st,
            Stat {
                utime: 250,
                stime: 50,
                threads: 7,
                start_ticks: 12345,
                vsize: 104_857_600,
                rss_pages: 2048,
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let names: Vec<String> = families().iter().map(|f| format!("{f:?}")).collect();
        for want in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(names.iter().any(|n| n.contains(want)), "{want}: {names:?}");
        }
    }
}

//! The daemon's HTTP endpoints as real clients meet them: requests split across TCP writes,
//! keep-alive, other methods, OpenMetrics negotiation, and idle or slow connections that must not
//! starve a real scrape or grow the daemon's descriptors without bound.

use std::{
    io::Write,
    net::TcpStream,
    os::unix::net::UnixStream,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chokepoint_tests::*;

/// Writes `parts` one by one with a pause between them (separate TCP segments).
fn write_split(s: &mut impl Write, parts: &[&[u8]]) {
    for p in parts {
        s.write_all(p).expect("write");
        s.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(60));
    }
}

#[test]
fn requests_split_across_writes_and_kept_alive_are_answered() {
    let fx = Fixture::new("enforce");
    // Metrics: the request line itself cut in the middle, then two more requests on the same
    // connection.
    let mut s = TcpStream::connect(fx.daemon.metrics).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write_split(
        &mut s,
        &[b"GET /met", b"rics HTTP/1.1\r\nHo", b"st: x\r\n", b"\r\n"],
    );
    let r = read_response(&mut s).expect("first response");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        metric(&r.body, "chokepoint_policy_generation") == Some(1.0),
        "{}",
        r.body
    );
    for path in ["/healthz", "/metrics"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let r = read_response(&mut s).expect("response on the kept-alive connection");
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }

    // Attestation over the Unix socket: split head, then a second request on the connection.
    let mut u = UnixStream::connect(&fx.daemon.attest).expect("attest connect");
    u.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write_split(
        &mut u,
        &[
            b"GET /v1/attest?peer=10.9.9.9:1",
            b"234&local=10.9.9.8:80 HTTP/1.1\r\nHost: c",
            b"hokepoint\r\n\r\n",
        ],
    );
    let r = read_response(&mut u).expect("attest response");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("no live connection"), "{}", r.body);
    u.write_all(b"GET /v1/attest?peer=bad&local=10.9.9.8:80 HTTP/1.1\r\nHost: c\r\n\r\n")
        .expect("write");
    let r = read_response(&mut u).expect("second attest response");
    assert_eq!(r.status, 400, "{r:?}");
}

#[test]
fn metrics_answer_get_only_and_speak_openmetrics_when_asked() {
    let fx = Fixture::new("enforce");
    let mut s = TcpStream::connect(fx.daemon.metrics).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .expect("write");
    let r = read_response(&mut s).expect("response");
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("GET"));

    // No Accept: the classic text format, counters typed under their `_total` names.
    let classic = fx.daemon.metrics_get("/metrics", &[]);
    assert!(
        classic
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{classic:?}"
    );
    let text = &classic.body;
    assert!(
        text.contains("# TYPE chokepoint_decisions_total counter\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE chokepoint_policy_apply_seconds histogram\n"));
    assert!(!text.contains("# EOF"));
    // Process metrics, with the kernel's clock tick and page size.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let start = metric(text, "process_start_time_seconds").expect("start time");
    assert!(
        start <= now + 1.0 && start > now - 600.0,
        "{start} vs {now}"
    );
    assert!(metric(text, "process_open_fds").is_some_and(|v| v > 3.0));
    assert!(metric(text, "process_max_fds").is_some_and(|v| v > 0.0));
    assert!(metric(text, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0));
    // The daemon's own RSS as procfs reports it (pages × the real page size), within 2x.
    {
        let pid = fx.daemon.pid().expect("daemon pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS");
        let rss = metric(text, "process_resident_memory_bytes").expect("rss");
        assert!(
            rss > kb * 1024.0 / 2.0 && rss < kb * 1024.0 * 2.0,
            "{rss} vs {kb} kB"
        );
    }

    // What Prometheus sends: OpenMetrics preferred.
    let om = fx.daemon.metrics_get(
        "/metrics",
        &["Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"],
    );
    assert_eq!(om.status, 200);
    assert!(
        om.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text; version=1.0.0")),
        "{om:?}"
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE chokepoint_decisions counter\n"));
    // Same samples, same names.
    assert_eq!(metric(&om.body, "chokepoint_policy_generation"), Some(1.0));
    assert!(
        metric(&om.body, "chokepoint_records_lost_total").is_some(),
        "{}",
        om.body
    );
    // Plain text preferred over OpenMetrics: classic.
    let pref = fx.daemon.metrics_get(
        "/metrics",
        &["Accept: text/plain;q=1.0, application/openmetrics-text;q=0.2"],
    );
    assert!(!pref.body.contains("# EOF"));
}

#[test]
fn idle_and_slow_connections_do_not_starve_a_scrape() {
    let fx = Fixture::new("enforce");
    let before = metric(&fx.daemon.scrape(), "process_open_fds").expect("open fds");
    // 300 connections, more than the endpoint holds: half never send a byte, half send part of
    // a head and stall (slowloris).
    let mut held = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(fx.daemon.metrics).expect("connect");
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /metr");
        }
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    // A real scrape is answered while they are all still open.
    let r = fx.daemon.metrics_get("/metrics", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.body;
    let open = metric(&text, "process_open_fds").expect("open fds");
    // The limit (128) bounds the daemon's descriptors: not one per attacker connection.
    assert!(
        open < before + 128.0 + 16.0,
        "open fds grew from {before} to {open} with 300 idle connections"
    );
    let evicted = metric(
        &text,
        "chokepoint_http_connections_total{endpoint=\"metrics\",outcome=\"evicted\"}",
    )
    .expect("eviction counter");
    assert!(evicted >= 300.0 - 128.0, "{evicted}");
    drop(held);
}

/// The daemon's CPU time (user + system) in seconds, from procfs.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(')').expect("comm").1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().expect("ticks"))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[0] + f[1]) as f64 / hz
}

/// Sets the soft RLIMIT_NOFILE of `pid`, returning the old limit.
fn set_nofile(pid: u32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads the current limit into `old`, then sets the new one.
    unsafe {
        assert_eq!(
            libc::prlimit(
                pid as i32,
                libc::RLIMIT_NOFILE,
                std::ptr::null(),
                &raw mut old
            ),
            0
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(
            libc::prlimit(
                pid as i32,
                libc::RLIMIT_NOFILE,
                &raw const new,
                std::ptr::null_mut()
            ),
            0
        );
    }
    old
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_still_serves() {
    let fx = Fixture::new("enforce");
    let pid = fx.daemon.pid().expect("pid");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count() as u64;
    // A few descriptors of headroom, then more connections than that: accept() fails with
    // EMFILE while they wait in the backlog.
    let old = set_nofile(pid, open + 6);
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(fx.daemon.metrics).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let c0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let busy = (cpu_seconds(pid) - c0) / 2.0;
    eprintln!("{busy:.3} of a CPU while out of descriptors");
    // A retrying accept loop would burn a whole core (1.0).
    assert!(
        busy < 0.2,
        "the daemon used {busy:.2} of a CPU while out of descriptors"
    );
    // Idle connections give their descriptors back: a real scrape is answered meanwhile.
    let r = fx.daemon.metrics_get("/metrics", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    drop(held);
    // SAFETY: restores the limit read above.
    unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &raw const old,
            std::ptr::null_mut(),
        )
    };
}

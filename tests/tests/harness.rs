//! The harness itself: what an interrupted run leaves behind is removed by the next one.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use chokepoint_tests::{cgroup_root, require_privileges, sweep};

/// A pid that belonged to a process that has exited (reaped: not alive, not reused this soon).
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().expect("true");
    let pid = c.id();
    c.wait().expect("wait");
    pid
}

#[test]
fn leftovers_of_a_killed_test_process_are_removed_and_their_processes_killed() {
    require_privileges();
    let pid = dead_pid();
    let netns = format!("cpw-{pid}-1");
    let cg = cgroup_root().join(format!("cpt-swept-{pid}-2"));
    let pins = Path::new("/sys/fs/bpf").join(format!("cpt-{pid}-3"));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .expect("ip")
            .success()
    );
    std::fs::create_dir_all(cg.join("child")).expect("cgroup");
    std::fs::create_dir_all(pins.join("links")).expect("pins");
    // A process left running in the leftover cgroup (a daemon or probe of the killed run).
    let procs = cg.join("child/cgroup.procs");
    let mut sleeper = Command::new("sh")
        .args(["-c", "echo $$ > \"$1\" && exec sleep 600", "sh"])
        .arg(&procs)
        .stdout(Stdio::null())
        .spawn()
        .expect("sleeper");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&procs)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "sleeper never joined"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A young resource of a live process (this one) is never touched.
    let mine = cgroup_root().join(chokepoint_tests::unique("cpt-live"));
    std::fs::create_dir_all(&mine).expect("own cgroup");

    let removed = sweep::stale(Duration::ZERO);

    let gone_netns = !Path::new("/run/netns").join(&netns).exists();
    let gone_cg = !cg.exists();
    let gone_pins = !pins.exists();
    let exited = {
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(Some(_)) = sleeper.try_wait() {
                break true;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                let _ = sleeper.kill();
                let _ = sleeper.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let kept_mine = mine.exists();
    // Clean up whatever the sweep did not, before asserting.
    let _ = Command::new("ip").args(["netns", "del", &netns]).output();
    let _ = std::fs::remove_dir(cg.join("child"));
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir(&mine);
    assert!(gone_netns, "netns {netns} stayed; removed: {removed:?}");
    assert!(
        gone_cg,
        "cgroup {} stayed; removed: {removed:?}",
        cg.display()
    );
    assert!(
        gone_pins,
        "pins {} stayed; removed: {removed:?}",
        pins.display()
    );
    assert!(exited, "the process in the leftover cgroup was not killed");
    assert!(kept_mine, "the sweep removed a live process's cgroup");
}

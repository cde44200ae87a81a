//! What the guest runs: the test executables and binaries (snapshotted), and the run script.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

/// What the guest runs: each test executable with the binaries' paths set.
pub(crate) struct Suite {
    pub chokepoint: PathBuf,
    pub probe: PathBuf,
    pub variant: PathBuf,
    pub executables: Vec<PathBuf>,
    pub threads: u32,
    pub filter: Vec<String>,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(super) fn run_script(suite: &Suite) -> String {
    let mut s = String::from("set -u\n");
    s += &format!(
        "cd {}\n",
        shell_quote(&crate::root().join("tests").to_string_lossy())
    );
    s += "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1 TMPDIR=/tmp CP_TEST_TIME_SCALE=6 CP_REQUIRE_BPF_LSM=1\n";
    for (k, v) in [
        ("CHOKEPOINT_BIN", &suite.chokepoint),
        ("CP_PROBE_BIN", &suite.probe),
        ("CHOKEPOINT_BIN_VARIANT", &suite.variant),
    ] {
        s += &format!("export {k}={}\n", shell_quote(&v.to_string_lossy()));
    }
    s += "ip link set lo up\nrc=0\n";
    let filter: Vec<String> = suite.filter.iter().map(|f| shell_quote(f)).collect();
    for exe in &suite.executables {
        let e = shell_quote(&exe.to_string_lossy());
        s += &format!(
            "echo \"== $(basename {e})\"\n{e} --test-threads {} {} || rc=1\n",
            suite.threads,
            filter.join(" ")
        );
    }
    s += "exit $rc\n";
    s
}

/// Hard links of the binaries the guest runs, so a rebuild on the host during the run (which
/// replaces the files) does not pull them from under the guest (virtio-fs reports ESTALE).
pub(super) fn snapshot(suite: &Suite, dir: &Path) -> anyhow::Result<Suite> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let link = |p: &Path, name: &str| -> anyhow::Result<PathBuf> {
        let dst = dir.join(name);
        if fs::hard_link(p, &dst).is_err() {
            fs::copy(p, &dst).with_context(|| format!("copying {}", p.display()))?;
        }
        Ok(dst)
    };
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    Ok(Suite {
        chokepoint: link(&suite.chokepoint, "chokepoint")?,
        probe: link(&suite.probe, "cp-probe")?,
        variant: link(&suite.variant, "chokepoint-variant")?,
        executables: suite
            .executables
            .iter()
            .map(|e| link(e, &name(e)))
            .collect::<anyhow::Result<_>>()?,
        threads: suite.threads,
        filter: suite.filter.clone(),
    })
}

/// cargo's test executables of `chokepoint-tests` (built now if needed).
pub(crate) fn test_executables() -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("cargo")
        .args([
            "test",
            "--quiet",
            "-p",
            "chokepoint-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(crate::root())
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test executables failed");
    }
    let mut exes = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["profile"]["test"] == true
            && let Some(e) = v["executable"].as_str()
        {
            exes.push(PathBuf::from(e));
        }
    }
    exes.sort();
    if exes.is_empty() {
        bail!("cargo built no test executables for chokepoint-tests");
    }
    Ok(exes)
}

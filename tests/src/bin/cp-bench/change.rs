//! Change-to-enforcement: policy applies timed by the CLI's round trip (the CLI returns once the
//! kernel switched) and by the daemon's own account of the request (`timing_ms`), for a document
//! written as YAML and the same document as JSON (YAML's JSON subset, which the daemon reads
//! with its JSON parser).

use anyhow::bail;
use chokepoint_agent::policy::compile::yaml_options;
use chokepoint_tests::Daemon;
use serde_json::{Value, json};

use super::stats;

/// The timings of a series of applies, in milliseconds.
#[derive(Default)]
pub(super) struct Changes {
    round_trip: Vec<f64>,
    enforced: Vec<f64>,
    switch: Vec<f64>,
    compile: Vec<f64>,
}

impl Changes {
    /// Applies `doc` (written to `name` in the daemon's directory) and records its timings.
    pub(super) fn apply(&mut self, d: &Daemon, name: &str, doc: &str) -> anyhow::Result<()> {
        let f = d.dir.join(name);
        std::fs::write(&f, doc)?;
        let t = std::time::Instant::now();
        let (ok, out, err) =
            d.try_cli(&["policy", "apply", f.to_str().expect("utf8"), "-o", "json"]);
        if !ok {
            bail!("apply of {name} failed: {err}");
        }
        self.round_trip.push(t.elapsed().as_secs_f64() * 1000.0);
        let r: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let ms = |k: &str| r["timing_ms"][k].as_f64();
        if let (Some(e), Some(sw), Some(c)) = (ms("enforced"), ms("switch"), ms("compile")) {
            self.enforced.push(e);
            self.switch.push(sw);
            self.compile.push(c);
        }
        Ok(())
    }

    /// `{round_trip_ms, enforced_ms, switch_ms, compile_ms}`, each `stats`.
    pub(super) fn json(&self) -> Value {
        json!({
            "round_trip_ms": stats(&self.round_trip),
            "enforced_ms": stats(&self.enforced),
            "switch_ms": stats(&self.switch),
            "compile_ms": stats(&self.compile),
        })
    }
}

/// The same document as JSON (parsed with the daemon's limits: a 100k-rule document is over the
/// parser's default budget).
pub(super) fn as_json(yaml: &str) -> anyhow::Result<String> {
    let v: Value = serde_saphyr::from_str_with_options(yaml, yaml_options())?;
    Ok(serde_json::to_string(&v)?)
}

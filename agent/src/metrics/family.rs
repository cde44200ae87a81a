//! Metric families read at scrape time, encoded by `prometheus-client` in either text format.
//!
//! The daemon's numbers live where they are counted (atomics, maps, live state); a scrape
//! snapshots them into [`Family`] values and a [`Snapshot`] collector hands them to the encoder,
//! which writes the HELP/TYPE lines, the `_total` suffix of counters and the escaping.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// A sample value.
#[derive(Clone, Copy, Debug)]
pub enum Value {
    /// An integer.
    Int(u64),
    /// A float.
    Float(f64),
}

/// Counter or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; its samples end in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Labels of one sample, in the order they are written.
pub type Labels = Vec<(&'static str, String)>;

/// One metric family: its name as scraped (counters with their `_total`), help and samples.
#[derive(Clone, Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, Value)>,
}

impl Family {
    /// A counter family named `name` (ending in `_total`).
    pub fn counter(name: &'static str, help: &'static str) -> Self {
        debug_assert!(name.ends_with("_total"), "{name}");
        Self {
            name,
            help,
            kind: Kind::Counter,
            samples: Vec::new(),
        }
    }

    /// A gauge family.
    pub fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: Kind::Gauge,
            samples: Vec::new(),
        }
    }

    /// Adds a sample.
    #[must_use]
    pub fn with(mut self, labels: Labels, value: Value) -> Self {
        self.samples.push((labels, value));
        self
    }

    /// Adds a sample in place.
    pub fn push(&mut self, labels: Labels, value: Value) {
        self.samples.push((labels, value));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // prometheus-client appends `_total` to counters itself.
        let name = match self.kind {
            Kind::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            Kind::Gauge => self.name,
        };
        let kind = match self.kind {
            Kind::Counter => prometheus_client::metrics::MetricType::Counter,
            Kind::Gauge => prometheus_client::metrics::MetricType::Gauge,
        };
        let mut m = encoder.encode_descriptor(name, self.help, None, kind)?;
        if let [(labels, value)] = self.samples.as_slice()
            && labels.is_empty()
        {
            return encode_value(self.kind, *value, m);
        }
        for (labels, value) in &self.samples {
            encode_value(self.kind, *value, m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

fn encode_value(
    kind: Kind,
    value: Value,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Counter, Value::Int(v)) => ConstCounter::new(v).encode(encoder),
        (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(encoder),
        (Kind::Gauge, Value::Int(v)) => ConstGauge::new(v).encode(encoder),
        (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(encoder),
    }
}

/// The families of one scrape, as a collector.
#[derive(Debug, Default)]
pub struct Snapshot(pub Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            f.encode(&mut encoder)?;
        }
        Ok(())
    }
}

//! Queries over flow records and alerts (`flows` and `alerts` filters): the wire form the CLI
//! sends, and the compiled filter the daemon applies to its buffer and to live streams.
//! [`time`] and [`dst`] parse the time and destination parts.

pub mod dst;
pub mod time;

use serde::{Deserialize, Serialize};

pub use self::{
    dst::{DstFilter, parse_dst},
    time::{parse_rfc3339, parse_time},
};
use crate::{alerts::Alert, audit::FlowRecord};

/// The filters of `flows` and `alerts` as sent to the daemon. Times are strings (a duration back
/// from now, such as `10m`, or RFC 3339) resolved by the daemon's clock.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Entries from this time on: a duration back from now (`10m`) or RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Entries up to this time: a duration back from now or RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only the most recent N matching entries (with `follow`: the backlog printed first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    /// Only this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Only this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only this grant task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Only this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `CIDR[:PORT]`: `10.0.0.0/8`, `10.0.0.5:443`, `[fd00::/64]:443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Only this verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Only this Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only this pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A query that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    /// `--since` or `--until` is neither a duration nor an RFC 3339 time.
    #[error("--{flag} `{value}`: expected a duration (30s, 10m, 2h) or an RFC 3339 time")]
    Time {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// `--dst` is not `CIDR[:PORT]`; the value given.
    #[error("--dst `{0}`: expected CIDR[:PORT], e.g. 10.0.0.0/8, 10.0.0.5:443 or [fd00::/64]:443")]
    Dst(String),
    /// `--since` is after `--until`.
    #[error("--since is after --until")]
    Empty,
    /// `--last` is 0.
    #[error("--last must be at least 1")]
    Last,
}
/// A compiled query.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Wall-clock ns bounds (inclusive).
    pub since_ns: Option<u128>,
    /// Upper bound, wall-clock ns since the epoch (inclusive).
    pub until_ns: Option<u128>,
    /// Only the most recent N matching entries.
    pub last: Option<usize>,
    /// The query as given.
    pub query: Query,
    /// The parsed `dst` filter.
    pub dst: Option<DstFilter>,
}

/// The fields a filter looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields<'a> {
    /// Time (RFC 3339).
    pub time: &'a str,
    /// Identity.
    pub identity: Option<&'a str>,
    /// Tenant.
    pub tenant: Option<&'a str>,
    /// Grant task id.
    pub task: Option<&'a str>,
    /// Reason.
    pub reason: &'a str,
    /// Destination (`ip:port`).
    pub dst: Option<&'a str>,
    /// Verdict.
    pub verdict: &'a str,
    /// Kubernetes namespace.
    pub namespace: Option<&'a str>,
    /// Pod name.
    pub pod: Option<&'a str>,
}

/// Something `flows`/`alerts` can filter.
pub trait Queryable {
    /// The fields of this entry.
    fn fields(&self) -> Fields<'_>;
}

/// [`Queryable`] for entry types whose fields carry the filter's names (flow records and alerts
/// share them).
macro_rules! queryable_by_field_names {
    ($($t:ty),* $(,)?) => {$(
        impl Queryable for $t {
            fn fields(&self) -> Fields<'_> {
                Fields {
                    time: &self.time,
                    identity: self.identity.as_deref(),
                    tenant: self.tenant.as_deref(),
                    task: self.task.as_deref(),
                    reason: &self.reason,
                    dst: self.dst.as_deref(),
                    verdict: &self.verdict,
                    namespace: self.namespace.as_deref(),
                    pod: self.pod.as_deref(),
                }
            }
        }
    )*};
}
queryable_by_field_names!(FlowRecord, Alert);

impl Query {
    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        *self == Query::default()
    }

    /// Validates and compiles against the clock `now_ns`.
    pub fn compile(&self, now_ns: u128) -> Result<Filter, QueryError> {
        let since_ns = self
            .since
            .as_deref()
            .map(|s| parse_time("since", s, now_ns))
            .transpose()?;
        let until_ns = self
            .until
            .as_deref()
            .map(|s| parse_time("until", s, now_ns))
            .transpose()?;
        if let (Some(a), Some(b)) = (since_ns, until_ns)
            && a > b
        {
            return Err(QueryError::Empty);
        }
        if self.last == Some(0) {
            return Err(QueryError::Last);
        }
        let dst = self.dst.as_deref().map(parse_dst).transpose()?;
        Ok(Filter {
            since_ns,
            until_ns,
            last: self.last,
            query: self.clone(),
            dst,
        })
    }
}

fn eq(want: Option<&str>, have: Option<&str>) -> bool {
    want.is_none_or(|w| have == Some(w))
}

impl Filter {
    /// Whether an entry passes every filter but `last`.
    pub fn matches(&self, r: &dyn Queryable) -> bool {
        let f = r.fields();
        let q = &self.query;
        if !(eq(q.identity.as_deref(), f.identity)
            && eq(q.tenant.as_deref(), f.tenant)
            && eq(q.task.as_deref(), f.task)
            && eq(q.reason.as_deref(), Some(f.reason))
            && eq(q.verdict.as_deref(), Some(f.verdict))
            && eq(q.namespace.as_deref(), f.namespace)
            && eq(q.pod.as_deref(), f.pod))
        {
            return false;
        }
        if let Some(d) = &self.dst
            && !d.matches(f.dst)
        {
            return false;
        }
        if self.since_ns.is_some() || self.until_ns.is_some() {
            let Some(t) = parse_rfc3339(f.time) else {
                return false;
            };
            if self.since_ns.is_some_and(|s| t < s) || self.until_ns.is_some_and(|u| t > u) {
                return false;
            }
        }
        true
    }

    /// The matching entries of a buffer (oldest first), the most recent `last` of them.
    pub fn select<'a, T: Queryable + 'a>(
        &self,
        items: impl DoubleEndedIterator<Item = &'a T>,
    ) -> Vec<&'a T> {
        let mut out: Vec<&T> = match self.last {
            Some(n) => items.rev().filter(|r| self.matches(*r)).take(n).collect(),
            None => items.filter(|r| self.matches(*r)).collect(),
        };
        if self.last.is_some() {
            out.reverse();
        }
        out
    }
}
#[cfg(test)]
mod tests;

//! `toFQDN` names: validation of a rule's pattern and matching of the names a lookup asked.
//!
//! A pattern is a DNS name (`api.github.com`) or a single-label wildcard (`*.example.com`, which
//! matches `a.example.com` but neither `example.com` nor `a.b.example.com`). Names are compared
//! lowercase without the trailing dot.

use std::fmt;

use serde::Serialize;

/// Longest DNS name in text form (RFC 1035: 255 octets on the wire).
const MAX_NAME: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// A validated `toFQDN` pattern.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct FqdnPattern {
    /// `true` for `*.suffix`.
    wildcard: bool,
    /// The name, or the suffix after `*.`; lowercase, no trailing dot.
    name: String,
}

impl From<FqdnPattern> for String {
    fn from(p: FqdnPattern) -> String {
        p.to_string()
    }
}

impl fmt::Display for FqdnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Lowercases and drops the trailing dot of a name as a lookup carries it.
pub fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn check_labels(name: &str, whole: &str) -> Result<(), String> {
    if name.len() > MAX_NAME {
        return Err(format!(
            "`{whole}` is longer than {MAX_NAME} characters, the longest DNS name"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "`{whole}` has an empty label (`..` or a leading dot)"
            ));
        }
        if label.contains('*') {
            return Err(format!(
                "`{whole}`: a wildcard is only allowed as the whole first label (`*.example.com`)"
            ));
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "`{whole}`: label `{label}` is longer than {MAX_LABEL} characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "`{whole}`: label `{label}` may only hold letters, digits, `-` and `_` (write internationalised names in their xn-- form)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "`{whole}`: label `{label}` must not start or end with `-`"
            ));
        }
    }
    Ok(())
}

/// Parses a `toFQDN` value.
pub fn parse_pattern(s: &str) -> Result<FqdnPattern, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("a toFQDN name must not be empty".into());
    }
    if t.parse::<std::net::IpAddr>().is_ok() || t.contains('/') || t.contains(':') {
        return Err(format!(
            "`{t}` is an address, not a DNS name: write it as `to: \"{t}\"`"
        ));
    }
    let n = normalise_name(t);
    let (wildcard, name) = match n.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, n.clone()),
    };
    check_labels(&name, t)?;
    if wildcard && !name.contains('.') {
        return Err(format!(
            "`{t}`: a wildcard needs at least two labels after `*.` (it would cover a whole top-level domain)"
        ));
    }
    Ok(FqdnPattern { wildcard, name })
}

impl FqdnPattern {
    /// True when the looked-up `name` (normalised) is covered.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            match name.split_once('.') {
                Some((first, rest)) => !first.is_empty() && rest == self.name,
                None => false,
            }
        } else {
            name == self.name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_matching() {
        let p = parse_pattern("API.GitHub.com.").unwrap();
        assert_eq!(p.to_string(), "api.github.com");
        assert!(p.matches("api.github.com"));
        assert!(!p.matches("x.api.github.com"));
        let w = parse_pattern("*.example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        for bad in [
            "",
            "*",
            "*.com",
            "a.*.com",
            "a*.example.com",
            "**.example.com",
            "a..b",
            ".a.b",
            "-a.b",
            "a-.b",
            "a b.c",
            "10.0.0.1",
            "fd00::1",
            "10.0.0.0/8",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(parse_pattern(&long).unwrap_err().contains("longer than 63"));
    }
}

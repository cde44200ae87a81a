//! Which text format a scrape gets: OpenMetrics when the scraper's `Accept` prefers it, the
//! classic Prometheus format otherwise.

/// The exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format a scraper's `Accept` headers prefer: OpenMetrics when it is acceptable with a
    /// quality at least that of plain text, the classic format otherwise (and without `Accept`).
    pub fn negotiate<'a>(accept: impl Iterator<Item = &'a str>) -> Self {
        let (mut om, mut text) = (0.0_f32, 0.0_f32);
        for item in accept.flat_map(|h| h.split(',')) {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|v| v.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// The `Content-Type` of a page in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_prometheus_asks() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate([prom].into_iter()), Format::OpenMetrics);
        assert_eq!(Format::negotiate([].into_iter()), Format::Prometheus);
        assert_eq!(Format::negotiate(["*/*"].into_iter()), Format::Prometheus);
        assert_eq!(
            Format::negotiate(["text/plain, application/openmetrics-text;q=0.3"].into_iter()),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(["application/openmetrics-text;q=0"].into_iter()),
            Format::Prometheus
        );
    }
}

//! Process-wide metrics that are observed where things happen rather than computed at scrape
//! time (issue 14): the build durations histogram. `GET /metrics` ([`crate::http::metrics`])
//! registers them with the rest. A leaf: imports no other module of the node.

use std::sync::LazyLock;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Upper bounds of the build duration buckets, in seconds: 0.5 s to about 2.3 h, doubling.
pub fn build_duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.5, 2.0, 15)
}

/// Wall-clock durations of this node's builds that ended in a committed attestation, since the
/// process started (seconds).
pub static BUILD_DURATIONS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(build_duration_buckets()));

/// Record a finished build of `ms` milliseconds.
pub fn observe_build_ms(ms: u64) {
    BUILD_DURATIONS.observe(ms as f64 / 1000.0);
}

//! Prometheus metrics, rendered by hand in the text exposition format. Label values are
//! limited to known sets (method names are normalised) so a client cannot blow up the
//! number of series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BUCKETS_SECONDS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0];

const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "(response)",
    "(stream)",
    "(delete session)",
    "(unparsed)",
    "(batch)",
    "auth",
];

fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS.iter().find(|known| **known == method).copied().unwrap_or("other")
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_SECONDS.len()],
    sum: f64,
    total: u64,
}

#[derive(Default)]
struct Inner {
    /// By method, then outcome (looked up without allocating; a new outcome is added once).
    requests: BTreeMap<&'static str, BTreeMap<String, u64>>,
    decisions: BTreeMap<&'static str, u64>,
    upstream_errors: BTreeMap<String, u64>,
    /// Per server: did the last exchange with it succeed?
    upstream_up: BTreeMap<String, bool>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The gateway's counters. Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Metrics {
    pub fn request(&self, method: &str, outcome: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            let outcomes = inner.requests.entry(method_label(method)).or_default();
            match outcomes.get_mut(outcome) {
                Some(count) => *count += 1,
                None => {
                    outcomes.insert(outcome.to_owned(), 1);
                }
            }
        }
    }

    pub fn decision(&self, allowed: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.decisions.entry(if allowed { "allow" } else { "deny" }).or_default() += 1;
        }
    }

    pub fn upstream_error(&self, server: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.upstream_errors.entry(server.to_owned()).or_default() += 1;
            inner.upstream_up.insert(server.to_owned(), false);
        }
    }

    /// The upstream answered (even with a JSON-RPC error): it is up.
    pub fn upstream_answered(&self, server: &str) {
        if let Ok(mut inner) = self.inner.lock()
            && inner.upstream_up.get(server) != Some(&true)
        {
            inner.upstream_up.insert(server.to_owned(), true);
        }
    }

    pub fn latency(&self, method: &str, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Ok(mut inner) = self.inner.lock() {
            let histogram = inner.latency.entry(method_label(method)).or_default();
            for (index, bound) in BUCKETS_SECONDS.iter().enumerate() {
                if seconds <= *bound {
                    histogram.counts[index] += 1;
                }
            }
            histogram.sum += seconds;
            histogram.total += 1;
        }
    }

    /// The text exposition format. `gauges` are extra current values (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else { return out };
        out.push_str("# HELP portcullis_requests_total MCP messages handled, by method and outcome.\n");
        out.push_str("# TYPE portcullis_requests_total counter\n");
        let requests = inner
            .requests
            .iter()
            .flat_map(|(method, outcomes)| outcomes.iter().map(move |(outcome, count)| (method, outcome, count)));
        for (method, outcome, count) in requests {
            let _ = writeln!(out, "portcullis_requests_total{{method=\"{method}\",outcome=\"{outcome}\"}} {count}");
        }
        out.push_str("# HELP portcullis_decisions_total Authorization decisions, by effect.\n");
        out.push_str("# TYPE portcullis_decisions_total counter\n");
        for (effect, count) in &inner.decisions {
            let _ = writeln!(out, "portcullis_decisions_total{{effect=\"{effect}\"}} {count}");
        }
        out.push_str("# HELP portcullis_upstream_errors_total Upstream failures, by server.\n");
        out.push_str("# TYPE portcullis_upstream_errors_total counter\n");
        for (server, count) in &inner.upstream_errors {
            let _ = writeln!(out, "portcullis_upstream_errors_total{{server=\"{server}\"}} {count}");
        }
        out.push_str(
            "# HELP portcullis_upstream_up 1 when the last exchange with the server got an answer, 0 when it failed.\n",
        );
        out.push_str("# TYPE portcullis_upstream_up gauge\n");
        for (server, up) in &inner.upstream_up {
            let _ = writeln!(out, "portcullis_upstream_up{{server=\"{server}\"}} {}", u8::from(*up));
        }
        out.push_str("# HELP portcullis_request_duration_seconds Time from receipt to the complete answer.\n");
        out.push_str("# TYPE portcullis_request_duration_seconds histogram\n");
        for (method, histogram) in &inner.latency {
            for (index, bound) in BUCKETS_SECONDS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "portcullis_request_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {}",
                    histogram.counts[index]
                );
            }
            let _ = writeln!(
                out,
                "portcullis_request_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                histogram.total
            );
            let _ = writeln!(out, "portcullis_request_duration_seconds_sum{{method=\"{method}\"}} {}", histogram.sum);
            let _ =
                writeln!(out, "portcullis_request_duration_seconds_count{{method=\"{method}\"}} {}", histogram.total);
        }
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}

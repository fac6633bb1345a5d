//! `/metrics`: Prometheus text exposition (OpenMetrics 1.0 text) of what an operator watches:
//! HTTP requests and their latency by route, run outcomes, failed authentications, pending
//! approvals, circuit breakers by state, free concurrency slots per skill, open event streams.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkillLabels {
    skill: String,
    version: String,
}

/// The server's metrics; counters are updated as requests go, gauges at scrape time.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteOnly, Histogram>,
    outcomes: Family<OutcomeLabels, Counter>,
    failed_authentications: Counter,
    rate_limited: Counter,
    pending_approvals: Gauge,
    breakers: Family<StateLabels, Gauge>,
    free_slots: Family<SkillLabels, Gauge>,
    open_streams: Gauge<i64, AtomicI64>,
    store_commits: Gauge,
    store_transactions: Gauge,
    store_syncs: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agentd");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        // 0.25 ms to ~8 s.
        let latency = Family::<RouteOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency by route, to the response head",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register("run_outcomes", "Steps answered over HTTP, by outcome", outcomes.clone());
        let failed_authentications = Counter::default();
        registry.register(
            "failed_authentications",
            "Requests refused for a missing, malformed, expired or forged token",
            failed_authentications.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused by a tenant's rate limit",
            rate_limited.clone(),
        );
        let pending_approvals = Gauge::default();
        registry.register(
            "pending_approvals",
            "Approval requests pending, all tenants",
            pending_approvals.clone(),
        );
        let breakers = Family::<StateLabels, Gauge>::default();
        registry.register("circuit_breakers", "Circuit breakers by state", breakers.clone());
        let free_slots = Family::<SkillLabels, Gauge>::default();
        registry.register(
            "skill_free_slots",
            "Free concurrency slots (pool occupancy) per loaded skill version",
            free_slots.clone(),
        );
        let open_streams = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "open_event_streams",
            "Open run event streams (SSE)",
            open_streams.clone(),
        );
        let store_commits = Gauge::default();
        registry.register(
            "store_durable_commits",
            "Durable write commits of the control plane's store since start",
            store_commits.clone(),
        );
        let store_transactions = Gauge::default();
        registry.register(
            "store_transactions",
            "Database transactions that held them (SQLite: concurrent commits share one)",
            store_transactions.clone(),
        );
        let store_syncs = Gauge::default();
        registry.register(
            "store_fsyncs",
            "fsyncs that made them durable (group commit: fewer than commits under load)",
            store_syncs.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            outcomes,
            failed_authentications,
            rate_limited,
            pending_approvals,
            breakers,
            free_slots,
            open_streams,
            store_commits,
            store_transactions,
            store_syncs,
        }
    }

    /// Counts a request answered with `status` after `seconds`.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteOnly {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts a step's outcome (`completed`, `failed`, `denied`, `awaiting-approval`, ...).
    pub fn outcome(&self, outcome: &str) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn failed_authentication(&self) {
        self.failed_authentications.inc();
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// An event stream opened; the guard closes it when dropped.
    pub fn stream_opened(&self) -> StreamGuard {
        self.open_streams.inc();
        StreamGuard(self.open_streams.clone())
    }

    /// Sets the gauges from the runtime and the control plane, then renders everything.
    pub fn render(&self, gauges: &Gauges) -> String {
        let Gauges {
            pending,
            breakers,
            skills,
            commits,
        } = gauges;
        self.pending_approvals.set(*pending);
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.store_commits.set(gauge(commits.commits));
        self.store_transactions.set(gauge(commits.transactions));
        self.store_syncs.set(gauge(commits.fsyncs));
        for (state, count) in [("closed", breakers.0), ("open", breakers.1), ("half-open", breakers.2)] {
            self.breakers
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.free_slots.clear();
        for (skill, version, free) in skills {
            self.free_slots
                .get_or_create(&SkillLabels {
                    skill: skill.clone(),
                    version: version.clone(),
                })
                .set(i64::try_from(*free).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// What the gauges show, read at scrape time.
pub struct Gauges {
    /// Pending approval requests, all tenants.
    pub pending: i64,
    /// Circuit breakers `(closed, open, half-open)`.
    pub breakers: (usize, usize, usize),
    /// `(skill, version, free slots)` per loaded skill version.
    pub skills: Vec<(String, String, usize)>,
    /// Durable commits, transactions and fsyncs of the store.
    pub commits: control_plane::CommitStats,
}

/// Keeps the open-streams gauge up while an event stream lives.
pub struct StreamGuard(Gauge<i64, AtomicI64>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_and_counts_what_happened() {
        let metrics = Metrics::new();
        metrics.request("POST", "/v1/runs", 201, 0.002);
        metrics.outcome("completed");
        metrics.failed_authentication();
        let streams = metrics.stream_opened();
        let text = metrics.render(&Gauges {
            pending: 3,
            breakers: (2, 1, 0),
            skills: vec![("noop".into(), "1.0.0".into(), 7)],
            commits: control_plane::CommitStats {
                commits: 10,
                transactions: 6,
                fsyncs: 4,
            },
        });
        for line in [
            "agentd_http_requests_total{method=\"POST\",route=\"/v1/runs\",status=\"201\"} 1",
            "agentd_run_outcomes_total{outcome=\"completed\"} 1",
            "agentd_failed_authentications_total 1",
            "agentd_pending_approvals 3",
            "agentd_circuit_breakers{state=\"open\"} 1",
            "agentd_skill_free_slots{skill=\"noop\",version=\"1.0.0\"} 7",
            "agentd_open_event_streams 1",
            "agentd_http_request_duration_seconds_count{route=\"/v1/runs\"} 1",
            "agentd_store_durable_commits 10",
            "agentd_store_transactions 6",
            "agentd_store_fsyncs 4",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        drop(streams);
        let idle = Gauges {
            pending: 0,
            breakers: (0, 0, 0),
            skills: Vec::new(),
            commits: control_plane::CommitStats::default(),
        };
        assert!(metrics.render(&idle).contains("agentd_open_event_streams 0"));
    }
}

//! Prometheus metrics (the `prometheus` crate) and the HTTP endpoint that
//! serves them with the health checks.
//!
//! Label sets are small and fixed: kinds, outcomes, reason codes, rule ids,
//! actions, scopes, modes, partitions. Never an account, device, address or
//! code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::sync::watch;

use crate::engine::Engine;

/// Latency buckets, seconds: 1 ms to 1 minute.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0,
];
/// Engine time per event, seconds: 250 ns to 1 ms.
const ENGINE_BUCKETS: [f64; 10] = [
    0.000_000_25,
    0.000_000_5,
    0.000_001,
    0.000_002,
    0.000_005,
    0.000_01,
    0.000_02,
    0.000_05,
    0.000_2,
    0.001,
];

/// Every metric kamiguard exports, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub events: IntCounterVec,
    pub rejected: IntCounterVec,
    pub duplicates: IntCounter,
    pub late: IntCounter,
    /// Event-time order (`kafka::order`).
    pub order_buffered: IntGauge,
    pub order_wait: Histogram,
    pub order_behind: IntCounter,
    pub order_forced: IntCounter,
    pub decisions: IntCounterVec,
    pub latency_from_event: Histogram,
    pub latency_from_ingest: Histogram,
    pub engine_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub state_keys: IntGauge,
    pub state_cap: IntGauge,
    pub state_evictions: IntCounter,
    /// By store: a rule's id, "account memory" or "card memory".
    pub state_cap_hits: IntCounterVec,
    pub active_decisions: IntGaugeVec,
    /// By rule and event (`breaker_tripped`, `breaker_reset`).
    pub breaker_trips: IntCounterVec,
    /// By rule with a breaker: 1 while it holds the rule in shadow.
    pub breaker_open: IntGaugeVec,
    /// By link: decisions derived for linked entities.
    pub linked_decisions: IntCounterVec,
    /// By rule with a ladder and step: decisions published.
    pub ladder_decisions: IntCounterVec,
    /// By honey rule: decoys on its list.
    pub honey_entries: IntGaugeVec,
    /// By honey rule: attempts on its decoys.
    pub honey_hits: IntCounterVec,
    pub restored_events: IntCounter,
    pub routed: IntCounterVec,
    pub geo_records: IntCounterVec,
    pub reloads: IntCounterVec,
    pub rules_loaded: IntGauge,
    pub ready: IntGauge,
    pub restore_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::unset();
        // Series that exist from the start, so dashboards and alerts see zeros,
        // not gaps.
        for result in ["ok", "error"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    fn unset() -> Metrics {
        let registry = Registry::new_custom(Some("kamiguard".into()), None).unwrap_or_default();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let restore_seconds = HistogramVec::new(
            HistogramOpts::new("restore_seconds", "Time to rebuild state on a partition assignment.")
                .buckets(vec![0.01, 0.1, 1.0, 10.0, 60.0, 300.0]),
            &[],
        )
        .unwrap_or_else(|e| panic!("metric restore_seconds: {e}"));
        let _ = registry.register(Box::new(restore_seconds.clone()));
        Metrics {
            events: counter("events_total", "Valid attempt events processed.", &["kind", "outcome"]),
            rejected: counter(
                "rejected_events_total",
                "Messages refused and sent to the dead-letter topic, by reason.",
                &["reason"],
            ),
            duplicates: counter("duplicate_events_total", "Redelivered events dropped by event id.", &[])
                .with_label_values(&[] as &[&str]),
            order_buffered: gauge(
                "order_buffered",
                "Attempts held to be taken in event-time order across partitions.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            order_wait: histogram(
                "order_wait_seconds",
                "How long an attempt waited for the other partitions to come as far in event time.",
                &LATENCY_BUCKETS,
            ),
            order_behind: counter(
                "order_behind_total",
                "Attempts taken after later ones had been: their source was idle, silent past pipeline.order_stall_ms, or out of order within its partition.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            order_forced: counter(
                "order_forced_total",
                "Attempts released before their turn because the ordering buffer was full (pipeline.order_buffer).",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            late: counter(
                "late_events_total",
                "Attempts decided more than the lateness behind the newest event time (counted, not dropped).",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            decisions: counter(
                "decisions_total",
                "Decisions published.",
                &["rule", "action", "scope", "mode"],
            ),
            latency_from_event: histogram(
                "decision_latency_from_event_seconds",
                "From the attempt's event time to its decision being acknowledged by the broker.",
                &LATENCY_BUCKETS,
            ),
            latency_from_ingest: histogram(
                "decision_latency_from_ingest_seconds",
                "From taking the attempt off the topic to its decision being acknowledged by the broker.",
                &LATENCY_BUCKETS,
            ),
            engine_seconds: histogram("engine_seconds", "Engine time per event.", &ENGINE_BUCKETS),
            consumer_lag: gauge(
                "consumer_lag",
                "Messages behind the high watermark, by consumed topic (attempts, internal topics when split) and partition.",
                &["topic", "partition"],
            ),
            state_keys: gauge("state_keys", "Live state keys (windows, quotas, memory).", &[])
                .with_label_values(&[] as &[&str]),
            state_cap: gauge("state_keys_cap", "Configured cap on state keys (engine.max_keys).", &[])
                .with_label_values(&[] as &[&str]),
            state_evictions: counter("state_evictions_total", "Idle state keys evicted.", &[])
                .with_label_values(&[] as &[&str]),
            state_cap_hits: counter(
                "state_cap_hits_total",
                "New keys not tracked, by store (a rule's id, account memory, card memory): the state cap was reached, or the store held more than its share past three quarters of it.",
                &["store"],
            ),
            active_decisions: gauge("active_decisions", "Decisions in force, by scope.", &["scope"]),
            breaker_trips: counter(
                "breaker_events_total",
                "Circuit-breaker events published on the operations topic, by rule and event (breaker_tripped: the rule switched itself to shadow; breaker_reset: an operator closed it).",
                &["rule", "event"],
            ),
            breaker_open: gauge(
                "breaker_open",
                "1 while a rule's circuit breaker holds it in shadow (at the engine's event time), 0 while it enforces.",
                &["rule"],
            ),
            linked_decisions: {
                let c = counter(
                    "linked_decisions_total",
                    "Decisions derived for the entities linked to a frozen account or a blocked device, by link (engine.links).",
                    &["link"],
                );
                // Every link has a series from the first scrape.
                for link in ["device_accounts", "account_devices", "account_cards"] {
                    c.with_label_values(&[link]);
                }
                c
            },
            ladder_decisions: counter(
                "ladder_decisions_total",
                "Decisions of rules with a ladder, by the step the subject stood on (offence 1 is a first decision; 2 and up are repeat offenders).",
                &["rule", "offence"],
            ),
            honey_entries: gauge(
                "honey_list_entries",
                "Decoy codes on each honey rule's list (0: an empty list catches nothing).",
                &["rule"],
            ),
            honey_hits: counter(
                "honey_hits_total",
                "Attempts on a decoy code, by honey rule, decided or not: each is proof of a leaked or enumerated code list.",
                &["rule"],
            ),
            restored_events: counter(
                "restored_events_total",
                "Events replayed into state from the attempts topic on assignment.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            routed: counter(
                "routed_events_total",
                "Attempts forwarded to the internal topic of a home key (split across instances).",
                &["home"],
            ),
            geo_records: counter(
                "geo_records_total",
                "Geo lookups by database and result: kept (answered from a recently decoded record), decoded, or failed (a record that did not decode, read as unknown); database=addresses counts whole lookups answered by a recently seen address.",
                &["database", "result"],
            ),
            reloads: counter(
                "rule_reloads_total",
                "Rule reloads, by result (ok, error).",
                &["result"],
            ),
            rules_loaded: gauge("rules_loaded", "Enabled rules in the running rule set.", &[])
                .with_label_values(&[] as &[&str]),
            ready: gauge(
                "ready",
                "1 when partitions are assigned, state restored and rules loaded.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            restore_seconds,
            registry,
        }
    }

    /// Copies the engine's counters and gauges (called before each scrape).
    pub fn observe_engine(&self, engine: &Engine) {
        let stats = engine.stats();
        self.state_keys.set(stats.state.live_keys as i64);
        self.state_cap.set(stats.state.cap as i64);
        let add = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        add(&self.state_evictions, stats.state.evicted);
        // Every store in force has a series from its first scrape, at zero
        // until it refuses a key, so an alert on the increase sees the
        // first refusals too.
        for c in engine.cap_hits_by_store() {
            add(&self.state_cap_hits.with_label_values(&[c.store.as_str()]), c.hits);
        }
        self.rules_loaded.set(engine.rules().rules.len() as i64);
        for (scope, n) in engine.active_decisions() {
            self.active_decisions.with_label_values(&[scope.as_str()]).set(n);
        }
        for (rule, _, open) in engine.breaker_states() {
            self.breaker_open.with_label_values(&[&*rule]).set(i64::from(open));
            // A series from the first scrape, so an alert on its increase
            // sees the first trip.
            self.breaker_trips.with_label_values(&[&*rule, "breaker_tripped"]);
        }
        for (rule, entries, hits) in engine.honey_counts() {
            self.honey_entries.with_label_values(&[&*rule]).set(entries as i64);
            add(&self.honey_hits.with_label_values(&[&*rule]), hits);
        }
        for (database, kept, decoded) in engine.geo_record_counts() {
            add(&self.geo_records.with_label_values(&[database, "kept"]), kept);
            add(&self.geo_records.with_label_values(&[database, "decoded"]), decoded);
        }
        for (database, failed) in engine.geo_failed_counts() {
            add(&self.geo_records.with_label_values(&[database, "failed"]), failed);
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What `/readyz` reports on.
#[derive(Debug, Default)]
pub struct Health {
    /// Partitions are assigned and their state restored.
    pub assigned: AtomicBool,
    /// A valid rule set is loaded.
    pub rules_loaded: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.assigned.load(Ordering::SeqCst) && self.rules_loaded.load(Ordering::SeqCst)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`,
/// within `crate::http::Limits`. Returns the bound address (useful with
/// port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let m = metrics.clone();
    let h = health.clone();
    let for_ready = health.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (m, h, engine) = (m.clone(), h.clone(), engine.clone());
                async move {
                    m.observe_engine(&engine);
                    m.ready.set(h.ready() as i64);
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let h = for_ready.clone();
                async move {
                    if h.ready() {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                    }
                }
            }),
        );
    tokio::spawn(crate::http::serve(
        listener,
        app,
        None,
        crate::http::Limits::default(),
        "metrics",
        shutdown,
    ));
    tracing::info!(%bound, "metrics, healthz and readyz listening");
    Ok(bound)
}

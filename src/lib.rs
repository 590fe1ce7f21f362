//! kamiguard: real-time abuse detection for gift-card codes (kami).
//!
//! # The flow
//!
//! ```text
//!  attempts ──▶ event ──▶ enrich ──▶ state ──▶ rules ──▶ decision ──▶ out
//!  (Kafka or   parse,     geo, ASN,  windows,  filter,   ids, dedup,  (Kafka or
//!   a file)    validate,  anonymous  quotas,   aggregate expiry       a file)
//!              hash codes -IP        memory    threshold
//! ```
//!
//! # Layout
//!
//! - [`event`]: the input contract; raw card codes are hashed here and dropped.
//! - [`enrich`]: MaxMind GeoIP2/GeoLite2 lookups.
//! - [`state`]: keyed sliding windows, distinct sets, GCRA quotas, account and
//!   card memory, the key budget.
//! - [`rules`]: rule files (spec), their compiled form, loading with positions.
//! - [`engine`]: steps 2 to 6 joined; pure and deterministic.
//! - [`decision`]: decision ids, the active-decision book, expiry.
//! - [`pipeline`]: the replay file source and the traffic generator.
//! - [`kafka`]: the live pipeline (`kamiguard run`): consume, decide, publish, commit, restore.
//! - [`scenario`]: golden scenario folders, run by `kamiguard test-rules`.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`reload`]: hot reload of the rule files (SIGHUP or a change on disk).
//! - [`admin`]: the admin API on its own listener: named tokens, an audit record before every change.
//! - [`allowlist`]: the allowlist shared by every instance through a compacted topic.
//! - [`secret`]: secrets given inline, by environment variable or by file; redacted in `Debug`.
//! - [`http`]: serving an endpoint with a connection cap, timeouts and optional TLS.
//! - [`bench`]: `kamiguard bench`, the pipeline against a Kafka passthrough on the same broker.
//! - [`config`]: the service configuration file.
//! - [`demo`]: `kamiguard demo` on librdkafka's mock cluster, and its made-up geo databases.

// The one exception is the prefetch hint in `state::store`.
#![deny(unsafe_code)]

pub mod admin;
pub mod allowlist;
pub mod bench;
pub mod config;
pub mod decision;
pub mod demo;
pub mod engine;
pub mod enrich;
pub mod event;
pub mod http;
pub mod kafka;
pub mod key;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod rules;
pub mod scenario;
pub mod secret;
pub mod state;
pub mod units;

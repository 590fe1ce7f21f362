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
//! [`engine`] joins steps 2 to 6; [`kafka`] (live) and [`replay`] (a file)
//! feed it and carry its decisions away. `docs/contract.md` is the contract
//! with the services on either side: topics, attempt and decision fields,
//! keys and headers.
//!
//! # Layout
//!
//! The steps of the flow, in order:
//!
//! - [`event`]: the input contract; raw card codes are hashed here and dropped.
//! - [`enrich`]: MaxMind GeoIP2/GeoLite2 lookups.
//! - [`state`]: keyed sliding windows, distinct sets, GCRA quotas, account and
//!   card memory, the key budget, the event-time clock.
//! - [`rules`]: rule files (spec), their compiled form, loading and its
//!   errors with positions, filters.
//! - [`engine`]: steps 2 to 6 joined, pure and deterministic; one file per
//!   job, and one per kind of rule under `engine/kinds/`.
//! - [`decision`]: decision ids, the active-decision book, expiry.
//!
//! Shared by every step:
//!
//! - [`key`]: the one hash every state key, book entry and allowlist uses.
//! - [`units`]: time in milliseconds and money in fen, and how they read.
//!
//! The product around the engine:
//!
//! - [`kafka`]: the live pipeline (`kamiguard run`): the consume loop, the
//!   per-message handler, commit tracking, assignment and restore, topic
//!   creation, event-time order, the split topology, the book and allowlist
//!   followers.
//! - [`replay`]: `kamiguard replay`, a file of attempts through the same engine.
//! - [`backtest`]: `kamiguard backtest`, the analyst's workbench: a history
//!   through the engine, scored against outcome labels, diffed against a
//!   baseline, swept, drawn as one HTML page.
//! - [`scenario`]: golden scenario folders, run by `kamiguard test-rules`.
//! - [`reload`]: hot reload of the rule files (SIGHUP or a change on disk).
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`admin`]: the admin API on its own listener: named tokens, an audit record before every change.
//! - [`allowlist`]: the allowlist shared by every instance through a compacted topic.
//! - [`secret`]: secrets given inline, by environment variable or by file; redacted in `Debug`.
//! - [`http`]: serving an endpoint with a connection cap, timeouts and optional TLS.
//! - [`config`]: the service configuration file.
//!
//! Apart from the product, never imported by it (`tests/layout.rs`):
//!
//! - [`tools`]: `kamiguard bench`, `kamiguard demo`, the traffic generator
//!   and the made-up geo databases.

// Unsafe code is refused except where a site allows it with a SAFETY note:
// reading a string slice the fast event reader has already bounded
// (`event::fast`), inserting into a table slot just found under its lock and
// reaching that slot's value (`state::store`), and the prefetch hint
// (`state::store::prefetch`).
#![deny(unsafe_code)]

pub mod admin;
pub mod allowlist;
pub mod backtest;
pub mod config;
pub mod decision;
pub mod engine;
pub mod enrich;
pub mod event;
pub mod http;
pub mod kafka;
pub mod key;
pub mod metrics;
pub mod reload;
pub mod replay;
pub mod rules;
pub mod scenario;
pub mod secret;
pub mod state;
pub mod tools;
pub mod units;

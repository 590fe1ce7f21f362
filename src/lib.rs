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
//! - [`pipeline`]: sources and sinks; today the replay file source.
//! - [`scenario`]: golden scenario folders, run by `kamiguard test-rules`.
//! - [`config`]: the service configuration file.

pub mod config;
pub mod decision;
pub mod engine;
pub mod enrich;
pub mod event;
pub mod pipeline;
pub mod rules;
pub mod scenario;
pub mod state;

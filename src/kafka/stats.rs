//! The live pipeline's counters, readable while it runs (the demo's
//! summary, the bench's figures).

use std::sync::atomic::AtomicU64;

/// Live counters, readable while the pipeline runs (the demo's summary, metrics).
#[derive(Debug, Default)]
pub struct RunStats {
    /// Messages taken from the attempts topic (live, not restore).
    pub consumed: AtomicU64,
    /// Valid events processed by the engine.
    pub events: AtomicU64,
    /// Events dropped as redeliveries.
    pub duplicates: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// Decisions published.
    pub decisions: AtomicU64,
    /// Events replayed into state by restores (no decisions published).
    pub restored: AtomicU64,
    /// Offset commits sent.
    pub commits: AtomicU64,
    /// Copies of attempts forwarded to internal topics (split pipeline).
    pub routed: AtomicU64,
    /// Attempts (or their copies) run through the engine, live.
    pub decided: AtomicU64,
}

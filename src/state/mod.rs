//! Step 3 of the flow: keyed state on event time.
//!
//! Sliding sums and bounded distinct sets per rule and key ([`window`]), GCRA
//! quotas ([`quota`]), per-account and per-card memory and the dedup set
//! ([`memory`]), all held in `DashMap`s counted against one [`StateBudget`]
//! ([`store`]). Nothing here reads the wall clock: time is the event time the
//! engine passes in.

pub mod clock;
pub mod memory;
pub mod quota;
pub mod store;
pub mod window;

pub use clock::EventClock;
pub use memory::{AccountMemory, CardMemory, Place, Recalled, SeenEvents};
pub use quota::KeyedQuota;
pub use store::{BudgetStats, CapHits, KeyedStore, LastSeen, StateBudget};
pub use window::{Cell, DistinctWindow, SlidingCount, SlidingSum, BUCKETS};

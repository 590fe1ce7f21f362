//! Tools around the product, not the product: the benchmark harness
//! (`kamiguard bench`), the demo (`kamiguard demo`), the traffic generator
//! (`kamiguard generate`) and the made-up geo databases tests and the demo
//! use.
//!
//! The product (the live service, replay, `check-rules`, `test-rules`) never
//! imports from here; `tests/layout.rs` holds it to that. The command line,
//! tests, benches and examples do.

pub mod bench;
pub mod demo;
pub mod fixtures;
pub mod generate;

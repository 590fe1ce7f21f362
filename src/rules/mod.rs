//! Step 4 of the flow: rules. [`spec`] is what the security team writes (TOML,
//! read with serde), [`compile`] turns it into [`CompiledRule`]s the engine
//! runs, [`load`] reads files and reports every error with its position, and
//! [`filter`] evaluates conditions on one attempt.

pub mod compile;
pub mod errors;
pub mod filter;
pub mod honey;
pub mod load;
pub mod spec;

pub use compile::{Allow, BreakerConfig, CompiledAggregate, CompiledKind, CompiledRule, Ladder};
pub use errors::{line_column, RuleError, RuleErrors};
pub use filter::{Facts, FieldIndex, Filter};
pub use load::{compile_sources, load_rules, rule_files, RuleSet};
pub use spec::{Action, KeyName, Mode, RuleSpec};

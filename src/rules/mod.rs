//! Step 4 of the flow: rules. [`spec`] is what the security team writes (TOML,
//! read with serde), [`compile`] turns it into [`CompiledRule`]s the engine
//! runs, [`load`] reads files and reports every error with its position
//! ([`errors`]), and [`filter`] evaluates conditions on one attempt.
//! [`modifiers`] compiles what any rule may add (a ladder, a breaker), and
//! [`honey`] reads honey lists.

pub mod compile;
pub mod errors;
pub mod filter;
pub mod honey;
pub mod load;
pub mod modifiers;
pub mod spec;

pub use compile::{Allow, CompiledAggregate, CompiledKind, CompiledRule};
pub use errors::{line_column, RuleError, RuleErrors};
pub use filter::{Facts, FieldIndex, Filter};
pub use load::{compile_sources, load_rules, rule_files, RuleSet};
pub use modifiers::{BreakerConfig, Ladder};
pub use spec::{Action, KeyName, Mode, RuleSpec};

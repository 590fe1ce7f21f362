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

#[cfg(test)]
mod tests {
    use super::{compile_sources, RuleErrors, RuleSet};

    /// One threshold rule with `rule`'s settings added, compiled as
    /// `check-rules` would (the unit tests of `compile` and `modifiers`).
    pub(super) fn compile(rule: &str) -> Result<RuleSet, RuleErrors> {
        let base = "id = \"r\"\nkind = \"threshold\"\ngroup_by = \"ip\"\naggregate = \"count\"\nwindow_secs = 60\nthreshold = 5\naction = \"block\"\nscore = 50\n";
        compile_sources(
            &[("r.toml".into(), format!("[[rule]]\n{base}{rule}"))],
            Default::default(),
        )
    }

    /// The errors of [`compile`], which must refuse it.
    pub(super) fn error(rule: &str) -> String {
        compile(rule).expect_err("refused").to_string()
    }
}

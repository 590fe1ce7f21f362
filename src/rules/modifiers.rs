//! What any rule may add to how it decides, beside its kind: a ladder of
//! longer durations for repeat offenders (`ladder_secs`), and a circuit
//! breaker on its blast radius (`breaker`). Compiled here from the rule's
//! spec; run by `engine::ladder` and `engine::breaker`.

use super::errors::Located;
use super::spec::{Mode, RuleSpec, MAX_DURATION_SECS};
use crate::units::secs_to_ms;

/// A rule's ladder of durations for repeat offenders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    /// Each step's duration, ms (`None`: until released).
    pub steps_ms: Vec<Option<i64>>,
    /// How recent the subject's last decision by the rule must be for the
    /// next to climb a step, ms.
    pub within_ms: i64,
}

impl Ladder {
    /// The duration of the decision that is the subject's offence number
    /// `step` (0 for the first), ms; the last step repeats.
    pub fn duration_ms(&self, step: u32) -> Option<i64> {
        let last = self.steps_ms.len().saturating_sub(1);
        self.steps_ms.get((step as usize).min(last)).copied().flatten()
    }
}

/// A rule's circuit breaker, compiled (see [`crate::rules::spec::BreakerSpec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub multiple: f64,
    pub min_per_minute: u32,
    pub max_per_minute: Option<u32>,
    pub trailing_mins: u32,
    pub cooldown_ms: i64,
}

/// Longest history a breaker's usual rate is taken over: a day of minutes.
pub const MAX_TRAILING_MINS: u32 = 1440;

/// Longest a tripped breaker keeps its rule in shadow: a day.
pub const MAX_COOLDOWN_SECS: u64 = 86_400;

/// Longest a ladder remembers a subject's last decision: a year.
pub const MAX_REPEAT_WITHIN_SECS: u64 = 366 * 86_400;

/// Most steps a ladder may have.
pub const MAX_LADDER_STEPS: usize = 8;

/// `breaker = { ... }`: defaults filled in, bounds checked. A shadow rule
/// has nothing to switch off: a breaker on one is an error.
pub(super) fn compile_breaker(spec: &RuleSpec, errs: &mut Located) -> Option<BreakerConfig> {
    let b = spec.breaker.as_ref()?;
    let before = errs.len();
    if spec.mode == Mode::Shadow {
        errs.at(b, "a shadow rule has no breaker to trip: it enforces nothing".into());
    }
    let s = b.get_ref();
    let multiple = s.multiple.unwrap_or(10.0);
    if !(multiple.is_finite() && multiple > 1.0 && multiple <= 1000.0) {
        errs.at(b, "`breaker.multiple` must be above 1 and at most 1000".into());
    }
    let trailing_mins = s.trailing_mins.unwrap_or(60);
    if !(1..=MAX_TRAILING_MINS).contains(&trailing_mins) {
        errs.at(b, format!("`breaker.trailing_mins` must be 1 to {MAX_TRAILING_MINS}"));
    }
    let cooldown_secs = s.cooldown_secs.unwrap_or(1800);
    if !(1..=MAX_COOLDOWN_SECS).contains(&cooldown_secs) {
        errs.at(b, format!("`breaker.cooldown_secs` must be 1 to {MAX_COOLDOWN_SECS}"));
    }
    if s.max_per_minute == Some(0) || s.min_per_minute == Some(0) {
        errs.at(
            b,
            "`breaker.min_per_minute` and `max_per_minute` must be at least 1".into(),
        );
    }
    if errs.len() > before {
        return None;
    }
    Some(BreakerConfig {
        multiple,
        min_per_minute: s.min_per_minute.unwrap_or(20),
        max_per_minute: s.max_per_minute,
        trailing_mins,
        cooldown_ms: secs_to_ms(cooldown_secs),
    })
}

/// `ladder_secs` and `repeat_within_secs`, which go together and replace
/// `duration_secs`.
pub(super) fn compile_ladder(spec: &RuleSpec, errs: &mut Located) -> Option<Ladder> {
    let (steps, within) = match (&spec.ladder_secs, &spec.repeat_within_secs) {
        (None, None) => return None,
        (Some(_), None) => {
            errs.at(
                &spec.kind,
                "a rule with `ladder_secs` needs `repeat_within_secs`".into(),
            );
            return None;
        }
        (None, Some(w)) => {
            errs.at(w, "`repeat_within_secs` has no meaning without `ladder_secs`".into());
            return None;
        }
        (Some(s), Some(w)) => (s, w),
    };
    let before = errs.len();
    if spec.duration_secs.is_some() {
        errs.at(
            steps,
            "`ladder_secs` gives the durations: leave `duration_secs` out".into(),
        );
    }
    if steps.get_ref().is_empty() || steps.get_ref().len() > MAX_LADDER_STEPS {
        errs.at(steps, format!("`ladder_secs` must have 1 to {MAX_LADDER_STEPS} steps"));
    }
    // 0 is "until released": the longest there is.
    let length = |s: u64| if s == 0 { u64::MAX } else { s };
    if steps.get_ref().windows(2).any(|w| length(w[1]) < length(w[0])) {
        errs.at(
            steps,
            "`ladder_secs` must not get shorter from one step to the next (0, until released, is the longest)".into(),
        );
    }
    if steps.get_ref().iter().any(|s| *s > MAX_DURATION_SECS) {
        errs.at(
            steps,
            format!("a `ladder_secs` step must be at most {MAX_DURATION_SECS} seconds (0: until released)"),
        );
    }
    if !(1..=MAX_REPEAT_WITHIN_SECS).contains(within.get_ref()) {
        errs.at(
            within,
            format!("`repeat_within_secs` must be 1 to {MAX_REPEAT_WITHIN_SECS}"),
        );
    }
    if errs.len() > before {
        return None;
    }
    Some(Ladder {
        steps_ms: steps
            .get_ref()
            .iter()
            .map(|s| (*s > 0).then(|| secs_to_ms(*s)))
            .collect(),
        within_ms: secs_to_ms(*within.get_ref()),
    })
}

#[cfg(test)]
mod tests {
    use crate::rules::tests::{compile, error};

    #[test]
    fn a_ladder_is_checked_and_read_in_milliseconds() {
        let set = compile("ladder_secs = [60, 3600, 0]\nrepeat_within_secs = 86400\n").expect("valid");
        let ladder = set.rules[0].ladder.as_ref().expect("ladder");
        assert_eq!(ladder.steps_ms, [Some(60_000), Some(3_600_000), None]);
        assert_eq!(
            (ladder.duration_ms(0), ladder.duration_ms(7)),
            (Some(60_000), None),
            "the last step repeats"
        );
        assert!(error("ladder_secs = [60]\n").contains("needs `repeat_within_secs`"));
        assert!(error("repeat_within_secs = 60\n").contains("no meaning without `ladder_secs`"));
        assert!(error("ladder_secs = [3600, 60]\nrepeat_within_secs = 60\n").contains("must not get shorter"));
        assert!(error("ladder_secs = [0, 60]\nrepeat_within_secs = 60\n").contains("must not get shorter"));
        assert!(error("ladder_secs = []\nrepeat_within_secs = 60\n").contains("1 to 8 steps"));
        assert!(
            error("ladder_secs = [60]\nrepeat_within_secs = 60\nduration_secs = 60\n")
                .contains("leave `duration_secs` out")
        );
    }

    #[test]
    fn a_breaker_is_checked_and_gets_its_defaults() {
        let set = compile("breaker = { max_per_minute = 500 }\n").expect("valid");
        let b = set.rules[0].breaker.as_ref().expect("breaker");
        assert_eq!(
            (
                b.multiple,
                b.min_per_minute,
                b.max_per_minute,
                b.trailing_mins,
                b.cooldown_ms
            ),
            (10.0, 20, Some(500), 60, 1_800_000)
        );
        assert!(error("breaker = { multiple = 1.0 }\n").contains("above 1"));
        assert!(error("breaker = { trailing_mins = 0 }\n").contains("trailing_mins"));
        assert!(error("breaker = { cooldown_secs = 0 }\n").contains("cooldown_secs"));
        assert!(error("breaker = { min_per_minute = 0 }\n").contains("at least 1"));
        assert!(error("breaker = { mutliple = 5 }\n").contains("unknown field"));
        assert!(error("breaker = {}\nmode = \"shadow\"\n").contains("a shadow rule has no breaker"));
    }
}

//! One unit for each quantity, from the rule file to the decision's words.
//!
//! Time is event time in milliseconds everywhere inside: a rule file's and
//! the service configuration's `*_secs` values are turned into milliseconds
//! once, where they are read ([`secs_to_ms`]), and read back as words
//! ([`human_ms`]) or as the contract's `*_secs` fields ([`ms_to_secs`]) only
//! where a decision is written. Money is fen (1/100 yuan), as the attempt
//! contract carries it, and reads as yuan ([`yuan`]).

/// Milliseconds in a second.
pub const MS_PER_SEC: i64 = 1000;

/// Seconds from a configuration or rule file, as milliseconds (saturating:
/// the files bound what they accept well below this).
pub fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(MS_PER_SEC)
}

/// Milliseconds as whole seconds, for the contract's `*_secs` fields.
pub fn ms_to_secs(ms: i64) -> i64 {
    ms / MS_PER_SEC
}

/// A span as its largest whole unit: `600_000` → `10m`, `86_400_000` → `1d`.
pub fn human_ms(ms: i64) -> String {
    match ms_to_secs(ms) {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s >= 3_600 => format!("{:.1}h", s as f64 / 3_600.0),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Fen as yuan with the sign, e.g. `¥1,000.00`.
pub fn yuan(fen: u64) -> String {
    let whole = (fen / 100).to_string();
    let mut grouped = String::new();
    for (i, ch) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("¥{grouped}.{:02}", fen % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_time_read_naturally() {
        assert_eq!(yuan(123_456_789), "¥1,234,567.89");
        assert_eq!(yuan(5), "¥0.05");
        assert_eq!(human_ms(600_000), "10m");
        assert_eq!(human_ms(86_400_000), "1d");
        assert_eq!(human_ms(7_200_000), "2h");
        assert_eq!(human_ms(45_000), "45s");
        assert_eq!(human_ms(5_400_000), "1.5h");
    }

    #[test]
    fn seconds_become_milliseconds_without_overflow() {
        assert_eq!(secs_to_ms(30), 30_000);
        assert_eq!(secs_to_ms(u64::MAX), i64::MAX);
        assert_eq!(ms_to_secs(secs_to_ms(604_800)), 604_800);
    }
}

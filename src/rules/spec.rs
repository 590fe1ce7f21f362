//! The rule file format, as the security team writes it. Every field's `///`
//! line is that team's documentation; `README.md` repeats it with examples.
//! These types are only read and validated; the engine runs on
//! [`super::CompiledRule`].

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::event::{CardType, Channel, Kind, Outcome, Platform};

/// Longest decision duration: ten years (longer reads as "until released",
/// which is what leaving `duration_secs` out says).
pub const MAX_DURATION_SECS: u64 = 10 * 365 * 86_400;

fn yes() -> bool {
    true
}

/// One `[[rule]]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique id: letters, digits, `-` and `_`. Appears in decisions and metrics.
    pub id: Spanned<String>,
    /// What the rule catches, in a sentence.
    #[serde(default)]
    pub description: String,
    /// `threshold` (an aggregate over a window crosses a line), `quota` (GCRA
    /// rate limit per key), `match` (a single attempt is enough), `honey`
    /// (an attempt on a decoy code from `honey_list`) or `surge` (a key's
    /// count in a window against its own usual rate: a batch alarm).
    pub kind: Spanned<RuleKind>,
    /// `false` keeps the rule in the file but switches it off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Which attempts the rule looks at. Every condition given must hold.
    #[serde(default)]
    pub filter: FilterSpec,
    /// threshold, quota, surge: what state is kept per: `ip`, `ip_prefix`,
    /// `device`, `account`, `card`, `asn`, `batch` or `brand`.
    #[serde(default)]
    pub group_by: Option<Spanned<KeyName>>,
    /// threshold: `count` (attempts), `distinct` (different values of
    /// `distinct_of`) or `sum_face_value` (fen).
    #[serde(default)]
    pub aggregate: Option<Spanned<Aggregate>>,
    /// threshold with `aggregate = "distinct"`: the key whose values are counted.
    #[serde(default)]
    pub distinct_of: Option<Spanned<KeyName>>,
    /// threshold: length of the sliding window in seconds (1 to 604800).
    #[serde(default)]
    pub window_secs: Option<Spanned<u64>>,
    /// threshold: the rule fires when the aggregate reaches this value.
    #[serde(default)]
    pub threshold: Option<Spanned<u64>>,
    /// quota: attempts allowed per `period_secs`.
    #[serde(default)]
    pub limit: Option<Spanned<u32>>,
    /// quota: the period `limit` applies to, in seconds.
    #[serde(default)]
    pub period_secs: Option<Spanned<u64>>,
    /// quota: attempts allowed back to back (default: `limit`).
    #[serde(default)]
    pub burst: Option<Spanned<u32>>,
    /// surge: the span of history a key's usual rate is taken over, in
    /// seconds, a whole number of windows (`window_secs`).
    #[serde(default)]
    pub baseline_secs: Option<Spanned<u64>>,
    /// surge: how many times its usual rate the current window must reach.
    #[serde(default)]
    pub factor: Option<Spanned<f64>>,
    /// surge: the fewest attempts in the current window for it to fire.
    #[serde(default)]
    pub min_count: Option<Spanned<u64>>,
    /// honey: the file of decoy code hashes, relative to this rule file.
    #[serde(default)]
    pub honey_list: Option<Spanned<String>>,
    /// Words for what is counted, used in the reason sentence ("failed codes").
    #[serde(default)]
    pub noun: Option<String>,
    /// `freeze` (card or account), `block` (ip, prefix, device, asn),
    /// `challenge` (step-up verification) or `review` (manual review).
    pub action: Spanned<Action>,
    /// What the decision applies to. Default: `group_by` for threshold and
    /// quota rules, `account` for match rules.
    #[serde(default)]
    pub scope: Option<Spanned<KeyName>>,
    /// How long the decision lasts, in seconds of event time. Absent or 0:
    /// until released.
    #[serde(default)]
    pub duration_secs: Option<u64>,
    /// Repeat offenders: the duration of a first decision, a second, and so
    /// on, in seconds (0: until released); past the end the last step
    /// repeats. Instead of `duration_secs`.
    #[serde(default)]
    pub ladder_secs: Option<Spanned<Vec<u64>>>,
    /// With `ladder_secs`: a decision of this rule on a subject it decided
    /// no longer ago than this climbs one step; after a longer quiet spell
    /// the subject starts again at the first.
    #[serde(default)]
    pub repeat_within_secs: Option<Spanned<u64>>,
    /// Circuit breaker: an enforcing rule that fires far above its own
    /// usual rate switches itself to shadow for a while (see
    /// [`BreakerSpec`]).
    #[serde(default)]
    pub breaker: Option<Spanned<BreakerSpec>>,
    /// Severity, 0 to 100.
    pub score: Spanned<u64>,
    /// `enforce` (default) or `shadow` (published for measurement only).
    #[serde(default)]
    pub mode: Mode,
    /// Subjects this rule never fires on.
    #[serde(default)]
    pub allow: AllowSpec,
}

/// When a rule's circuit breaker trips, on event time: in one minute it
/// makes more than `max_per_minute` decisions, or at least
/// `min_per_minute` and more than `multiple` times its average minute over
/// the `trailing_mins` before. It then publishes in shadow mode for
/// `cooldown_secs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// How many times its usual rate a minute must reach (default 10).
    #[serde(default)]
    pub multiple: Option<f64>,
    /// Fewest decisions in a minute for the multiple to count (default 20),
    /// so a rule that usually fires once an hour does not trip at three.
    #[serde(default)]
    pub min_per_minute: Option<u32>,
    /// Decisions in a minute that trip it whatever the usual rate (default: none).
    #[serde(default)]
    pub max_per_minute: Option<u32>,
    /// Minutes of history the usual rate is taken over (default 60, 1 to 1440).
    #[serde(default)]
    pub trailing_mins: Option<u32>,
    /// How long the rule stays in shadow once tripped (default 1800).
    #[serde(default)]
    pub cooldown_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Threshold,
    Quota,
    Match,
    Honey,
    Surge,
}

/// A key state can be grouped by, and a decision scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyName {
    Card,
    Account,
    Device,
    Ip,
    IpPrefix,
    Asn,
    /// The card's batch (`card.batch`).
    Batch,
    /// The card's brand (`card.brand`).
    Brand,
}

impl KeyName {
    /// Every key name, in declaration order.
    pub const ALL: [KeyName; 8] = [
        KeyName::Card,
        KeyName::Account,
        KeyName::Device,
        KeyName::Ip,
        KeyName::IpPrefix,
        KeyName::Asn,
        KeyName::Batch,
        KeyName::Brand,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyName::Card => "card",
            KeyName::Account => "account",
            KeyName::Device => "device",
            KeyName::Ip => "ip",
            KeyName::IpPrefix => "ip_prefix",
            KeyName::Asn => "asn",
            KeyName::Batch => "batch",
            KeyName::Brand => "brand",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    Count,
    Distinct,
    SumFaceValue,
}

/// What a decision asks the redemption service to do. Ordered by strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Release,
    Review,
    Challenge,
    Block,
    Freeze,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Release => "release",
            Action::Review => "review",
            Action::Challenge => "challenge",
            Action::Block => "block",
            Action::Freeze => "freeze",
        }
    }

    /// Strength for "a stronger action publishes": block and freeze are equal
    /// (they apply to different scopes).
    pub fn strength(self) -> u8 {
        match self {
            Action::Release => 0,
            Action::Review => 1,
            Action::Challenge => 2,
            Action::Block | Action::Freeze => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// Conditions on an attempt. A list matches when the attempt's value is in it;
/// a condition on a fact the attempt does not carry (no device, no address,
/// unknown account age) does not hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// `activation`, `redemption`.
    #[serde(default)]
    pub kind: Vec<Kind>,
    /// Outcomes as the redemption service reported them.
    #[serde(default)]
    pub outcome: Vec<Outcome>,
    /// `true`: only attempts whose code did not work (invalid_code, wrong_pin,
    /// expired, already_used); `false`: only the others.
    #[serde(default)]
    pub failed: Option<bool>,
    /// Card issuers, e.g. `["xiaomi", "jd"]`.
    #[serde(default)]
    pub brand: Vec<String>,
    /// `physical`, `e_card`, `custom`, `membership`, `service`, `coupon_pack`.
    #[serde(default)]
    pub card_type: Vec<CardType>,
    /// Face value at least this many fen.
    #[serde(default)]
    pub min_face_value_fen: Option<u64>,
    /// Face value at most this many fen.
    #[serde(default)]
    pub max_face_value_fen: Option<u64>,
    /// `app`, `web`, `store`, `api`.
    #[serde(default)]
    pub channel: Vec<Channel>,
    /// `android`, `ios`, `web`, `pos`, `other`.
    #[serde(default)]
    pub platform: Vec<Platform>,
    /// Account created at least this long before the attempt.
    #[serde(default)]
    pub min_account_age_secs: Option<u64>,
    /// Account created at most this long before the attempt.
    #[serde(default)]
    pub max_account_age_secs: Option<u64>,
    /// Real-name verification status.
    #[serde(default)]
    pub verified: Option<bool>,
    /// Country of the address (City database), ISO 3166-1 alpha-2.
    #[serde(default)]
    pub ip_country: Vec<Spanned<String>>,
    /// Autonomous system of the address (ASN database).
    #[serde(default)]
    pub asn: Vec<u32>,
    /// Any of: `hosting`, `anonymous`, `vpn`, `tor`, `public_proxy`,
    /// `residential_proxy` (Anonymous-IP database).
    #[serde(default)]
    pub network: Vec<Spanned<String>>,
    /// `true`: the address's country differs from `account.country` (City database).
    #[serde(default)]
    pub country_mismatch: Option<bool>,
    /// `true`: the device has never succeeded on this account, and the account
    /// has succeeded before from some other device.
    #[serde(default)]
    pub new_device: Option<bool>,
    /// `true`: the card is bound to (was activated by) a different account.
    #[serde(default)]
    pub bound_to_other_account: Option<bool>,
    /// Distance from the account's last successful place, at least this many
    /// km (City database).
    #[serde(default)]
    pub min_distance_km: Option<f64>,
    /// Speed needed to get here from the account's last successful place, at
    /// least this many km/h (City database).
    #[serde(default)]
    pub min_speed_kmh: Option<f64>,
    /// Attempts matching every condition in this table are left out.
    #[serde(default)]
    pub exclude: Option<Box<FilterSpec>>,
}

/// Subjects a rule never fires on.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowSpec {
    /// Account ids.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Address ranges, e.g. `"10.0.0.0/8"`, `"2001:db8::/32"`.
    #[serde(default)]
    pub cidrs: Vec<Spanned<String>>,
    /// Device fingerprints.
    #[serde(default)]
    pub devices: Vec<String>,
}

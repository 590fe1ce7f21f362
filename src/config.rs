//! The service configuration file (`config/kamiguard.toml`) and its
//! environment overrides. Every key is optional and has a safe default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::engine::EngineConfig;
use crate::enrich::GeoConfig;
use crate::kafka::{KafkaConfig, PipelineConfig};
use crate::rules::line_column;
use crate::secret::Secret;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Key for hashing raw card codes: `{ env = … }` or `{ file = … }`
    /// (`crate::secret`). The `KAMIGUARD_CODE_KEY` or `KAMIGUARD_CODE_KEY_FILE`
    /// environment variable wins over this.
    #[serde(default)]
    pub code_key: Option<Secret>,
    /// Rule file or directory. Relative paths are relative to this file.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// GeoIP2/GeoLite2 database paths.
    #[serde(default)]
    pub geo: GeoConfig,
    /// Engine limits.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Brokers, topics, group and librdkafka properties of `kamiguard run`.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Batching, commits, restore and shutdown of `kamiguard run`.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The `/metrics`, `/healthz` and `/readyz` endpoint of `kamiguard run`.
    #[serde(default)]
    pub http: HttpConfig,
    /// The admin API (off unless a token is set).
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The HTTP endpoint of `kamiguard run`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// Address to listen on. Loopback by default; `0.0.0.0:9464` to be scraped
    /// from outside the host. Env: `KAMIGUARD_HTTP_LISTEN`.
    pub listen: std::net::SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Settings out of their range, one `file:line:column: message` a line.
    #[error("{}", .0.join("\n"))]
    OutOfRange(Vec<String>),
    #[error("{var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("{path}: {key}: {message}")]
    Secret {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A setting's allowed range: its key as written in the file, its value,
/// and the smallest and largest value kamiguard can work with.
struct Range {
    key: &'static str,
    value: i64,
    min: i64,
    max: i64,
    why: &'static str,
}

const DAY_SECS: i64 = 86_400;

impl Config {
    /// Every numeric setting with the range it must be in. The upper bounds
    /// keep each value's millisecond form far from overflowing an `i64` and
    /// the lower ones refuse values that silently switch a part off (no
    /// state at all for `max_keys = 0`, a busy loop for a zero interval).
    fn ranges(&self) -> Vec<Range> {
        let (e, p, k) = (&self.engine, &self.pipeline, &self.kafka);
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let u = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let r = |key, value, min, max, why| Range {
            key,
            value,
            min,
            max,
            why,
        };
        let mut all = vec![
            r(
                "engine.max_keys",
                u(e.max_keys),
                1,
                1_000_000_000,
                "0 would keep no state: no rule could count",
            ),
            r(
                "engine.lateness_secs",
                n(e.lateness_secs),
                0,
                DAY_SECS,
                "seconds, at most a day",
            ),
            r(
                "engine.max_ahead_secs",
                n(e.max_ahead_secs),
                0,
                DAY_SECS,
                "seconds, at most a day",
            ),
            r(
                "engine.dedup_window_secs",
                n(e.dedup_window_secs),
                1,
                7 * DAY_SECS,
                "seconds, at most a week",
            ),
            r(
                "engine.dedup_max_ids",
                u(e.dedup_max_ids),
                1,
                1_000_000_000,
                "ids per generation",
            ),
            r(
                "engine.memory_ttl_secs",
                n(e.memory_ttl_secs),
                1,
                10 * 365 * DAY_SECS,
                "seconds, at most ten years",
            ),
            r(
                "engine.sweep_every_secs",
                n(e.sweep_every_secs),
                1,
                DAY_SECS,
                "seconds, at most a day",
            ),
            r(
                "engine.ipv4_prefix_len",
                e.ipv4_prefix_len.into(),
                0,
                32,
                "bits of an IPv4 address",
            ),
            r(
                "engine.ipv6_prefix_len",
                e.ipv6_prefix_len.into(),
                0,
                128,
                "bits of an IPv6 address",
            ),
            r(
                "pipeline.batch_events",
                u(p.batch_events),
                1,
                1_000_000,
                "events per hand-off",
            ),
            r(
                "pipeline.batch_ms",
                n(p.batch_ms),
                1,
                60_000,
                "milliseconds, at most a minute",
            ),
            r(
                "pipeline.in_flight_batches",
                u(p.in_flight_batches),
                1,
                10_000,
                "hand-offs",
            ),
            r(
                "pipeline.commit_interval_ms",
                n(p.commit_interval_ms),
                1,
                3_600_000,
                "milliseconds, at most an hour",
            ),
            r(
                "pipeline.restore_idle_secs",
                n(p.restore_idle_secs),
                1,
                3_600,
                "seconds, at most an hour",
            ),
            r(
                "pipeline.shutdown_timeout_secs",
                n(p.shutdown_timeout_secs),
                1,
                3_600,
                "seconds, at most an hour",
            ),
            r(
                "pipeline.rules_poll_secs",
                n(p.rules_poll_secs),
                0,
                DAY_SECS,
                "seconds (0: only on SIGHUP)",
            ),
            r(
                "kafka.partitions",
                k.partitions.into(),
                1,
                100_000,
                "partitions of created topics",
            ),
            r(
                "kafka.replication_factor",
                k.replication_factor.into(),
                -1,
                64,
                "-1 takes the broker's default",
            ),
        ];
        if let Some(secs) = p.restore_lookback_secs {
            all.push(r(
                "pipeline.restore_lookback_secs",
                n(secs),
                1,
                365 * DAY_SECS,
                "seconds, at most a year",
            ));
        }
        all
    }

    /// Every setting out of its range, each as `file:line:column: message`
    /// (the position of the value in `text`, the file's contents).
    pub fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let doc = toml::de::DeTable::parse(text).ok();
        let errors: Vec<String> = self
            .ranges()
            .into_iter()
            .filter(|r| r.value < r.min || r.value > r.max || (r.key == "kafka.replication_factor" && r.value == 0))
            .map(|r| {
                let offset = doc.as_ref().and_then(|d| value_offset(d.get_ref(), r.key)).unwrap_or(0);
                let (line, column) = line_column(text, offset);
                let range = if r.key == "kafka.replication_factor" {
                    "-1 or 1 to 64".to_string()
                } else {
                    format!("{} to {}", r.min, r.max)
                };
                format!(
                    "{}:{line}:{column}: `{}` is {}; it must be {range} ({})",
                    path.display(),
                    r.key,
                    r.value,
                    r.why
                )
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::OutOfRange(errors))
        }
    }
}

/// Where the value of `dotted` (`engine.max_keys`) starts in the parsed file.
fn value_offset(table: &toml::de::DeTable<'_>, dotted: &str) -> Option<usize> {
    let (head, rest) = match dotted.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (dotted, None),
    };
    let (_, value) = table.iter().find(|(k, _)| k.get_ref() == head)?;
    match rest {
        None => Some(value.span().start),
        Some(rest) => value_offset(value.get_ref().as_table()?, rest),
    }
}

/// Environment variables that override the file, by key.
pub const ENV_OVERRIDES: [(&str, &str); 4] = [
    ("KAMIGUARD_RULES", "rules"),
    ("KAMIGUARD_GEO_CITY", "geo.city"),
    ("KAMIGUARD_GEO_ASN", "geo.asn"),
    ("KAMIGUARD_GEO_ANONYMOUS", "geo.anonymous"),
];

/// Overrides `kafka.brokers`.
pub const BROKERS_ENV: &str = "KAMIGUARD_BROKERS";
/// Overrides `kafka.group_id`.
pub const GROUP_ID_ENV: &str = "KAMIGUARD_GROUP_ID";
/// Overrides `http.listen`.
pub const HTTP_LISTEN_ENV: &str = "KAMIGUARD_HTTP_LISTEN";
/// Overrides `admin.listen`.
pub const ADMIN_LISTEN_ENV: &str = "KAMIGUARD_ADMIN_LISTEN";

impl Config {
    /// Reads `path`, resolves relative paths against its folder, then applies
    /// environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(path, &text)?;
        config.check(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.admin.tls_cert,
            &mut config.admin.tls_key,
            &mut config.rules,
            &mut config.geo.city,
            &mut config.geo.asn,
            &mut config.geo.anonymous,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        // The file's secrets first: those the environment gives
        // (`KAMIGUARD_CODE_KEY`, `…_FILE`) arrive read, and a `_FILE` path is
        // the process's, not relative to this file.
        config.resolve_secrets(path, &|k| std::env::var(k).ok())?;
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Reads every `{ env = … }` and `{ file = … }` secret (files relative
    /// to the config file's folder). A secret that cannot be read stops the
    /// start with the key that names it.
    pub fn resolve_secrets(&mut self, path: &Path, get: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let mut all: Vec<(String, &mut Secret)> = Vec::new();
        if let Some(key) = self.code_key.as_mut() {
            all.push(("code_key".into(), key));
        }
        for (i, t) in self.admin.tokens.iter_mut().enumerate() {
            all.push((format!("admin.tokens[{i}].token"), &mut t.token));
        }
        for (section, map) in [
            ("properties", &mut self.kafka.properties),
            ("consumer", &mut self.kafka.consumer),
            ("producer", &mut self.kafka.producer),
        ] {
            for (k, v) in map.iter_mut() {
                all.push((format!("kafka.{section}.\"{k}\""), v));
            }
        }
        for (key, secret) in all {
            secret.resolve(base, get).map_err(|message| ConfigError::Secret {
                path: path.to_owned(),
                key,
                message,
            })?;
        }
        Ok(())
    }

    /// Parses configuration text; errors carry line and column.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().replace('\n', " "),
            }
        })
    }

    /// Applies `KAMIGUARD_*` overrides read through `get`; a value that is
    /// set but cannot be used is an error, never ignored.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let [rules, city, asn, anonymous] =
            ENV_OVERRIDES.map(|(var, _)| get(var).filter(|v| !v.is_empty()).map(PathBuf::from));
        self.rules = rules.or(self.rules.take());
        self.geo.city = city.or(self.geo.city.take());
        self.geo.asn = asn.or(self.geo.asn.take());
        self.geo.anonymous = anonymous.or(self.geo.anonymous.take());
        let secret =
            |var: &'static str| Secret::from_env(var, &|k| get(k)).map_err(|message| ConfigError::Env { var, message });
        if let Some(key) = secret(crate::event::CODE_KEY_ENV)? {
            self.code_key = Some(key);
        }
        if let Some(token) = secret(crate::admin::ADMIN_TOKEN_ENV)? {
            self.admin.tokens.retain(|t| t.name != crate::admin::ENV_TOKEN_NAME);
            self.admin.tokens.push(crate::admin::AdminToken {
                name: crate::admin::ENV_TOKEN_NAME.into(),
                token,
            });
        }
        if let Some(brokers) = get(BROKERS_ENV).filter(|v| !v.is_empty()) {
            self.kafka.brokers = brokers;
        }
        if let Some(group) = get(GROUP_ID_ENV).filter(|v| !v.is_empty()) {
            self.kafka.group_id = group;
        }
        for (var, listen) in [
            (HTTP_LISTEN_ENV, &mut self.http.listen),
            (ADMIN_LISTEN_ENV, &mut self.admin.listen),
        ] {
            if let Some(text) = get(var).filter(|v| !v.is_empty()) {
                *listen = text.parse().map_err(|_| ConfigError::Env {
                    var,
                    message: format!("`{text}` is not an address and port, like 127.0.0.1:9464 or [::1]:9464"),
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_reported_with_position() {
        let err = Config::parse(Path::new("k.toml"), "rules = \"r\"\n[engine]\nmax_kyes = 5\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("k.toml:3:1: unknown field `max_kyes`"), "{text}");
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_their_key_position_and_range() {
        let text = "[engine]\nmax_keys = 0\nlateness_secs = 30\nmemory_ttl_secs = 18446744073709551615\n[pipeline]\nbatch_ms = 0\n[kafka]\nreplication_factor = 0\n";
        let path = Path::new("k.toml");
        let config = Config::parse(path, text).unwrap();
        let err = config.check(path, text).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(
            lines[0].starts_with("k.toml:2:12: `engine.max_keys` is 0; it must be 1 to 1000000000"),
            "{err}"
        );
        assert!(
            lines[1]
                .starts_with("k.toml:4:19: `engine.memory_ttl_secs` is 9223372036854775807; it must be 1 to 315360000"),
            "{err}"
        );
        assert!(lines[2].starts_with("k.toml:6:12: `pipeline.batch_ms` is 0;"), "{err}");
        assert!(
            lines[3].contains("`kafka.replication_factor` is 0; it must be -1 or 1 to 64"),
            "{err}"
        );
        // Through `load`, as `run`, `replay` and `check-rules` read it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, text).unwrap();
        assert!(matches!(Config::load(&file), Err(ConfigError::OutOfRange(e)) if e.len() == 4));
    }

    #[test]
    fn an_unusable_listen_address_in_the_environment_is_an_error() {
        let mut c = Config::default();
        let err = c
            .apply_env(|k| (k == HTTP_LISTEN_ENV).then(|| "localhost".to_string()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "KAMIGUARD_HTTP_LISTEN: `localhost` is not an address and port, like 127.0.0.1:9464 or [::1]:9464"
        );
        c.apply_env(|k| (k == HTTP_LISTEN_ENV).then(|| "[::1]:9000".to_string()))
            .unwrap();
        assert_eq!(c.http.listen.port(), 9000);
    }

    #[test]
    fn environment_wins_over_the_file() {
        let mut c = Config::parse(Path::new("k.toml"), "rules = \"a\"\n").unwrap();
        c.apply_env(|k| (k == "KAMIGUARD_RULES").then(|| "b".to_string()))
            .unwrap();
        assert_eq!(c.rules, Some(PathBuf::from("b")));
    }

    #[test]
    fn the_shipped_config_file_loads_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kamiguard.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = Config::parse(&path, &text).unwrap();
        let expected = Config {
            rules: Some(PathBuf::from("rules")),
            ..Config::default()
        };
        assert_eq!(
            parsed, expected,
            "config/kamiguard.toml and the built-in defaults differ"
        );
    }

    #[test]
    fn a_secret_that_cannot_be_read_names_its_key() {
        let path = Path::new("/etc/kamiguard/kamiguard.toml");
        let text = "[kafka.properties]\n\"sasl.password\" = { env = \"KG_NOT_SET\" }\n";
        let mut c = Config::parse(path, text).expect("parses");
        let e = c.resolve_secrets(path, &|_| None).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/kamiguard/kamiguard.toml: kafka.properties.\"sasl.password\": environment variable KG_NOT_SET is not set"
        );
        let mut c = Config::parse(path, text).expect("parses");
        c.resolve_secrets(path, &|k| (k == "KG_NOT_SET").then(|| "pw".into()))
            .expect("resolves");
        assert_eq!(c.kafka.producer_config().get("sasl.password"), Some("pw"));
        assert!(!format!("{c:?}").contains("\"pw\""));
    }
}

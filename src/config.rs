//! The service configuration file (`config/kamiguard.toml`) and its
//! environment overrides. Every key is optional and has a safe default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::engine::EngineConfig;
use crate::enrich::GeoConfig;
use crate::kafka::{KafkaConfig, PipelineConfig};
use crate::rules::line_column;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Key for hashing raw card codes. Prefer the `KAMIGUARD_CODE_KEY`
    /// environment variable, which wins over this, so the key stays out of files.
    #[serde(default)]
    pub code_key: Option<String>,
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

impl Config {
    /// Reads `path`, resolves relative paths against its folder, then applies
    /// environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.admin.allowlist_file,
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
        config.apply_env(|k| std::env::var(k).ok());
        Ok(config)
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

    /// Applies `KAMIGUARD_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let [rules, city, asn, anonymous] =
            ENV_OVERRIDES.map(|(var, _)| get(var).filter(|v| !v.is_empty()).map(PathBuf::from));
        self.rules = rules.or(self.rules.take());
        self.geo.city = city.or(self.geo.city.take());
        self.geo.asn = asn.or(self.geo.asn.take());
        self.geo.anonymous = anonymous.or(self.geo.anonymous.take());
        if let Some(brokers) = get(BROKERS_ENV).filter(|v| !v.is_empty()) {
            self.kafka.brokers = brokers;
        }
        if let Some(group) = get(GROUP_ID_ENV).filter(|v| !v.is_empty()) {
            self.kafka.group_id = group;
        }
        if let Some(addr) = get(HTTP_LISTEN_ENV).and_then(|v| v.parse().ok()) {
            self.http.listen = addr;
        }
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
    fn environment_wins_over_the_file() {
        let mut c = Config::parse(Path::new("k.toml"), "rules = \"a\"\n").unwrap();
        c.apply_env(|k| (k == "KAMIGUARD_RULES").then(|| "b".to_string()));
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
}

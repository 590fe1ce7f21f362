//! Secrets in the configuration: the code key, admin tokens and broker
//! credentials. Each can be written inline (for a laptop), or as
//! `{ env = "VAR" }` or `{ file = "/run/secrets/x" }` so that a ConfigMap
//! never has to hold one: Kubernetes Secrets arrive as environment
//! variables or mounted files. A file's trailing newline is dropped (what
//! `echo` and `kubectl create secret --from-file` leave).
//!
//! A [`Secret`] prints redacted in `Debug` and serialises as where it came
//! from, never as its value, so a config dumped to a log keeps it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged, deny_unknown_fields)]
enum Origin {
    Inline(String),
    Env { env: String },
    File { file: PathBuf },
}

/// A secret value and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    origin: Origin,
    /// Filled by [`Secret::resolve`] for `env` and `file`; the text itself
    /// for an inline secret.
    value: String,
}

impl Secret {
    /// A secret given as text (a test, or an environment variable read by
    /// the caller).
    pub fn new(value: impl Into<String>) -> Secret {
        let value = value.into();
        Secret {
            origin: Origin::Inline(String::new()),
            value,
        }
    }

    /// A secret read from the file at `path` now.
    pub fn from_file(path: &Path) -> Result<Secret, String> {
        let mut s = Secret {
            origin: Origin::File { file: path.to_owned() },
            value: String::new(),
        };
        s.resolve(Path::new("."), &|_| None)?;
        Ok(s)
    }

    /// `VAR` or, when that is unset or empty, the file named by `VAR_FILE`;
    /// `None` when neither is set.
    pub fn from_env(var: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Secret>, String> {
        if let Some(v) = get(var).filter(|v| !v.is_empty()) {
            return Ok(Some(Secret {
                origin: Origin::Env { env: var.to_string() },
                value: v,
            }));
        }
        let file_var = format!("{var}_FILE");
        match get(&file_var).filter(|v| !v.is_empty()) {
            Some(path) => Secret::from_file(Path::new(&path))
                .map(Some)
                .map_err(|e| format!("{file_var}: {e}")),
            None => Ok(None),
        }
    }

    /// Reads an `env` or `file` secret (relative paths against `base`);
    /// `get` reads the environment. An inline secret is already resolved.
    pub fn resolve(&mut self, base: &Path, get: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        match &self.origin {
            Origin::Inline(text) => {
                if !text.is_empty() {
                    self.value = text.clone();
                }
            }
            Origin::Env { env } => {
                self.value = get(env)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("environment variable {env} is not set"))?;
            }
            Origin::File { file } => {
                let path = if file.is_relative() {
                    base.join(file)
                } else {
                    file.clone()
                };
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                if text.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                self.value = text.to_string();
            }
        }
        Ok(())
    }

    /// The value. Call it where the secret is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret::new(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Inline(_) => f.write_str("Secret(<redacted>)"),
            Origin::Env { env } => write!(f, "Secret(<redacted>, from ${env})"),
            Origin::File { file } => write!(f, "Secret(<redacted>, from {})", file.display()),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let origin = Origin::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a string, { env = \"VARIABLE\" } or { file = \"/path/to/secret\" }")
        })?;
        let value = match &origin {
            Origin::Inline(text) => text.clone(),
            _ => String::new(),
        };
        Ok(Secret { origin, value })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.origin {
            Origin::Inline(_) => s.serialize_str("<redacted>"),
            other => other.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        a: Secret,
    }

    fn parse(text: &str) -> Result<Secret, String> {
        toml::from_str::<T>(text)
            .map(|t| t.a)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn inline_env_and_file_secrets_resolve_and_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("k"), "file-secret-value\n").expect("write");
        let env = |v: &str| (v == "KG_X").then(|| "env-secret-value".to_string());

        let mut inline = parse(r#"a = "inline-secret-value""#).expect("inline");
        let mut from_env = parse(r#"a = { env = "KG_X" }"#).expect("env");
        let mut from_file = parse(r#"a = { file = "k" }"#).expect("file");
        for s in [&mut inline, &mut from_env, &mut from_file] {
            s.resolve(dir.path(), &env).expect("resolve");
        }
        assert_eq!(inline.expose(), "inline-secret-value");
        assert_eq!(from_env.expose(), "env-secret-value");
        assert_eq!(from_file.expose(), "file-secret-value");
        for s in [&inline, &from_env, &from_file] {
            let shown = format!("{s:?} {s:#?} {}", toml::to_string(&T2 { a: s.clone() }).expect("toml"));
            assert!(!shown.contains("secret-value"), "{shown}");
        }
    }

    #[derive(Serialize)]
    struct T2 {
        a: Secret,
    }

    #[test]
    fn a_missing_source_is_an_error_that_names_it() {
        let mut s = parse(r#"a = { env = "KG_UNSET" }"#).expect("env");
        assert_eq!(
            s.resolve(Path::new("."), &|_| None),
            Err("environment variable KG_UNSET is not set".into())
        );
        let mut s = parse(r#"a = { file = "/nonexistent/kg" }"#).expect("file");
        assert!(s
            .resolve(Path::new("."), &|_| None)
            .unwrap_err()
            .contains("/nonexistent/kg"));
        assert!(parse(r#"a = { path = "x" }"#).unwrap_err().contains("{ env = "));
        assert!(parse("a = 3").is_err());
    }

    #[test]
    fn from_env_takes_the_variable_then_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        std::fs::write(&path, "from-file").expect("write");
        let p = path.display().to_string();
        let get = |v: &str| (v == "KG_T_FILE").then(|| p.clone());
        let s = Secret::from_env("KG_T", &get).expect("ok").expect("some");
        assert_eq!(s.expose(), "from-file");
        let get = |v: &str| (v == "KG_T").then(|| "direct".to_string());
        assert_eq!(
            Secret::from_env("KG_T", &get).expect("ok").expect("some").expose(),
            "direct"
        );
        assert!(Secret::from_env("KG_T", &|_| None).expect("ok").is_none());
    }
}

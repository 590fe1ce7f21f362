//! The admin API: how a fraud team undoes a freeze, and so also how an
//! insider would let a thief through. Three things keep it honest:
//!
//! - **Its own door.** It listens on `admin.listen` (loopback by default),
//!   apart from `/metrics` and the probes, with TLS when `admin.tls_cert`
//!   and `admin.tls_key` are set; a non-loopback address without TLS is
//!   refused at start.
//! - **Named tokens.** Every request carries `Authorization: Bearer <token>`,
//!   one of `admin.tokens` (each with a name) or `KAMIGUARD_ADMIN_TOKEN`
//!   (named `admin`). Tokens are compared in constant time (SHA-256 of both,
//!   then `subtle`), every configured one on every request.
//! - **A trail first.** Every change is published to the audit topic
//!   (`kafka.topics.audit`) with who, what, the subject, the required
//!   reason, the time and the decision it undoes, and takes effect only
//!   once the broker has acknowledged that record. Without the record, the
//!   caller gets 503 and nothing changes.
//!
//! Routes:
//! - `GET /admin/rules`: the loaded rules and their versions.
//! - `GET /admin/decisions`: the decisions in force.
//! - `POST /admin/decisions/release` `{"scope":"ip","subject":"…","mode":"enforce","reason":"…"}`:
//!   publishes a `release` decision on the decisions topic, whatever this
//!   instance remembers; every instance's book follows the topic (`kafka::book`).
//! - `GET /admin/allowlist`, `POST /admin/allowlist` and `DELETE
//!   /admin/allowlist` `{"kind":"account"|"device"|"cidr","value":"…","reason":"…","expires":RFC 3339?}`:
//!   entries that exempt from every rule, published on the allowlist topic
//!   that every instance follows (`crate::allowlist`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::allowlist::{Entry, Kind};
use crate::engine::Engine;
use crate::event::format_ts;
use crate::kafka::KafkaConfig;
use crate::rules::{KeyName, Mode};
use crate::secret::Secret;

/// Environment variable holding an admin token (or `…_FILE`, a file with
/// it), named [`ENV_TOKEN_NAME`] in the audit trail.
pub const ADMIN_TOKEN_ENV: &str = "KAMIGUARD_ADMIN_TOKEN";
pub const ENV_TOKEN_NAME: &str = "admin";
/// Shortest token accepted: shorter ones can be guessed over the network.
const MIN_TOKEN_BYTES: usize = 16;
/// Longest reason text kept in the audit record.
const MAX_REASON_BYTES: usize = 1000;

/// A named admin token.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who acts with it, as the audit trail names them.
    pub name: String,
    pub token: Secret,
}

/// The `[admin]` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The API is off unless at least one token is configured.
    pub tokens: Vec<AdminToken>,
    /// Its own address, loopback by default.
    pub listen: SocketAddr,
    /// PEM certificate chain and private key for TLS. Required to listen
    /// beyond loopback.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Longest wait for the broker to acknowledge an audit record, ms.
    pub audit_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            tokens: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            tls_cert: None,
            tls_key: None,
            audit_timeout_ms: 5000,
        }
    }
}

impl AdminConfig {
    /// Whether the API is on.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Refuses settings that would open the door: short or unnamed tokens,
    /// two tokens with one name, half a TLS identity, and a listener
    /// beyond loopback without TLS.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for t in &self.tokens {
            let good = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
            if !good {
                return Err(format!(
                    "admin token name {:?}: 1 to 64 letters, digits or . _ @ -",
                    t.name
                ));
            }
            if !names.insert(&t.name) {
                return Err(format!("admin token name {:?} is given twice", t.name));
            }
            if t.token.expose().len() < MIN_TOKEN_BYTES {
                return Err(format!(
                    "admin token {:?} is shorter than {MIN_TOKEN_BYTES} bytes",
                    t.name
                ));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err("admin.tls_cert and admin.tls_key go together".into());
            }
            (None, None) if self.enabled() && !self.listen.ip().is_loopback() => {
                return Err(format!(
                    "admin.listen = {} is reachable beyond this host: set admin.tls_cert and admin.tls_key, or listen on loopback",
                    self.listen
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

pub struct Admin {
    /// (name, SHA-256 of the token).
    tokens: Vec<(String, [u8; 32])>,
    engine: Arc<Engine>,
    producer: FutureProducer,
    decisions_topic: String,
    audit_topic: String,
    operations_topic: String,
    allowlist_topic: String,
    timeout: Duration,
}

impl Admin {
    /// The admin API, or `None` when no token is configured.
    pub fn new(config: &AdminConfig, kafka: &KafkaConfig, engine: Arc<Engine>) -> Result<Option<Arc<Admin>>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        config.validate()?;
        let timeout = Duration::from_millis(config.audit_timeout_ms.max(1));
        // A change waits for its records, so they must fail in bounded time:
        // the pipeline's own producer never gives up on a decision.
        let producer: FutureProducer = kafka
            .producer_config()
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()
            .map_err(|e| e.to_string())?;
        Ok(Some(Arc::new(Admin {
            tokens: config
                .tokens
                .iter()
                .map(|t| (t.name.clone(), Sha256::digest(t.token.expose().as_bytes()).into()))
                .collect(),
            engine,
            producer,
            decisions_topic: kafka.topics.decisions.clone(),
            audit_topic: kafka.topics.audit.clone(),
            operations_topic: kafka.topics.operations.clone(),
            allowlist_topic: kafka.topics.allowlist.clone(),
            timeout,
        })))
    }

    /// The name of the token the request carries.
    fn authorized(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        // Every token is compared, so the time taken says nothing of which matched.
        let mut found = None;
        for (name, want) in &self.tokens {
            if bool::from(digest.ct_eq(want)) {
                found = Some(name.clone());
            }
        }
        match found {
            Some(name) if !given.is_empty() => Ok(name),
            _ => Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            )),
        }
    }

    /// Serves the routes on `config.listen` (with TLS when configured)
    /// until `shutdown`, within `crate::http::Limits`. Returns the bound
    /// address.
    pub async fn serve(
        self: &Arc<Self>,
        config: &AdminConfig,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<SocketAddr, String> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::http::tls_acceptor(cert, key)?),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (admin.listen): {e}", config.listen))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(
            %bound,
            tls = tls.is_some(),
            tokens = self.tokens.len(),
            "admin API listening"
        );
        tokio::spawn(crate::http::serve(
            listener,
            self.router(),
            tls,
            crate::http::Limits::default(),
            "admin",
            shutdown,
        ));
        Ok(bound)
    }

    /// The `/admin/…` routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/admin/rules", get(rules))
            .route("/admin/decisions", get(decisions))
            .route("/admin/decisions/release", post(release))
            .route("/admin/breakers", get(breakers))
            .route("/admin/breakers/reset", post(reset_breaker))
            .route("/admin/allowlist", get(allowlist).post(allow_add).delete(allow_remove))
            .with_state(self.clone())
    }

    /// Publishes `record` to `topic` and waits for the broker.
    async fn publish(&self, topic: &str, key: &str, record: &[u8]) -> Result<(), String> {
        let r = FutureRecord::to(topic).key(key).payload(record);
        match self.producer.send(r, self.timeout).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.to_string()),
        }
    }

    /// Writes the audit record of an action; only an acknowledged record
    /// lets the action go on.
    async fn audit(&self, record: Value) -> Result<(), ApiError> {
        let key = format!(
            "{}:{}",
            record["scope"].as_str().unwrap_or_default(),
            record["subject"].as_str().unwrap_or_default()
        );
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        match self.publish(&self.audit_topic, &key, &bytes).await {
            Ok(()) => {
                tracing::info!(
                    actor = record["actor"].as_str().unwrap_or_default(),
                    action = record["action"].as_str().unwrap_or_default(),
                    scope = record["scope"].as_str().unwrap_or_default(),
                    subject = record["subject"].as_str().unwrap_or_default(),
                    reason = record["reason"].as_str().unwrap_or_default(),
                    "admin action audited"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    actor = record["actor"].as_str().unwrap_or_default(),
                    action = record["action"].as_str().unwrap_or_default(),
                    error = %e,
                    "admin action refused: its audit record was not acknowledged"
                );
                Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the audit record could not be written ({e}); nothing was changed"),
                ))
            }
        }
    }
}

type Reply = Result<Response, ApiError>;

/// An error answer: a status and `{"error": message}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// A body that is not the request asked for, with axum's own status: 413
/// past the body limit, 400 for bad JSON, 422 for a missing, unknown or
/// repeated field, 415 without a JSON content type.
fn rejected(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError(e.status(), e.body_text())
}

/// The required reason: what the trail says of why.
fn reason(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_REASON_BYTES {
        return Err(bad(format!(
            "`reason` is required: 1 to {MAX_REASON_BYTES} bytes saying why"
        )));
    }
    Ok(text.to_string())
}

fn now() -> String {
    format_ts(chrono::Utc::now().timestamp_millis())
}

async fn rules(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Reply {
    admin.authorized(&headers)?;
    let set = admin.engine.rules();
    let rules: Vec<_> = set
        .rules
        .iter()
        .map(|r| json!({"id": &*r.id, "version": &*r.version, "action": r.action.as_str(), "scope": r.scope.as_str(), "mode": r.mode.as_str()}))
        .collect();
    Ok(Json(json!({"version": set.version, "rules": rules, "disabled": set.disabled})).into_response())
}

fn active_json(a: &crate::decision::Active) -> Value {
    json!({
        "scope": a.scope.as_str(), "subject": &*a.subject, "mode": a.mode.as_str(),
        "action": a.action.as_str(), "rule": &*a.rule,
        "until": (a.until_ms != i64::MAX).then(|| format_ts(a.until_ms)),
    })
}

async fn decisions(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Reply {
    admin.authorized(&headers)?;
    let mut all: Vec<_> = admin.engine.decisions_in_force().iter().map(active_json).collect();
    all.sort_by_key(|d| d.to_string());
    Ok(Json(json!({ "decisions": all })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    scope: KeyName,
    subject: String,
    #[serde(default = "enforce")]
    mode: Mode,
    #[serde(default)]
    reason: String,
}

fn enforce() -> Mode {
    Mode::Enforce
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

async fn release(State(admin): State<Arc<Admin>>, headers: HeaderMap, body: Body<ReleaseRequest>) -> Reply {
    let actor = admin.authorized(&headers)?;
    let Json(req) = body.map_err(rejected)?;
    let why = reason(&req.reason)?;
    if req.subject.is_empty() || req.subject.len() > 256 {
        return Err(bad("`subject` must be 1 to 256 bytes"));
    }
    let undoes = admin.engine.in_force_on(req.scope, &req.subject, req.mode);
    admin
        .audit(json!({
            "at": now(), "actor": actor, "action": "release",
            "scope": req.scope.as_str(), "subject": &req.subject, "mode": req.mode.as_str(),
            "reason": why, "undoes": undoes.as_ref().map(active_json),
        }))
        .await?;
    let mut decision = admin.engine.release(req.scope, &req.subject, req.mode);
    decision.stamp(chrono::Utc::now());
    let body = serde_json::to_vec(&decision).map_err(|e| bad(e.to_string()))?;
    match admin.publish(&admin.decisions_topic, &decision.key(), &body).await {
        Ok(()) => {
            // As every other instance will, from the topic.
            admin.engine.book_published(&body);
            Ok(Json(serde_json::to_value(&decision).unwrap_or_default()).into_response())
        }
        Err(e) => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            format!("audited, but the release could not be published ({e}); nothing was lifted: try again"),
        )),
    }
}

async fn breakers(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Reply {
    admin.authorized(&headers)?;
    let states: Vec<Value> = admin
        .engine
        .breaker_states()
        .into_iter()
        .map(|(rule, trips, open)| json!({ "rule": &*rule, "trips": trips, "open": open }))
        .collect();
    Ok(Json(json!({ "breakers": states })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    rule: String,
    #[serde(default)]
    reason: String,
}

/// Closes a rule's circuit breaker on this instance (each instance's
/// breaker counts its own share of the traffic): audited first, then the
/// reset is published on the operations topic.
async fn reset_breaker(State(admin): State<Arc<Admin>>, headers: HeaderMap, body: Body<ResetRequest>) -> Reply {
    let actor = admin.authorized(&headers)?;
    let Json(req) = body.map_err(rejected)?;
    let why = reason(&req.reason)?;
    if !admin.engine.breaker_states().iter().any(|(r, ..)| **r == *req.rule) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "no rule in force by that id has a breaker".into(),
        ));
    }
    admin
        .audit(json!({
            "at": now(), "actor": actor, "action": "breaker_reset",
            "scope": "rule", "subject": &req.rule, "reason": why,
        }))
        .await?;
    let Some(event) = admin.engine.reset_breaker(&req.rule) else {
        return Err(ApiError(StatusCode::NOT_FOUND, "the rule went away meanwhile".into()));
    };
    let body = serde_json::to_vec(&event).unwrap_or_default();
    if let Err(e) = admin.publish(&admin.operations_topic, &req.rule, &body).await {
        tracing::warn!(error = %e, "breaker reset could not be published on the operations topic");
    }
    Ok(Json(serde_json::to_value(&event).unwrap_or_default()).into_response())
}

async fn allowlist(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Reply {
    admin.authorized(&headers)?;
    let list = admin.engine.allowlist();
    let entries: Vec<&Entry> = list.entries().collect();
    Ok(Json(json!({ "entries": entries })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRequest {
    kind: Kind,
    value: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    expires: Option<String>,
}

async fn allow_add(State(admin): State<Arc<Admin>>, headers: HeaderMap, body: Body<EntryRequest>) -> Reply {
    change_allowlist(&admin, &headers, body, true).await
}

async fn allow_remove(State(admin): State<Arc<Admin>>, headers: HeaderMap, body: Body<EntryRequest>) -> Reply {
    change_allowlist(&admin, &headers, body, false).await
}

async fn change_allowlist(admin: &Admin, headers: &HeaderMap, body: Body<EntryRequest>, add: bool) -> Reply {
    let actor = admin.authorized(headers)?;
    let Json(req) = body.map_err(rejected)?;
    let why = reason(&req.reason)?;
    if !add && req.expires.is_some() {
        return Err(bad("`expires` belongs to an entry being added"));
    }
    let entry = Entry {
        kind: req.kind,
        value: req.value,
        expires: req.expires,
        removed: !add,
        by: Some(actor.clone()),
        reason: Some(why.clone()),
        at: Some(now()),
    }
    .checked()
    .map_err(bad)?;
    let kind = serde_json::to_value(entry.kind).unwrap_or_default();
    admin
        .audit(json!({
            "at": entry.at, "actor": actor,
            "action": if add { "allowlist_add" } else { "allowlist_remove" },
            "scope": kind, "subject": &entry.value, "expires": entry.expires,
            "reason": why,
        }))
        .await?;
    let record = serde_json::to_vec(&entry).map_err(|e| bad(e.to_string()))?;
    admin
        .publish(&admin.allowlist_topic, &entry.key(), &record)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::BAD_GATEWAY,
                format!("audited, but the entry could not be published ({e}); nothing was changed: try again"),
            )
        })?;
    let changed = admin.engine.apply_allow(entry.clone());
    Ok(Json(json!({ "changed": changed, "entry": entry })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, value: &str) -> AdminToken {
        AdminToken {
            name: name.into(),
            token: value.into(),
        }
    }

    #[test]
    fn settings_that_would_open_the_door_are_refused() {
        let good = AdminConfig {
            tokens: vec![token("oncall", "0123456789abcdef")],
            ..AdminConfig::default()
        };
        assert_eq!(good.validate(), Ok(()));
        let open = AdminConfig {
            listen: "0.0.0.0:9465".parse().expect("addr"),
            ..good.clone()
        };
        assert!(open.validate().unwrap_err().contains("tls_cert"));
        let with_tls = AdminConfig {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..open.clone()
        };
        assert_eq!(with_tls.validate(), Ok(()));
        let half = AdminConfig {
            tls_key: None,
            ..with_tls
        };
        assert!(half.validate().unwrap_err().contains("go together"));
        for (tokens, want) in [
            (vec![token("oncall", "short")], "shorter than 16"),
            (vec![token("on call", "0123456789abcdef")], "letters"),
            (
                vec![token("a", "0123456789abcdef"), token("a", "fedcba9876543210")],
                "twice",
            ),
        ] {
            let c = AdminConfig {
                tokens,
                ..AdminConfig::default()
            };
            assert!(c.validate().unwrap_err().contains(want), "{want}");
        }
    }
}

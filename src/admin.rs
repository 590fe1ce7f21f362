//! The admin API, served beside `/metrics` under `/admin/`, and only when a
//! token is configured (`KAMIGUARD_ADMIN_TOKEN`, or `admin.token`). Every
//! request carries `Authorization: Bearer <token>`; the token is compared in
//! constant time (SHA-256 of both, then `subtle`).
//!
//! - `GET /admin/rules`: the loaded rules and their versions.
//! - `GET /admin/decisions`: the decisions in force.
//! - `POST /admin/decisions/release` `{"scope":"ip","subject":"…","mode":"enforce"}`:
//!   publishes a `release` decision on the decisions topic, whatever this
//!   instance remembers, and lifts what it had in force; every instance's
//!   book follows the topic (`kafka::book`).
//! - `GET /admin/allowlist`, `POST /admin/allowlist` and `DELETE
//!   /admin/allowlist` `{"kind":"account"|"device"|"cidr","value":"…"}`:
//!   entries that exempt from every rule, kept in `admin.allowlist_file` so
//!   they survive a restart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::engine::Engine;
use crate::event::format_ts;
use crate::kafka::KafkaConfig;
use crate::rules::{Allow, KeyName, Mode};
use crate::state::key_of;

/// Environment variable holding the admin token; wins over `admin.token`.
pub const ADMIN_TOKEN_ENV: &str = "KAMIGUARD_ADMIN_TOKEN";

/// The `[admin]` section of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The API is off unless a token is set. Prefer `KAMIGUARD_ADMIN_TOKEN`.
    pub token: Option<String>,
    /// Where allowlist entries are kept (JSON). Relative paths are relative
    /// to the configuration file. Default: `allowlist.json` beside it.
    pub allowlist_file: Option<PathBuf>,
}

/// Allowlist entries as typed, kept on disk.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowList {
    pub accounts: BTreeSet<String>,
    pub devices: BTreeSet<String>,
    pub cidrs: BTreeSet<IpNet>,
}

impl AllowList {
    /// Reads `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<AllowList, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AllowList::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes `path` whole, through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }

    /// The engine's form: key hashes and networks.
    pub fn to_allow(&self) -> Allow {
        Allow {
            accounts: self.accounts.iter().map(|a| key_of(a.as_str())).collect(),
            devices: self.devices.iter().map(|d| key_of(d.as_str())).collect(),
            cidrs: self.cidrs.iter().copied().collect(),
        }
    }
}

pub struct Admin {
    token_digest: [u8; 32],
    engine: Arc<Engine>,
    producer: FutureProducer,
    decisions_topic: String,
    allowlist: Mutex<AllowList>,
    allowlist_file: PathBuf,
}

impl Admin {
    /// The admin API, or `None` when no token is configured. Loads the
    /// allowlist file and applies it to `engine`.
    pub fn new(
        config: &AdminConfig,
        kafka: &KafkaConfig,
        engine: Arc<Engine>,
        default_dir: &Path,
    ) -> Result<Option<Arc<Admin>>, String> {
        let token = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| config.token.clone().filter(|t| !t.is_empty()));
        let Some(token) = token else { return Ok(None) };
        let allowlist_file = config
            .allowlist_file
            .clone()
            .unwrap_or_else(|| default_dir.join("allowlist.json"));
        let allowlist = AllowList::load(&allowlist_file)?;
        engine.set_global_allow(allowlist.to_allow());
        let producer: FutureProducer = kafka.producer_config().create().map_err(|e| e.to_string())?;
        Ok(Some(Arc::new(Admin {
            token_digest: Sha256::digest(token.as_bytes()).into(),
            engine,
            producer,
            decisions_topic: kafka.topics.decisions.clone(),
            allowlist: Mutex::new(allowlist),
            allowlist_file,
        })))
    }

    fn authorized(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        if bool::from(digest.ct_eq(&self.token_digest)) && !given.is_empty() {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            ))
        }
    }

    /// The `/admin/…` routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/admin/rules", get(rules))
            .route("/admin/decisions", get(decisions))
            .route("/admin/decisions/release", post(release))
            .route("/admin/allowlist", get(allowlist).post(allow_add).delete(allow_remove))
            .with_state(self.clone())
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

async fn decisions(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Reply {
    admin.authorized(&headers)?;
    let mut all: Vec<_> = admin
        .engine
        .decisions_in_force()
        .into_iter()
        .map(|a| {
            json!({
                "scope": a.scope.as_str(), "subject": &*a.subject, "mode": a.mode.as_str(),
                "action": a.action.as_str(), "rule": &*a.rule,
                "until": (a.until_ms != i64::MAX).then(|| format_ts(a.until_ms)),
            })
        })
        .collect();
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
}

fn enforce() -> Mode {
    Mode::Enforce
}

async fn release(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Result<Json<ReleaseRequest>, axum::extract::rejection::JsonRejection>,
) -> Reply {
    admin.authorized(&headers)?;
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    let mut decision = admin.engine.release(req.scope, &req.subject, req.mode);
    decision.stamp(chrono::Utc::now());
    let body = serde_json::to_vec(&decision).map_err(|e| bad(e.to_string()))?;
    let key = decision.key();
    let record = FutureRecord::to(&admin.decisions_topic).key(&key).payload(&body);
    match admin.producer.send(record, Duration::from_secs(30)).await {
        Ok(_) => Ok(Json(serde_json::to_value(&decision).unwrap_or_default()).into_response()),
        Err((e, _)) => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            format!("the release was booked but not published: {e}"),
        )),
    }
}

async fn allowlist(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Reply {
    admin.authorized(&headers)?;
    let list = admin.allowlist.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    kind: String,
    value: String,
}

async fn allow_add(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Result<Json<Entry>, axum::extract::rejection::JsonRejection>,
) -> Reply {
    change_allowlist(&admin, &headers, body, true)
}

async fn allow_remove(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Result<Json<Entry>, axum::extract::rejection::JsonRejection>,
) -> Reply {
    change_allowlist(&admin, &headers, body, false)
}

fn change_allowlist(
    admin: &Admin,
    headers: &HeaderMap,
    body: Result<Json<Entry>, axum::extract::rejection::JsonRejection>,
    add: bool,
) -> Reply {
    admin.authorized(headers)?;
    let Json(entry) = body.map_err(|e| bad(e.body_text()))?;
    let mut list = admin.allowlist.lock().unwrap_or_else(|p| p.into_inner());
    let mut next = list.clone();
    let changed = match entry.kind.as_str() {
        "account" if add => next.accounts.insert(entry.value),
        "account" => next.accounts.remove(&entry.value),
        "device" if add => next.devices.insert(entry.value),
        "device" => next.devices.remove(&entry.value),
        "cidr" => {
            let net: IpNet = entry
                .value
                .parse()
                .map_err(|_| bad("`value` must be a CIDR such as 10.0.0.0/8"))?;
            if add {
                next.cidrs.insert(net.trunc())
            } else {
                next.cidrs.remove(&net.trunc())
            }
        }
        _ => return Err(bad("`kind` must be account, device or cidr")),
    };
    if changed {
        // On disk first: an entry the API confirmed must survive a restart.
        next.save(&admin.allowlist_file).map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot save the allowlist: {e}"),
            )
        })?;
        admin.engine.set_global_allow(next.to_allow());
        *list = next.clone();
    }
    Ok(Json(json!({ "changed": changed, "allowlist": next })).into_response())
}

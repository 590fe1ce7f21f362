//! Hot reload of the rule files while `kamiguard run` runs: on SIGHUP, or when
//! a rule file or a honey list changes (polled: name, size and modification
//! time of every file, every `pipeline.rules_poll_secs`).
//!
//! The whole new set is compiled first; a set with any error never replaces
//! the running one: every error is logged as `file:line:column: message`,
//! counted (`kamiguard_rule_reloads_total{result="error"}`), and the old rules
//! keep working. A good set is swapped in between two events; rules whose
//! definition did not change keep their windows ([`Engine::replace_rules`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::engine::{Engine, Replaced};
use crate::enrich::GeoNeeds;
use crate::metrics::Metrics;
use crate::rules::{load_rules, rule_files};

/// Name, size and modification time of every rule file and every honey
/// list the rules in force read.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(path: &Path, engine: &Engine) -> Fingerprint {
    let mut files = rule_files(path).unwrap_or_default();
    files.extend(engine.rules().honey_lists());
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (f, size, modified)
        })
        .collect()
}

pub struct Reloader {
    path: PathBuf,
    available: GeoNeeds,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    seen: Fingerprint,
}

impl Reloader {
    /// Watches `path` (a rule file or directory) for `engine`. `available`:
    /// the geo databases that are open.
    pub fn new(path: PathBuf, available: GeoNeeds, engine: Arc<Engine>, metrics: Arc<Metrics>) -> Reloader {
        let seen = fingerprint(&path, &engine);
        Reloader {
            path,
            available,
            engine,
            metrics,
            seen,
        }
    }

    /// Compiles the rule files and, if they are all valid, swaps them in.
    /// Returns the errors, one `file:line:column: message` per line, otherwise.
    pub fn reload(&mut self) -> Result<Replaced, String> {
        self.seen = fingerprint(&self.path, &self.engine);
        let result = load_rules(&self.path, self.available)
            .map_err(|errors| errors.to_string())
            .and_then(|set| {
                let version = set.version.clone();
                self.engine
                    .replace_rules(Arc::new(set))
                    .map(|r| (r, version))
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok((replaced, version)) => {
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                info!(
                    %version,
                    kept = replaced.kept,
                    fresh = replaced.fresh,
                    dropped = replaced.dropped,
                    "rules reloaded"
                );
                Ok(replaced)
            }
            Err(errors) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                for line in errors.lines() {
                    warn!("{line}");
                }
                warn!("rule reload refused; the running rules stay in force");
                Err(errors)
            }
        }
    }

    /// Whether a rule file was added, removed or changed since the last look.
    pub fn changed(&self) -> bool {
        fingerprint(&self.path, &self.engine) != self.seen
    }

    /// Reloads on SIGHUP and, when `poll` is given, on file changes, until `shutdown`.
    pub async fn watch(mut self, poll: Option<Duration>, mut shutdown: watch::Receiver<bool>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; rule files are still polled");
                None
            }
        };
        let mut tick = poll.map(|p| tokio::time::interval(p.max(Duration::from_millis(50))));
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let polled = async {
                match tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = hup => {
                    info!("SIGHUP: reloading rules");
                    let _ = self.reload();
                }
                _ = polled => {
                    if self.changed() {
                        let _ = self.reload();
                    }
                }
            }
        }
    }
}

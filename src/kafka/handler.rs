//! The per-message handler: what one consumed message becomes (a dead
//! letter, forwarded copies, an attempt waiting for its turn), deciding the
//! attempts whose turn has come, and publishing what they decide.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;
use tracing::{debug, warn};

use super::commit::{Batch, Fallback};
use super::config::Topics;
use super::dead_letter::{dead_letter, DeadLetter, Source};
use super::error::RunError;
use super::order::{Marker, Orderer, Released};
use super::produce::{send, too_large};
use super::stats::RunStats;
use super::topology::{partition_for, Role, Slot, Topology};
use crate::decision::Decision;
use crate::engine::{Engine, Verdict};
use crate::event::{self, CodeHasher, Kind, Outcome};
use crate::metrics::Metrics;

/// What one message produces, and where it goes.
pub(super) struct MessageHandler<'a> {
    pub(super) producer: &'a FutureProducer,
    pub(super) topics: &'a Topics,
    pub(super) engine: &'a Engine,
    pub(super) hasher: &'a CodeHasher,
    pub(super) stats: &'a RunStats,
    pub(super) metrics: &'a Metrics,
    pub(super) events_by: EventCounters,
    pub(super) decisions: Vec<Decision>,
    pub(super) topology: &'a Topology,
    pub(super) homes: Vec<crate::rules::KeyName>,
}

/// `events_total` resolved once per (kind, outcome): no label lookup per event.
pub(super) struct EventCounters(Vec<IntCounter>);

impl EventCounters {
    pub(super) fn new(metrics: &Metrics) -> EventCounters {
        let mut counters = Vec::with_capacity(Kind::ALL.len() * Outcome::ALL.len());
        for kind in Kind::ALL {
            for outcome in Outcome::ALL {
                counters.push(
                    metrics
                        .events
                        .with_label_values(&[&serde_name(&kind), &serde_name(&outcome)]),
                );
            }
        }
        EventCounters(counters)
    }

    fn get(&self, kind: Kind, outcome: Outcome) -> Option<&IntCounter> {
        let k = Kind::ALL.iter().position(|x| *x == kind)?;
        let o = Outcome::ALL.iter().position(|x| *x == outcome)?;
        self.0.get(k * Outcome::ALL.len() + o)
    }
}

/// The name serde gives an enum value (`invalid_code`), for a label.
fn serde_name(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl MessageHandler<'_> {
    /// Parses one message: a bad one, or an attempt stamped further ahead of
    /// `received` (ms) than `engine.max_ahead_secs`, becomes a dead letter;
    /// on the attempts topic when split, a good one is forwarded to its home
    /// keys' topics. Returns the good attempt, for the caller to order
    /// (direct, home) or to note its progress (route). Every acknowledgement
    /// awaited goes into `batch`. An error stops the pipeline before anything
    /// after it is committed, so those events are redelivered.
    pub(super) async fn intake(
        &mut self,
        payload: &[u8],
        key: &[u8],
        source: Source<'_>,
        (role, received): (Role, i64),
        batch: &mut Batch,
    ) -> Result<Option<event::Event>, RunError> {
        // Forwarded copies were held to the bound where they were routed.
        let parsed = event::parse(payload, self.hasher).and_then(|e| match role {
            Role::Home(_) => Ok(e),
            _ => event::check_ahead(&e, received, self.engine.max_ahead_ms()).map(|()| e),
        });
        match parsed {
            Ok(e) => {
                match role {
                    Role::Route => {
                        self.count_intake(&e);
                        self.route(&e, source.partition, batch).await?;
                    }
                    Role::Direct => self.count_intake(&e),
                    Role::Home(_) => {}
                }
                Ok(Some(e))
            }
            Err(error) => {
                let letter = dead_letter(payload, &error, source, self.hasher);
                debug!(
                    reason = error.reason(),
                    partition = source.partition,
                    offset = source.offset,
                    "dead letter"
                );
                self.send_dead_letter(letter, payload, key, batch).await?;
                self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                self.metrics.rejected.with_label_values(&[error.reason()]).inc();
                Ok(None)
            }
        }
    }

    /// Decides every attempt whose turn has come in `order`; returns how many.
    pub(super) async fn release(&mut self, order: &mut Orderer<Ready>, batch: &mut Batch) -> Result<usize, RunError> {
        let mut ready = Vec::new();
        order.drain(Instant::now(), |r| ready.push(r));
        let n = ready.len();
        for Released {
            item,
            waited,
            forced,
            behind,
            ..
        } in ready
        {
            self.metrics.order_wait.observe(waited.as_secs_f64());
            if forced {
                self.metrics.order_forced.inc();
            }
            if behind {
                self.metrics.order_behind.inc();
            }
            self.decide(item, batch).await?;
        }
        self.metrics.order_buffered.set(order.len() as i64);
        Ok(n)
    }

    /// Runs one attempt through the engine (the rules of its home, when
    /// split) and publishes its decisions.
    async fn decide(&mut self, ready: Ready, batch: &mut Batch) -> Result<(), RunError> {
        let Ready {
            event: e,
            home,
            ingested,
        } = ready;
        let (stats, metrics) = (self.stats, self.metrics);
        self.decisions.clear();
        let started = Instant::now();
        let verdict = self.engine.process_for(&e, home, &mut self.decisions);
        stats.decided.fetch_add(1, Ordering::Relaxed);
        metrics.engine_seconds.observe(started.elapsed().as_secs_f64());
        match verdict {
            Verdict::Duplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                metrics.duplicates.inc();
            }
            Verdict::Late => metrics.late.inc(),
            Verdict::Processed => {}
        }
        // What a breaker did on this attempt, before its decisions.
        for event in self.engine.take_ops() {
            tracing::warn!(rule = %event.rule, event = event.event, "{}", event.reason);
            let body = serde_json::to_vec(&event).map_err(|e| RunError::Encode(e.to_string()))?;
            let sent = send(self.producer, &self.topics.operations, None, &*event.rule, &body, None).await;
            batch.expect_ack("operations event", sent, None)?;
            metrics
                .breaker_trips
                .with_label_values(&[&*event.rule, event.event])
                .inc();
        }
        let now = chrono::Utc::now();
        for d in &mut self.decisions {
            d.stamp(now);
            let body = serde_json::to_vec(&*d).map_err(|e| RunError::Encode(e.to_string()))?;
            let sent = send(self.producer, &self.topics.decisions, None, &d.key(), &body, None).await;
            batch.expect_ack("decision", sent, Some((ingested, e.ts_ms)))?;
            stats.decisions.fetch_add(1, Ordering::Relaxed);
            metrics
                .decisions
                .with_label_values(&[&*d.rule, d.action.as_str(), d.scope.as_str(), d.mode.as_str()])
                .inc();
            if let Some(link) = d.evidence.get("link").and_then(|l| l.as_str()) {
                metrics.linked_decisions.with_label_values(&[link]).inc();
            }
            // A ladder has at most eight steps: the label stays small.
            if let Some(offence) = d.evidence.get("offence").and_then(|o| o.as_u64()) {
                metrics
                    .ladder_decisions
                    .with_label_values(&[&*d.rule, &offence.to_string()])
                    .inc();
            }
        }
        Ok(())
    }

    /// As a router, tells every home partition how far each attempts
    /// partition this instance owns has come, or that it is idle (nothing
    /// delivered for `idle` and nothing left to fetch): at every tick of the
    /// loop (`pipeline.batch_ms`, the homes' wait), and only what changed,
    /// but each at least once a second so a home can tell a live router
    /// from a stopped one.
    pub(super) async fn send_marks(
        &mut self,
        marks: &mut RouterMarks,
        idle: Duration,
        now: Instant,
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        if marks.0.is_empty() {
            return Ok(());
        }
        for ((_, partition), mark) in marks.0.iter_mut() {
            // Idle: quiet, and nothing left to fetch (a quiet partition
            // that is only not fetched yet is behind, not idle).
            let quiet = now.saturating_duration_since(mark.heard) >= idle && mark.caught_up;
            let marker = Marker {
                source: *partition,
                ts_ms: (!quiet).then_some(mark.watermark),
            };
            let fresh =
                mark.sent != Some(marker) || now.saturating_duration_since(mark.sent_at) >= Duration::from_secs(1);
            // A partition that has delivered nothing since it was assigned
            // gives the lowest watermark there is: it moves nothing, but it
            // says this router is alive, so the homes wait for a router still
            // reading its backlog rather than give it up as stopped.
            if !fresh {
                continue;
            }
            let text = marker.encode();
            for route in &self.topology.routes {
                for q in 0..route.partitions {
                    let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: Marker::HEADER,
                        value: Some(text.as_str()),
                    });
                    let sent = send(self.producer, &route.topic, Some(q), &[] as &[u8], &[], Some(headers)).await;
                    batch.expect_ack("watermark", sent, None)?;
                }
            }
            mark.sent = Some(marker);
            mark.sent_at = now;
        }
        Ok(())
    }

    /// Queues a dead letter. One the producer refuses for its size (a
    /// broker or producer `message.max.bytes` below the event limit) is
    /// queued again without its body; a broker that refuses it on delivery
    /// gets the same from the committer (see [`super::commit::Pending::fallback`]). A
    /// dead letter never stops the pipeline for its own sake.
    async fn send_dead_letter(
        &mut self,
        letter: DeadLetter,
        payload: &[u8],
        key: &[u8],
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        let topic = &self.topics.dead_letters;
        let bare = letter.without_body(payload, self.hasher);
        let mut sent = send(
            self.producer,
            topic,
            None,
            key,
            &letter.payload,
            Some(letter.kafka_headers()),
        )
        .await;
        if sent.as_ref().is_err_and(too_large) {
            warn!(
                bytes = payload.len(),
                "dead letter too large for the producer; sent without its body"
            );
            sent = send(self.producer, topic, None, key, &[], Some(bare.kafka_headers())).await;
        }
        let fallback = Fallback {
            topic: topic.clone(),
            key: key.to_vec(),
            letter: bare,
        };
        batch.expect_ack_or("dead letter", sent, fallback)
    }

    fn count_intake(&self, e: &event::Event) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.events_by.get(e.kind, e.outcome) {
            c.inc();
        }
    }

    /// Forwards one valid attempt to the internal topic of each home key it
    /// has, keyed and placed by that key, with a raw code replaced by its hash.
    async fn route(&mut self, e: &event::Event, from: i32, batch: &mut Batch) -> Result<(), RunError> {
        let from = from.to_string();
        // Written from the validated event, never the bytes as sent.
        let body = e.to_json();
        let body = body.as_slice();
        for (home, value) in self.engine.route_keys(e, &self.homes) {
            let Some(route) = self.topology.routes.iter().find(|r| r.home == home) else {
                continue;
            };
            let partition = partition_for(value.as_bytes(), route.partitions);
            // The home orders copies by the attempts partition they came from.
            let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
                key: Marker::SOURCE,
                value: Some(from.as_str()),
            });
            let sent = send(
                self.producer,
                &route.topic,
                Some(partition),
                &value,
                body,
                Some(headers),
            )
            .await;
            batch.expect_ack("forwarded attempt", sent, None)?;
            self.stats.routed.fetch_add(1, Ordering::Relaxed);
            self.metrics.routed.with_label_values(&[route.home.as_str()]).inc();
        }
        Ok(())
    }
}

/// An attempt waiting in the orderer for its turn.
pub(super) struct Ready {
    pub(super) event: event::Event,
    /// The home whose rules decide it; `None` unsplit.
    pub(super) home: Option<crate::rules::KeyName>,
    /// When it was taken off its topic.
    pub(super) ingested: Instant,
}

/// What this instance, as a router, last told the homes about each
/// attempts partition it owns.
#[derive(Default)]
pub(super) struct RouterMarks(pub(super) BTreeMap<Slot, Mark>);

pub(super) struct Mark {
    /// The newest event time delivered from the partition.
    watermark: i64,
    /// When the partition last delivered an attempt.
    heard: Instant,
    sent: Option<Marker>,
    sent_at: Instant,
    /// The loop has taken everything the partition holds.
    pub(super) caught_up: bool,
}

impl RouterMarks {
    pub(super) fn own(&mut self, slot: Slot, now: Instant) {
        self.0.entry(slot).or_insert(Mark {
            watermark: i64::MIN,
            heard: now,
            sent: None,
            sent_at: now,
            caught_up: false,
        });
    }

    pub(super) fn heard(&mut self, slot: Slot, ts_ms: i64, now: Instant) {
        self.own(slot, now);
        if let Some(m) = self.0.get_mut(&slot) {
            m.watermark = m.watermark.max(ts_ms);
            m.heard = now;
        }
    }
}

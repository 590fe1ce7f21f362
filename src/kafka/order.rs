//! Event-time order where several partitions meet: each engine takes its
//! attempts in event-time order across every partition it reads, not in the
//! order fetches happen to arrive.
//!
//! The design is Flink's watermark over Kafka Streams' buffers. Every
//! *source* of attempts says how far in event time it has come: an attempts
//! partition read directly (its newest `ts`), or, in a split pipeline, one
//! attempts partition as seen through one internal partition (the newest copy
//! forwarded from it, and the watermark markers its router sends to every
//! internal partition, see [`Marker`]). An attempt is handed to the engine
//! once every source has come at least as far as its `ts`, smallest first.
//!
//! Bounded waiting: a source that says it is idle (its partition delivered
//! nothing lately), or that has said nothing for `stall`, does not hold the
//! others back; what it sends later is taken as it comes and counted
//! behind the order when the others are past it. Bounded memory: past `cap`
//! buffered attempts the oldest is released whatever the watermark says, and
//! counted. One partition alone is a source alone: its attempts pass straight
//! through.
//!
//! The order within one source is the order its partition holds (as Kafka
//! Streams): an upstream that writes one account's attempts out of order
//! within a partition is the lateness's business (see `state::memory`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// A consumed partition: the topic's index in the topology, the partition.
pub type Slot = (usize, i32);

/// Where attempts come from: the partition they were read from, and the
/// attempts partition upstream of it (the same partition when read directly).
pub type SourceId = (Slot, i32);

/// A router's word to a home about one attempts partition: how far in event
/// time its forwarded copies have come, or that it has gone idle. Sent as an
/// empty record with header [`Marker::HEADER`] = `<partition>:<ts>` or
/// `<partition>:idle`; forwarded copies carry [`Marker::SOURCE`] =
/// `<partition>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub source: i32,
    /// `None`: idle.
    pub ts_ms: Option<i64>,
}

impl Marker {
    pub const HEADER: &'static str = "kamiguard.watermark";
    pub const SOURCE: &'static str = "kamiguard.source";

    pub fn encode(&self) -> String {
        match self.ts_ms {
            Some(ts) => format!("{}:{ts}", self.source),
            None => format!("{}:idle", self.source),
        }
    }

    pub fn decode(text: &str) -> Option<Marker> {
        let (source, ts) = text.split_once(':')?;
        Some(Marker {
            source: source.parse().ok()?,
            ts_ms: match ts {
                "idle" => None,
                ts => Some(ts.parse().ok()?),
            },
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    /// How far in event time this source has come.
    watermark: i64,
    /// When it last said anything, or, if later, when the partition it is
    /// read through last held records not yet read: what it says may be
    /// among them, so its silence counts only from when they are read.
    heard: Instant,
    /// It said it has nothing more for now.
    idle: bool,
    /// Silent past the stall at the last release: it no longer holds the
    /// others back (logged once when it goes, once when it comes back).
    stalled: bool,
}

impl Source {
    /// A source heard of at `now` that has said nothing yet.
    fn new(now: Instant) -> Source {
        Source {
            watermark: i64::MIN,
            heard: now,
            idle: false,
            stalled: false,
        }
    }
}

/// One buffered attempt.
#[derive(Debug)]
pub struct Released<T> {
    pub slot: Slot,
    pub offset: i64,
    pub item: T,
    /// How long it waited in the buffer.
    pub waited: Duration,
    /// Released because the buffer was full, not because its turn came.
    pub forced: bool,
    /// Later attempts had been released before it.
    pub behind: bool,
}

struct Pending<T> {
    slot: Slot,
    offset: i64,
    item: T,
    arrived: Instant,
}

/// The buffer and the watermarks of one engine's sources.
pub struct Orderer<T> {
    sources: BTreeMap<SourceId, Source>,
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    pending: HashMap<u64, Pending<T>>,
    /// Offsets not yet released, by slot: what may be committed.
    unreleased: BTreeMap<Slot, std::collections::BTreeSet<i64>>,
    next: u64,
    stall: Duration,
    cap: usize,
    /// Attempts taken when the other sources were already past them.
    pub behind: u64,
    /// Attempts released because the buffer was full.
    pub forced: u64,
    /// The event time every released attempt so far reached.
    released_ts: i64,
}

impl<T> Orderer<T> {
    /// An orderer that waits at most `stall` for a silent source and holds
    /// at most `cap` attempts.
    pub fn new(stall: Duration, cap: usize) -> Orderer<T> {
        Orderer {
            sources: BTreeMap::new(),
            heap: BinaryHeap::new(),
            pending: HashMap::new(),
            unreleased: BTreeMap::new(),
            next: 0,
            stall,
            cap: cap.max(1),
            behind: 0,
            forced: 0,
            released_ts: i64::MIN,
        }
    }

    /// A source that may send attempts from now on; until it says anything
    /// it holds the others back for at most `stall`.
    pub fn expect(&mut self, source: SourceId, now: Instant) {
        self.sources.entry(source).or_insert(Source::new(now));
    }

    /// Forgets every source and buffered attempt of `slot` (revoked: its new
    /// owner reads it again from the last commit).
    pub fn forget(&mut self, slot: Slot) {
        self.sources.retain(|(s, _), _| *s != slot);
        self.pending.retain(|_, p| p.slot != slot);
        self.unreleased.remove(&slot);
    }

    /// Buffers an attempt at `ts_ms` from `source`, read at `offset`.
    pub fn push(&mut self, source: SourceId, offset: i64, ts_ms: i64, item: T, now: Instant) {
        // An attempt says of its source what a marker at its time would.
        self.mark(source, Some(ts_ms), now);
        let id = self.next;
        self.next += 1;
        self.heap.push(Reverse((ts_ms, id)));
        self.unreleased.entry(source.0).or_default().insert(offset);
        self.pending.insert(
            id,
            Pending {
                slot: source.0,
                offset,
                item,
                arrived: now,
            },
        );
    }

    /// Notes a marker from `source`.
    pub fn mark(&mut self, source: SourceId, ts_ms: Option<i64>, now: Instant) {
        let s = self.sources.entry(source).or_insert(Source::new(now));
        s.heard = now;
        match ts_ms {
            Some(ts) => {
                s.watermark = s.watermark.max(ts);
                s.idle = false;
            }
            None => s.idle = true,
        }
    }

    /// Notes that `slot` still holds records this engine has not read. Its
    /// sources' silence does not count meanwhile: a home reading a backlog
    /// has not heard its routers yet, which is not the same as routers that
    /// have gone quiet.
    pub fn backlogged(&mut self, slot: Slot, now: Instant) {
        for (_, s) in self.sources.range_mut((slot, i32::MIN)..=(slot, i32::MAX)) {
            s.heard = s.heard.max(now);
        }
    }

    /// Marks the sources `which` picks idle when they have delivered
    /// nothing for `quiet`: partitions read directly, caught up or empty.
    /// (A home's sources say so themselves, through their routers.)
    pub fn idle_if_quiet(&mut self, quiet: Duration, now: Instant, which: impl Fn(&SourceId) -> bool) {
        for (id, s) in self.sources.iter_mut() {
            if which(id) && now.saturating_duration_since(s.heard) >= quiet {
                s.idle = true;
            }
        }
    }

    /// How far every source that holds the others back has come.
    fn low_watermark(&self, now: Instant) -> i64 {
        self.sources
            .values()
            .filter(|s| !s.idle && now.saturating_duration_since(s.heard) < self.stall)
            .map(|s| s.watermark)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Logs each source that goes silent past the stall while others wait
    /// for it, and each that speaks again: the moment the order gives way
    /// is the one an operator needs to see.
    fn note_stalls(&mut self, now: Instant) {
        let stall = self.stall;
        let waiting = !self.pending.is_empty();
        for (id, s) in self.sources.iter_mut() {
            let silent = !s.idle && now.saturating_duration_since(s.heard) >= stall;
            if silent && !s.stalled && waiting {
                warn!(
                    slot = ?id.0,
                    source = id.1,
                    silent_ms = now.saturating_duration_since(s.heard).as_millis() as u64,
                    "a source is silent past pipeline.order_stall_ms; attempts no longer wait for it"
                );
                s.stalled = true;
            } else if !silent && s.stalled {
                info!(slot = ?id.0, source = id.1, "a silent source speaks again");
                s.stalled = false;
            }
        }
    }

    /// The next attempt whose turn has come, if any.
    pub fn pop(&mut self, now: Instant) -> Option<Released<T>> {
        let low = self.low_watermark(now);
        self.pop_below(low, now)
    }

    /// Every attempt whose turn has come, handed to `f` in order. The
    /// watermark is worked out once for all of them: nothing `f` does
    /// changes the sources.
    pub fn drain(&mut self, now: Instant, mut f: impl FnMut(Released<T>)) {
        self.note_stalls(now);
        let low = self.low_watermark(now);
        while let Some(r) = self.pop_below(low, now) {
            f(r);
        }
    }

    fn pop_below(&mut self, low: i64, now: Instant) -> Option<Released<T>> {
        loop {
            let Reverse((ts, id)) = *self.heap.peek()?;
            if !self.pending.contains_key(&id) {
                // Forgotten with its slot.
                self.heap.pop();
                continue;
            }
            let full = self.pending.len() > self.cap;
            if ts > low && !full {
                return None;
            }
            self.heap.pop();
            let p = self.pending.remove(&id)?;
            if let Some(set) = self.unreleased.get_mut(&p.slot) {
                set.remove(&p.offset);
            }
            let behind = ts < self.released_ts;
            self.behind += u64::from(behind);
            self.released_ts = self.released_ts.max(ts);
            let forced = ts > low;
            self.forced += u64::from(forced);
            return Some(Released {
                slot: p.slot,
                offset: p.offset,
                item: p.item,
                waited: now.saturating_duration_since(p.arrived),
                forced,
                behind,
            });
        }
    }

    /// The smallest offset of `slot` still buffered: everything before it has
    /// been released, so it is what may be committed.
    pub fn first_unreleased(&self, slot: Slot) -> Option<i64> {
        self.unreleased.get(&slot).and_then(|s| s.first().copied())
    }

    /// Attempts buffered.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(10);

    fn src(p: i32) -> SourceId {
        ((0, p), p)
    }

    fn drain(o: &mut Orderer<&'static str>, now: Instant) -> Vec<&'static str> {
        std::iter::from_fn(|| o.pop(now).map(|r| r.item)).collect()
    }

    #[test]
    fn attempts_leave_in_event_time_order_across_sources() {
        let now = Instant::now();
        let mut o = Orderer::new(STALL, 100);
        o.expect(src(0), now);
        o.expect(src(1), now);
        // Partition 0's backlog arrives first, far ahead of partition 1.
        o.push(src(0), 0, 100, "a100", now);
        o.push(src(0), 1, 300, "a300", now);
        assert!(o.pop(now).is_none(), "partition 1 has said nothing yet");
        o.push(src(1), 0, 200, "b200", now);
        assert_eq!(drain(&mut o, now), ["a100", "b200"]);
        assert_eq!(o.first_unreleased((0, 0)), Some(1));
        o.push(src(1), 1, 400, "b400", now);
        assert_eq!(drain(&mut o, now), ["a300"]);
        assert_eq!(o.behind, 0);
    }

    #[test]
    fn an_idle_or_silent_source_holds_nobody_back_for_long() {
        let now = Instant::now();
        let mut o = Orderer::new(STALL, 100);
        o.expect(src(0), now);
        o.expect(src(1), now);
        o.push(src(0), 0, 100, "a", now);
        assert!(o.pop(now).is_none());
        o.mark(src(1), None, now);
        assert_eq!(drain(&mut o, now), ["a"], "idle says so");
        o.push(src(0), 1, 200, "b", now);
        o.mark(src(1), Some(150), now);
        assert!(o.pop(now).is_none(), "no longer idle, at 150");
        assert_eq!(drain(&mut o, now + STALL), ["b"], "silent past the stall");
        // What it sends later is taken, and counted behind the order.
        o.push(src(1), 0, 120, "late", now + STALL);
        assert_eq!(drain(&mut o, now + STALL), ["late"]);
        assert_eq!(o.behind, 1);
    }

    #[test]
    fn a_source_behind_an_unread_backlog_is_not_silent() {
        let now = Instant::now();
        let mut o = Orderer::new(STALL, 100);
        o.expect(src(0), now);
        o.expect(src(1), now);
        o.push(src(0), 0, 100, "a", now);
        // Partition 1 still holds unread records until just before the
        // stall: its source's words may be among them.
        o.backlogged((0, 1), now + STALL / 2);
        assert!(o.pop(now + STALL).is_none(), "silent only since its backlog was read");
        assert_eq!(
            drain(&mut o, now + STALL / 2 + STALL),
            ["a"],
            "then silent past the stall"
        );
    }

    #[test]
    fn a_full_buffer_releases_its_oldest_and_counts_it() {
        let now = Instant::now();
        let mut o = Orderer::new(STALL, 2);
        o.expect(src(0), now);
        o.expect(src(1), now);
        for (i, ts) in [10, 20, 30].into_iter().enumerate() {
            o.push(src(0), i as i64, ts, "x", now);
        }
        let r = o.pop(now).expect("forced out");
        assert!(r.forced);
        assert_eq!(o.forced, 1);
        assert!(o.pop(now).is_none());
    }

    #[test]
    fn a_revoked_partition_is_forgotten() {
        let now = Instant::now();
        let mut o = Orderer::new(STALL, 100);
        o.push(src(0), 0, 10, "a", now);
        o.push(src(1), 0, 20, "b", now);
        o.forget((0, 0));
        assert_eq!(drain(&mut o, now), ["b"]);
        assert_eq!(o.first_unreleased((0, 0)), None);
    }

    #[test]
    fn markers_read_back() {
        for m in [
            Marker {
                source: 3,
                ts_ms: Some(1_795_305_600_123),
            },
            Marker { source: 0, ts_ms: None },
            // A router alive with nothing read yet.
            Marker {
                source: 1,
                ts_ms: Some(i64::MIN),
            },
        ] {
            assert_eq!(Marker::decode(&m.encode()), Some(m));
        }
        assert_eq!(Marker::decode("x:1"), None);
    }
}

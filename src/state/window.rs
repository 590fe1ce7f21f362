//! Sliding windows on event time: bucketed sums and bounded exact distinct sets.

use smallvec::SmallVec;

/// Number of buckets a window is cut into. A window of W counts the bucket the
/// newest event fell in and the `BUCKETS - 1` before it, so its span is between
/// `W * (BUCKETS-1)/BUCKETS` and `W`: at most a tenth of the window is lost at
/// the old edge, in exchange for a fixed state per key (48 bytes with `u32`
/// buckets) whatever the rate.
pub const BUCKETS: usize = 10;

/// What a bucket holds: `u32` for counts (half the memory per key, and four
/// billion attempts in one bucket is beyond any window) and for the engine's
/// sums of face value (rules refuse a sum threshold above `u32::MAX` fen, so
/// a bucket that saturates has reached the threshold alone); `u64` where a
/// bucket must hold more. Adding saturates.
pub trait Cell: Copy + Default + std::fmt::Debug + PartialEq + Eq {
    fn plus(self, amount: u64) -> Self;
    fn get(self) -> u64;
}

impl Cell for u32 {
    fn plus(self, amount: u64) -> u32 {
        self.saturating_add(u32::try_from(amount).unwrap_or(u32::MAX))
    }
    fn get(self) -> u64 {
        self as u64
    }
}

impl Cell for u64 {
    fn plus(self, amount: u64) -> u64 {
        self.saturating_add(amount)
    }
    fn get(self) -> u64 {
        self
    }
}

/// A sliding sum (a count is a sum of ones) over event time.
///
/// Out-of-order events land in their own bucket while it is still inside the
/// window; one older than the whole window relative to the newest event seen
/// for this key is outside every window that can still be asked about, so it
/// is not added (it could not change any answer from now on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingSum<C: Cell = u64> {
    /// Bucket number (event time / bucket width) of the newest bucket.
    head: i64,
    buckets: [C; BUCKETS],
}

/// A sliding count, or a sum of face value in fen: 48 bytes a key instead of 88.
pub type SlidingCount = SlidingSum<u32>;

impl<C: Cell> SlidingSum<C> {
    pub fn new() -> SlidingSum<C> {
        SlidingSum {
            head: i64::MIN,
            buckets: [C::default(); BUCKETS],
        }
    }

    /// Adds `amount` at bucket number `bucket` and returns the sum over the window.
    pub fn add(&mut self, bucket: i64, amount: u64) -> u64 {
        if self.head == i64::MIN || bucket >= self.head.saturating_add(BUCKETS as i64) {
            self.buckets = [C::default(); BUCKETS];
            self.head = bucket;
        } else if bucket > self.head {
            for b in self.head + 1..=bucket {
                self.buckets[slot(b)] = C::default();
            }
            self.head = bucket;
        }
        if bucket > self.head - BUCKETS as i64 {
            let cell = &mut self.buckets[slot(bucket)];
            *cell = cell.plus(amount);
        }
        self.total()
    }

    /// The sum over the window ending at the newest bucket.
    pub fn total(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.saturating_add(b.get()))
    }

    /// The sum over the window ending at bucket number `now` (no update).
    pub fn total_at(&self, now: i64) -> u64 {
        if self.head == i64::MIN {
            return 0;
        }
        (now - BUCKETS as i64 + 1..=now.min(self.head))
            .filter(|b| *b > self.head - BUCKETS as i64)
            .map(|b| self.buckets[slot(b)].get())
            .fold(0u64, u64::saturating_add)
    }
}

impl<C: Cell> Default for SlidingSum<C> {
    fn default() -> Self {
        SlidingSum::new()
    }
}

fn slot(bucket: i64) -> usize {
    bucket.rem_euclid(BUCKETS as i64) as usize
}

/// Exact count of distinct values seen within a window, remembering at most
/// `cap` values (the rule's threshold): once that many distinct values are in
/// the window the rule fires, so more would add memory and change nothing.
/// When full, a new value replaces the one seen longest ago.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DistinctWindow {
    /// (hash of the value, last time it was seen in ms). The first is stored
    /// inline: a key with one value allocates nothing.
    seen: SmallVec<[(u64, i64); 1]>,
}

impl DistinctWindow {
    /// Records `value` at `ts_ms` and returns the number of distinct values in
    /// `(ts_ms - window_ms, ts_ms]`, which never exceeds `cap`.
    pub fn add(&mut self, value: u64, ts_ms: i64, window_ms: i64, cap: usize) -> u64 {
        let newest = self.seen.iter().map(|(_, t)| *t).max().unwrap_or(ts_ms).max(ts_ms);
        let horizon = newest - window_ms;
        self.seen.retain(|(_, t)| *t > horizon);
        if ts_ms > horizon {
            let len = self.seen.len();
            match self.seen.iter_mut().find(|(v, _)| *v == value) {
                Some(entry) => entry.1 = entry.1.max(ts_ms),
                None if len < cap.max(1) => self.seen.push((value, ts_ms)),
                None => {
                    if let Some(oldest) = self.seen.iter_mut().min_by_key(|(_, t)| *t) {
                        *oldest = (value, ts_ms);
                    }
                }
            }
        }
        self.seen.len() as u64
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_within_window_and_forgets_old_buckets() {
        let mut w = SlidingSum::<u64>::new();
        assert_eq!(w.add(0, 1), 1);
        assert_eq!(w.add(5, 1), 2);
        assert_eq!(w.add(9, 1), 3);
        // bucket 10 pushes bucket 0 out
        assert_eq!(w.add(10, 1), 3);
        // a jump far ahead clears everything
        assert_eq!(w.add(100, 2), 2);
    }

    #[test]
    fn late_event_inside_window_is_counted_once() {
        let mut w = SlidingSum::<u64>::new();
        w.add(20, 1);
        assert_eq!(w.add(15, 1), 2);
        // older than the window relative to bucket 20: outside every window from now on
        assert_eq!(w.add(10, 1), 2);
    }

    #[test]
    fn distinct_counts_each_value_once_and_caps() {
        let mut d = DistinctWindow::default();
        assert_eq!(d.add(1, 0, 1000, 3), 1);
        assert_eq!(d.add(1, 10, 1000, 3), 1);
        assert_eq!(d.add(2, 20, 1000, 3), 2);
        assert_eq!(d.add(3, 30, 1000, 3), 3);
        assert_eq!(d.add(4, 40, 1000, 3), 3);
        // all but the newest value fall out
        assert_eq!(d.add(5, 1035, 1000, 3), 2);
    }

    proptest! {
        /// A sliding sum equals the brute-force sum of the events whose bucket is
        /// within the window of the newest bucket, whatever the arrival order
        /// (as long as lateness stays inside the window), and is never more than
        /// everything added.
        #[test]
        fn sliding_sum_matches_brute_force(events in proptest::collection::vec((0i64..200, 1u64..5), 1..200)) {
            let mut sorted = events.clone();
            sorted.sort();
            let mut w = SlidingSum::<u64>::new();
            let mut added = Vec::new();
            for (bucket, amount) in &sorted {
                let got = w.add(*bucket, *amount);
                added.push((*bucket, *amount));
                let expected: u64 = added.iter()
                    .filter(|(b, _)| *b > bucket - BUCKETS as i64)
                    .map(|(_, a)| a).sum();
                prop_assert_eq!(got, expected);
            }
            let all: u64 = sorted.iter().map(|(_, a)| a).sum();
            prop_assert!(w.total() <= all);
        }

        /// Shuffling events within a small lateness does not change the final total.
        #[test]
        fn bounded_disorder_gives_the_same_total(mut buckets in proptest::collection::vec(0i64..100, 1..100), swaps in proptest::collection::vec(0usize..100, 0..50)) {
            buckets.sort();
            let mut ordered = SlidingSum::<u64>::new();
            for b in &buckets { ordered.add(*b, 1); }
            let mut shuffled = buckets.clone();
            for s in swaps {
                let i = s % shuffled.len();
                if i + 1 < shuffled.len() && shuffled[i + 1] - shuffled[i] < 3 {
                    shuffled.swap(i, i + 1);
                }
            }
            let mut disordered = SlidingSum::<u64>::new();
            for b in &shuffled { disordered.add(*b, 1); }
            prop_assert_eq!(ordered.total(), disordered.total());
        }

        /// A count kept in `u32` cells answers exactly as one in `u64` cells.
        #[test]
        fn narrow_counts_match_wide_ones(buckets in proptest::collection::vec(0i64..300, 1..300)) {
            let (mut narrow, mut wide) = (SlidingCount::new(), SlidingSum::<u64>::new());
            for b in buckets {
                prop_assert_eq!(narrow.add(b, 1), wide.add(b, 1));
                prop_assert_eq!(narrow.total_at(b + 3), wide.total_at(b + 3));
            }
        }

        /// A distinct count never exceeds its cap nor the number of distinct values added.
        #[test]
        fn distinct_is_bounded(values in proptest::collection::vec((0u64..20, 0i64..10_000), 1..300), cap in 1usize..10) {
            let mut d = DistinctWindow::default();
            let mut sorted = values.clone();
            sorted.sort_by_key(|(_, t)| *t);
            for (i, (v, t)) in sorted.iter().enumerate() {
                let n = d.add(*v, *t, 1000, cap);
                prop_assert!(n as usize <= cap);
                let truth = sorted[..=i].iter().filter(|(_, t2)| *t2 > t - 1000)
                    .map(|(v2, _)| *v2).collect::<std::collections::HashSet<_>>().len();
                prop_assert_eq!(n as usize, truth.min(cap));
            }
        }
    }
}

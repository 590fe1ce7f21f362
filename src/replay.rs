//! `kamiguard replay` (README, "Replay"): a JSON-lines file of attempts in,
//! decisions out, through exactly the engine the live pipeline uses.
//!
//! The engine sees events in event-time order (ties keep file order), so the
//! output depends only on the events and the rules, never on how the file was
//! written. Most files are already in order: [`replay`] streams them through
//! the engine in one pass, holding only the decisions. At the first event
//! earlier than the one before it, it starts over with a fresh engine, reads
//! the whole file and sorts it. Both paths give the same decisions.
//!
//! # Record timestamps
//!
//! A line may start with its Kafka record's timestamp, milliseconds and a
//! tab (`kcat -C -t kamiguard.attempts -e -f '%T\t%s\n'` writes a topic so).
//! Such a line is held to the bound `run` applies
//! ([`crate::event::check_ahead`]): an attempt stamped further ahead of its
//! record than `engine.max_ahead_secs` is refused as `ts_ahead`, so a dump of
//! a topic replays to the decisions `run` made on it. A line without one has
//! no time of receipt to be held to; the sort by event time then keeps an
//! attempt stamped ahead from moving the clock for the attempts before it.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};

use indicatif::ProgressBar;

use crate::decision::Decision;
use crate::engine::{Engine, Prepared, Verdict};
use crate::event::{self, CodeHasher, Event};

/// Most bad lines kept with their message for the summary; the rest are counted.
pub const MAX_REPORTED_LINES: usize = 100;

/// What a replay read and decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Non-blank lines read.
    pub lines: u64,
    /// Valid events.
    pub events: u64,
    /// Refused lines by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// The first bad lines: (line number, message).
    pub bad_lines: Vec<(u64, String)>,
    /// Events whose `event_id` had been seen already.
    pub duplicates: u64,
    /// Events processed more than the lateness behind the newest event time
    /// (only where the events were not sorted, as in scenario folders' order).
    pub late: u64,
    /// Decisions by (rule, action).
    pub decisions: BTreeMap<(String, String), u64>,
}

impl ReplaySummary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn decisions_total(&self) -> u64 {
        self.decisions.values().sum()
    }

    /// The human summary printed on standard error.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (line, message) in &self.bad_lines {
            s.push_str(&format!("line {line}: {message}\n"));
        }
        let shown = self.bad_lines.len() as u64;
        if self.rejected_total() > shown {
            s.push_str(&format!("... and {} more bad lines\n", self.rejected_total() - shown));
        }
        s.push_str(&format!(
            "read {} lines: {} events, {} rejected, {} duplicates\n",
            self.lines,
            self.events,
            self.rejected_total(),
            self.duplicates
        ));
        for (reason, n) in &self.rejected {
            s.push_str(&format!("  rejected {reason}: {n}\n"));
        }
        if self.late > 0 {
            s.push_str(&format!(
                "{} events arrived more than the lateness behind the newest event time\n",
                self.late
            ));
        }
        let total = self.decisions_total();
        s.push_str(&format!(
            "{total} {}\n",
            if total == 1 { "decision" } else { "decisions" }
        ));
        for ((rule, action), n) in &self.decisions {
            s.push_str(&format!("  {rule} {action}: {n}\n"));
        }
        s
    }
}

/// Replays the input that `open` yields (called again if the input turns out
/// to be out of order), on an engine from `make_engine`, writing decisions to
/// `out`. Returns the engine that did the work.
pub fn replay<R: BufRead>(
    open: impl Fn() -> io::Result<R>,
    make_engine: impl Fn() -> Engine,
    hasher: &CodeHasher,
    out: &mut impl Write,
    summary: &mut ReplaySummary,
    progress: Option<&ProgressBar>,
    now: impl Fn() -> chrono::DateTime<chrono::Utc>,
) -> io::Result<Engine> {
    let engine = make_engine();
    let max_ahead_ms = engine.max_ahead_ms();
    let mut held = Vec::new();
    let mut last_ts = i64::MIN;
    let mut in_order = true;
    let (mut duplicates, mut late) = (0, 0);
    // Each event is decided once the next one is parsed and prepared, so the
    // next one's state loads while the engine decides this one.
    let mut current: Option<(Event, Prepared)> = None;
    let mut decide = |(e, prepared): (Event, Prepared), held: &mut Vec<Decision>| match engine
        .process_prepared(&e, &prepared, held)
    {
        Verdict::Duplicate => duplicates += 1,
        Verdict::Late => late += 1,
        Verdict::Processed => {}
    };
    for_each_line(open()?, hasher, max_ahead_ms, summary, progress, |e| {
        if e.ts_ms < last_ts {
            in_order = false;
            return false;
        }
        last_ts = e.ts_ms;
        let prepared = engine.prepare(&e);
        if let Some(previous) = current.replace((e, prepared)) {
            decide(previous, &mut held);
        }
        true
    })?;
    if let Some(last) = current.filter(|_| in_order) {
        decide(last, &mut held);
    }
    if in_order {
        summary.duplicates += duplicates;
        summary.late += late;
        write_decisions(held, out, summary, &now)?;
        return Ok(engine);
    }
    *summary = ReplaySummary::default();
    if let Some(p) = progress {
        p.set_position(0);
    }
    let engine = make_engine();
    let events = read_events(open()?, hasher, max_ahead_ms, summary, progress)?;
    run_events(&events, &engine, out, summary, now)?;
    Ok(engine)
}

/// Parses each line, recording bad ones in `summary`, and hands valid events
/// to `f` until it returns `false`. A line that starts with its record
/// timestamp is held to `max_ahead_ms` (see the module doc). Public so that
/// the benchmark's baseline (parsing alone) reads lines exactly as `replay`
/// does.
pub fn for_each_line(
    mut input: impl BufRead,
    hasher: &CodeHasher,
    max_ahead_ms: i64,
    summary: &mut ReplaySummary,
    progress: Option<&ProgressBar>,
    mut f: impl FnMut(Event) -> bool,
) -> io::Result<()> {
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = input.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if let Some(p) = progress {
            p.inc(n as u64);
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        let (received_ms, line) = split_record_ts(line);
        let parsed = event::parse(line, hasher).and_then(|e| match received_ms {
            Some(at) => event::check_ahead(&e, at, max_ahead_ms).map(|()| e),
            None => Ok(e),
        });
        match parsed {
            Ok(e) => {
                summary.events += 1;
                if !f(e) {
                    return Ok(());
                }
            }
            Err(err) => {
                *summary.rejected.entry(err.reason()).or_default() += 1;
                if summary.bad_lines.len() < MAX_REPORTED_LINES {
                    summary.bad_lines.push((line_no, err.to_string()));
                }
            }
        }
    }
}

/// A line's leading record timestamp (digits and a tab), and the rest. No
/// JSON object starts with a digit, so a line of the contract is never read
/// as one.
fn split_record_ts(line: &[u8]) -> (Option<i64>, &[u8]) {
    let digits = line.iter().take(20).take_while(|b| b.is_ascii_digit()).count();
    match line.get(digits) {
        Some(b'\t') if digits > 0 => {
            let ms = std::str::from_utf8(&line[..digits]).ok().and_then(|d| d.parse().ok());
            match ms {
                Some(ms) => (Some(ms), &line[digits + 1..]),
                None => (None, line),
            }
        }
        _ => (None, line),
    }
}

/// Parses every line of `input`; returns the events in event-time order.
pub fn read_events(
    input: impl BufRead,
    hasher: &CodeHasher,
    max_ahead_ms: i64,
    summary: &mut ReplaySummary,
    progress: Option<&ProgressBar>,
) -> io::Result<Vec<Event>> {
    let mut events: Vec<Event> = Vec::new();
    for_each_line(input, hasher, max_ahead_ms, summary, progress, |e| {
        events.push(e);
        true
    })?;
    // Stable: events with the same time keep their file order. Most files are
    // already in order; checking first saves moving every event.
    if !events.is_sorted_by_key(|e| e.ts_ms) {
        events.sort_by_key(|e| e.ts_ms);
    }
    Ok(events)
}

/// Runs `events` through `engine`, writing each decision as one JSON line,
/// stamped by `now` (the only wall-clock read).
pub fn run_events(
    events: &[Event],
    engine: &Engine,
    out: &mut impl Write,
    summary: &mut ReplaySummary,
    now: impl Fn() -> chrono::DateTime<chrono::Utc>,
) -> io::Result<Vec<Decision>> {
    let mut decisions = Vec::new();
    decide_each(events, engine, |_, verdict, made| {
        match verdict {
            Verdict::Duplicate => summary.duplicates += 1,
            Verdict::Late => summary.late += 1,
            Verdict::Processed => {}
        }
        decisions.append(made);
    });
    write_decisions(decisions, out, summary, &now)
}

/// Decides `events` in order on `engine`, as `replay` does: the next event
/// is prepared before this one is decided. `f` gets each event's index, its
/// verdict and the decisions it made, to take out of the vector.
pub fn decide_each(events: &[Event], engine: &Engine, mut f: impl FnMut(usize, Verdict, &mut Vec<Decision>)) {
    let mut made = Vec::new();
    let mut prepared = events.iter().enumerate().map(|(i, e)| (i, e, engine.prepare(e)));
    let mut current = prepared.next();
    while let Some((i, e, this)) = current {
        current = prepared.next();
        let verdict = engine.process_prepared(e, &this, &mut made);
        f(i, verdict, &mut made);
    }
}

fn write_decisions(
    mut decisions: Vec<Decision>,
    out: &mut impl Write,
    summary: &mut ReplaySummary,
    now: &impl Fn() -> chrono::DateTime<chrono::Utc>,
) -> io::Result<Vec<Decision>> {
    for d in &mut decisions {
        d.stamp(now());
        serde_json::to_writer(&mut *out, &*d)?;
        out.write_all(b"\n")?;
        *summary
            .decisions
            .entry((d.rule.to_string(), d.action.as_str().to_string()))
            .or_default() += 1;
    }
    out.flush()?;
    Ok(decisions)
}

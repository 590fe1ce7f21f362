//! Several `kamiguard run` instances in one consumer group on a real broker
//! (Tansu): split by home key through the internal topics, they decide what
//! one instance and `replay` decide, also when one of them is killed mid-attack.
//!
//! The input is keyed by account, as the redemption service keys it, so an
//! attacker rotating accounts (a device farm, an address shared by many
//! accounts) lands on every partition: without the split each instance would
//! see a quarter of it; a control run with the split off misses a device farm
//! spread thin over the partitions. (An account's attempts stay in order on one partition,
//! which the rules reading account memory need: see README, "Several
//! instances".)
//!
//! What is compared is the set of (rule, scope, subject, action, mode). The
//! decision id also names the attempt that crossed the line, and which one that
//! is depends on how the partitions interleave on their way to the internal
//! topics, so ids may differ from replay's; the decisions themselves may not.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::{Broker, Reader, Record};
use common::pipeline::{replay, setup_with, Processor, Setup, ATTEMPTS, DECISIONS};
use kamiguard::kafka::topology::partition_for;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::Value;

const PARTITIONS: i32 = 4;

/// One cluster of instances at a time. Each test runs a broker and up to
/// three instances; eight of them at once on two cores starved the held-back
/// test's homes until they took copies out of replay's order (3 of ~200 ids
/// differed in two fresh-clone CI runs, never when run alone). That starvation
/// is a defect of the ordering under extreme load, noted for the event-time
/// order issue; these tests are about what the ordering gives when the
/// instances get the CPU they need.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner())
}
const RAW: &str = "KAMI-RAW-";

/// Everything a decision says but its id, its trigger and its samples.
type Verdict = (String, String, String, String, String);

fn verdicts<'a>(payloads: impl Iterator<Item = &'a Value>) -> BTreeSet<Verdict> {
    payloads
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            (s("rule"), s("scope"), s("subject"), s("action"), s("mode"))
        })
        .collect()
}

fn published(seen: &[Record]) -> BTreeSet<Verdict> {
    let values: Vec<Value> = seen
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("decision json"))
        .collect();
    verdicts(values.iter())
}

/// A device farm spread thin: eight fresh accounts on one device, two on each
/// partition. The device-farm rule's threshold is five accounts, so only an
/// instance that sees every partition's attempts for the device catches it.
/// Stamped a millisecond apart from the time of `neighbour`: attempts at the
/// same millisecond on different partitions have no order but the file's,
/// which only replay knows, and which one crosses the line names the
/// decision.
fn spread_farm(neighbour: &[u8]) -> Vec<Vec<u8>> {
    let v: Value = serde_json::from_slice(neighbour).expect("json");
    let at = kamiguard::event::parse_ts_ms(v["ts"].as_str().expect("ts")).expect("ts");
    let mut per_partition = [0; PARTITIONS as usize];
    let accounts = (0..).map(|i| format!("u-spread-{i}")).filter(|a| {
        let p = partition_for(a.as_bytes(), PARTITIONS) as usize;
        per_partition[p] += 1;
        per_partition[p] <= 2
    });
    accounts
        .take(2 * PARTITIONS as usize)
        .enumerate()
        .map(|(i, account)| {
            let ts = kamiguard::event::format_ts(at + i as i64);
            format!(
                r#"{{"event_id":"spread-{i}","ts":"{ts}","kind":"redemption","outcome":"success","card":{{"code_hash":"5b5b{i:012x}","face_value":2000}},"account":{{"id":"{account}","created_at":"2026-11-21T00:00:00Z","verified":false,"country":"CN"}},"device":{{"fingerprint":"fp-spread-farm","platform":"android"}},"ip":"175.16.199.{}","channel":"app"}}"#,
                10 + i
            )
            .into_bytes()
        })
        .collect()
}

fn account_of(line: &[u8]) -> String {
    let v: Value = serde_json::from_slice(line).expect("generated json");
    v["account"]["id"].as_str().expect("account id").to_string()
}

/// The most input partitions the attempts behind one expected device or
/// address decision came from.
fn widest_spread(st: &Split) -> usize {
    st.expected
        .iter()
        .filter(|(_, scope, ..)| scope == "device" || scope == "ip")
        .map(|(_, scope, subject, ..)| {
            st.lines
                .iter()
                .filter(|l| {
                    let v: Value = serde_json::from_slice(l).expect("json");
                    match scope.as_str() {
                        "device" => v["device"]["fingerprint"] == subject.as_str(),
                        _ => v["ip"] == subject.as_str(),
                    }
                })
                .map(|l| partition_for(account_of(l).as_bytes(), PARTITIONS))
                .collect::<BTreeSet<i32>>()
                .len()
        })
        .max()
        .unwrap_or(0)
}

struct Split {
    broker: Broker,
    setup: Setup,
    group: &'static str,
    lines: Vec<Vec<u8>>,
    expected: BTreeSet<Verdict>,
    _dir: tempfile::TempDir,
}

fn split(group: &'static str, count: u64, seed: u64) -> Split {
    split_at(group, count, seed, 1000, "")
}

/// [`split`] with `rate` attempts a second of event time and `pipeline`
/// lines added to the `[pipeline]` section.
fn split_at(group: &'static str, count: u64, seed: u64, rate: u64, pipeline: &str) -> Split {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(PARTITIONS);
    // Instances resume internal topics after every rebalance: their records
    // go one per batch (Tansu, see tests/common/broker.rs). Production keeps
    // the batched default.
    let setup = setup_with(
        broker.port,
        group,
        PARTITIONS,
        "[kafka.producer]\n\"batch.num.messages\" = \"1\"\n",
    );
    if !pipeline.is_empty() {
        let text = std::fs::read_to_string(&setup.config).expect("config");
        std::fs::write(
            &setup.config,
            text.replace("[pipeline]\n", &format!("[pipeline]\n{pipeline}\n")),
        )
        .expect("config");
    }
    // 1000 attempts a second of event time: the partitions' interleaving
    // shifts an attempt by a few seconds at most, well inside the lateness.
    // One attempt in 500 carries its raw code, which must reach no topic.
    let lines: Vec<Vec<u8>> = kamiguard::tools::generate::generate(count, seed, rate)
        .lines()
        .enumerate()
        .map(|(i, l)| match (i % 500, l.find("\"code_hash\":\"")) {
            (0, Some(at)) => {
                let end = at + l[at + 13..].find('"').expect("hash end") + 14;
                format!("{}\"code\":\"{RAW}{i}\"{}", &l[..at], &l[end..]).into_bytes()
            }
            _ => l.as_bytes().to_vec(),
        })
        .collect();
    let mut lines = lines;
    let at = lines.len() / 3;
    let farm = spread_farm(&lines[at]);
    lines.splice(at..at, farm);
    let expected = verdicts(replay(&setup, &lines).values());
    Split {
        broker,
        setup,
        group,
        lines,
        expected,
        _dir: dir,
    }
}

impl Split {
    /// Produces `lines` keyed by account, placed as Kafka's partitioner places keys.
    fn produce(&self, lines: &[Vec<u8>]) {
        let records: Vec<(Option<String>, Option<i32>, &[u8])> = lines
            .iter()
            .map(|l| {
                let account = account_of(l);
                let p = partition_for(account.as_bytes(), PARTITIONS);
                (Some(account), Some(p), l.as_slice())
            })
            .collect();
        // Resumed from after rebalances and a kill: one record per batch.
        self.broker.produce_to(ATTEMPTS, &records, true);
    }

    /// Waits until the group has committed every attempt.
    fn wait_all_committed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let committed: i64 = self
                .broker
                .committed(self.group, ATTEMPTS, PARTITIONS)
                .iter()
                .map(|o| (*o).max(0))
                .sum();
            if committed >= self.lines.len() as i64 {
                return;
            }
            if Instant::now() >= deadline {
                let _ = std::process::Command::new("cp")
                    .arg("-r")
                    .arg(self.setup.dir.path())
                    .arg("/tmp/scale-logs")
                    .status();
            }
            assert!(
                Instant::now() < deadline,
                "committed {committed} of {} attempts\n{}",
                self.lines.len(),
                self.setup.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reads decisions until replay's are all there, waits for every attempt
    /// to be committed, stops `runs` with SIGTERM (each exits 0) and compares.
    fn finish(&self, runs: Vec<Processor>, decisions: &mut Reader, context: &str) {
        let complete = decisions.read_until(Duration::from_secs(180), |seen| {
            published(seen).is_superset(&self.expected)
        });
        self.wait_all_committed(Duration::from_secs(120));
        decisions.drain(Duration::from_secs(2));
        for run in runs {
            assert_eq!(run.sigterm().code(), Some(0), "{context}: a clean SIGTERM exits 0");
        }
        let got = published(&decisions.seen);
        let missing: Vec<_> = self.expected.difference(&got).collect();
        let extra: Vec<_> = got.difference(&self.expected).collect();
        assert!(
            complete && missing.is_empty(),
            "{context}: missing {missing:?}\n{}",
            self.setup.logs()
        );
        assert!(extra.is_empty(), "{context}: decisions replay does not make: {extra:?}");
    }

    /// Every instance's lines on sources given up as silent: where a home
    /// stopped waiting, and so where its order may have given way.
    fn order_log(&self) -> String {
        let mut out = String::new();
        for n in 1..=3 {
            let log =
                std::fs::read_to_string(self.setup.dir.path().join(format!("instance-{n}.log"))).unwrap_or_default();
            for l in log
                .lines()
                .filter(|l| l.contains("kafka::order") || l.contains("new partitions"))
            {
                out += &format!("instance {n}: {l}\n");
            }
        }
        out
    }

    /// Whether instance `n`'s log has a line saying `what` about internal partitions.
    fn logged_internal(&self, n: usize, what: &str) -> bool {
        let log = std::fs::read_to_string(self.setup.dir.path().join(format!("instance-{n}.log"))).unwrap_or_default();
        log.lines()
            .any(|l| l.contains(what) && l.contains(&format!("{}-repartition-", self.group)))
    }

    /// Whether instance `n` was given internal partitions.
    fn owned_internal(&self, n: usize) -> bool {
        self.logged_internal(n, "new partitions")
    }

    /// Starts instances 1 to 3 and waits until each has partitions, so the
    /// input is shared from its first attempt.
    fn start_three(&self) -> Vec<Processor> {
        let runs: Vec<Processor> = (1..=3).map(|n| Processor::instance(&self.setup, n)).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let assigned = |n: usize| {
            let log =
                std::fs::read_to_string(self.setup.dir.path().join(format!("instance-{n}.log"))).unwrap_or_default();
            log.contains("new partitions")
        };
        while !(1..=3).all(assigned) {
            assert!(Instant::now() < deadline, "the group formed\n{}", self.setup.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        runs
    }
}

#[test]
fn three_instances_split_by_key_decide_as_one_instance_and_replay() {
    let _one = one_cluster();
    let st = split("kg-split", 16_000, 41);
    assert!(st.expected.len() >= 10, "an attack worth the name: {:?}", st.expected);
    assert_eq!(
        widest_spread(&st),
        PARTITIONS as usize,
        "an attacker on every partition"
    );
    assert!(
        st.expected
            .iter()
            .any(|(rule, _, subject, ..)| rule == "device-farm" && subject == "fp-spread-farm"),
        "replay catches the farm spread thin"
    );
    let runs = st.start_three();
    let mut decisions = st.broker.reader(DECISIONS, PARTITIONS);
    st.produce(&st.lines);
    st.finish(runs, &mut decisions, "three instances");
    for n in 1..=3 {
        assert!(st.owned_internal(n), "instance {n} took part\n{}", st.setup.logs());
    }
    for home in ["ip", "device", "account", "card"] {
        let mut copies = st
            .broker
            .reader(&format!("{}-repartition-{home}", st.group), PARTITIONS);
        copies.drain(Duration::from_secs(2));
        assert!(!copies.seen.is_empty(), "attempts were forwarded by {home}");
        assert!(
            !copies
                .seen
                .iter()
                .any(|r| String::from_utf8_lossy(&r.payload).contains(RAW)),
            "a raw code reached the {home} topic"
        );
    }
}

/// The control: the same three instances with the split switched off
/// (`pipeline.repartition = "never"`) each count only the attempts of their own
/// partitions, and attacks spread over accounts slip through.
#[test]
fn without_the_split_three_instances_miss_attacks_spread_over_partitions() {
    let _one = one_cluster();
    let st = split("kg-unsplit", 16_000, 41);
    let text = std::fs::read_to_string(&st.setup.config).expect("config");
    std::fs::write(
        &st.setup.config,
        text.replace("[pipeline]\n", "[pipeline]\nrepartition = \"never\"\n"),
    )
    .expect("config");
    let runs = st.start_three();
    let mut decisions = st.broker.reader(DECISIONS, PARTITIONS);
    st.produce(&st.lines);
    st.wait_all_committed(Duration::from_secs(120));
    decisions.drain(Duration::from_secs(3));
    for run in runs {
        assert_eq!(run.sigterm().code(), Some(0));
    }
    assert!(
        (1..=3).any(|n| {
            std::fs::read_to_string(st.setup.dir.path().join(format!("instance-{n}.log")))
                .unwrap_or_default()
                .contains("another instance shares the attempts topic, but this pipeline is not split")
        }),
        "the instances say they are sharing without the split\n{}",
        st.setup.logs()
    );
    let got = published(&decisions.seen);
    let missed: Vec<_> = st
        .expected
        .difference(&got)
        .filter(|(_, scope, ..)| scope == "device" || scope == "ip")
        .collect();
    assert!(
        missed.iter().any(|(rule, _, subject, ..)| rule == "device-farm" && subject == "fp-spread-farm"),
        "unsplit, the farm spread over partitions was caught anyway: the split test would prove nothing; missed {missed:?}"
    );
}

/// Tansu 0.6.0 expires a dead member but starts no new generation: the
/// survivors keep their old assignment. Any member joining or leaving starts
/// one, so a short-lived extra member joins and leaves. (Kafka rebalances on
/// the expiry alone.)
fn nudge_group(broker: &Broker, group: &str, topics: &[&str]) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(topics).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 && Instant::now() < deadline {
        // Messages it receives are ignored and never committed.
        let _ = consumer.poll(Duration::from_millis(100));
    }
    consumer.unsubscribe();
    drop(consumer);
}

#[test]
fn survivors_take_over_a_killed_instances_partitions_mid_attack() {
    let _one = one_cluster();
    let st = split("kg-split-kill", 16_000, 43);
    let (first, second) = st.lines.split_at(st.lines.len() / 2);
    let mut runs = st.start_three();
    let mut decisions = st.broker.reader(DECISIONS, PARTITIONS);
    st.produce(first);
    // Mid-attack: some decisions are out, instance 3 holds windows.
    assert!(
        decisions.read_until(Duration::from_secs(120), |seen| seen.len() >= 3),
        "{}",
        st.setup.logs()
    );
    // Every internal partition has committed work, so whichever the killed
    // instance owned has windows a survivor must rebuild.
    let internal: Vec<String> = ["ip", "device", "account", "card"]
        .iter()
        .map(|k| format!("{}-repartition-{k}", st.group))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !internal
        .iter()
        .all(|t| st.broker.committed(st.group, t, PARTITIONS).iter().all(|o| *o > 0))
    {
        assert!(
            Instant::now() < deadline,
            "internal partitions committed\n{}",
            st.setup.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    runs.pop().expect("instance 3").sigkill();
    // The broker notices after the 10 s session timeout.
    std::thread::sleep(Duration::from_secs(13));
    let mut topics = vec![ATTEMPTS];
    topics.extend(internal.iter().map(String::as_str));
    nudge_group(&st.broker, st.group, &topics);
    st.produce(second);
    st.finish(runs, &mut decisions, "after instance 3 was killed");
    // The homes waited for the killed router's partitions to move (they
    // hold the others back up to `pipeline.order_stall_ms`, 30 s) and took
    // the copies in event-time order after. The ids are printed for the
    // record: after a kill they can differ (README).
    let expected = replay(&st.setup, &st.lines);
    let got = by_id(&decisions.seen);
    let same = got.keys().filter(|k| expected.contains_key(*k)).count();
    eprintln!("after the kill: {same} of {} decision ids are replay's", expected.len());
    assert!(
        (1..=2).any(|n| st.logged_internal(n, "state restored")),
        "a survivor rebuilt the windows of a partition it took over\n{}",
        st.setup.logs()
    );
}

/// Decisions by id, `decided_at` removed.
fn by_id(seen: &[Record]) -> std::collections::BTreeMap<String, Value> {
    common::pipeline::by_id(seen.iter().map(|r| r.payload.as_slice()))
}

/// A backlog: the input is all on the broker before anything reads it, at
/// 50 attempts a second of event time, so one fetch of a partition (up to a
/// megabyte, about 3,000 attempts) spans a minute of event time, twice the
/// lateness. One instance reads all four partitions unsplit.
fn backlog_one_instance(group: &'static str, pipeline: &str) -> (Split, std::collections::BTreeMap<String, Value>) {
    let st = split_at(group, 16_000, 47, 50, &format!("repartition = \"never\"\n{pipeline}"));
    st.produce(&st.lines);
    let run = Processor::start(&st.setup, "run");
    let mut decisions = st.broker.reader(DECISIONS, PARTITIONS);
    st.wait_all_committed(Duration::from_secs(180));
    decisions.drain(Duration::from_secs(2));
    assert_eq!(run.sigterm().code(), Some(0));
    let got = by_id(&decisions.seen);
    (st, got)
}

/// Issue: "one instance reading several partitions unsplit has the same
/// exposure whenever its partitions are fetched unevenly". Taken in
/// event-time order across its partitions, it makes replay's decisions,
/// ids included.
#[test]
fn one_instance_catching_up_on_a_backlog_of_several_partitions_decides_as_replay() {
    let _one = one_cluster();
    let (st, got) = backlog_one_instance("kg-backlog-one", "");
    let expected = replay(&st.setup, &st.lines);
    let differ: Vec<&String> = expected.keys().filter(|k| got.get(*k) != expected.get(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    let show = |d: &Value| {
        format!(
            "{} {} {} {}",
            d["rule"], d["subject"], d["trigger_event_id"], d["event_ts"]
        )
    };
    assert!(
        differ.is_empty() && extra.is_empty(),
        "{} of replay's {} decisions missing or different: {:?}; {} extra: {:?}\n{}",
        differ.len(),
        expected.len(),
        differ.iter().map(|k| show(&expected[*k])).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().map(|k| show(&got[*k])).collect::<Vec<_>>(),
        st.setup.logs()
    );
}

/// The control: the same backlog with the ordering buffer at one attempt
/// (`pipeline.order_buffer = 1`: every attempt goes on as it arrives) gives
/// other decisions, so the test above proves something.
#[test]
fn without_the_ordering_the_same_backlog_gives_other_decisions() {
    let _one = one_cluster();
    let (st, got) = backlog_one_instance("kg-backlog-unordered", "order_buffer = 1");
    let expected = replay(&st.setup, &st.lines);
    assert_ne!(
        got, expected,
        "arrival order gave replay's decisions anyway: the backlog is not skewed enough to prove the ordering"
    );
}

/// Three split instances start on a backlog; one of them, a router of some
/// attempts partitions, is stopped for 8 s as it begins (a slow instance,
/// a long GC, a noisy neighbour), so the other routers' copies reach the
/// homes far ahead of its own. The homes wait for its watermark: the
/// published set is replay's.
#[test]
fn three_split_instances_on_a_backlog_with_one_held_back_decide_as_replay() {
    let _one = one_cluster();
    let st = split_at("kg-backlog-three", 16_000, 49, 50, "");
    let expected = st.expected.clone();
    assert!(expected.len() >= 10, "an attack worth the name: {expected:?}");
    let runs = held_back(&st);
    let mut decisions = st.broker.reader(DECISIONS, PARTITIONS);
    st.finish(runs, &mut decisions, "three instances on a backlog, one held back");
    // Each home took its copies in event-time order: the attempt that
    // crossed each line is replay's, so are the ids.
    let expected = replay(&st.setup, &st.lines);
    let got = by_id(&decisions.seen);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "decision ids differ from replay's; where the order gave way:\n{}",
        st.order_log()
    );
}

/// Produces the backlog, starts three instances and stops the first for 8 s.
fn held_back(st: &Split) -> Vec<Processor> {
    st.produce(&st.lines);
    let runs = st.start_three();
    runs[0].signal("STOP");
    std::thread::sleep(Duration::from_secs(8));
    runs[0].signal("CONT");
    runs
}

/// The control: the same, each engine taking copies as they arrive
/// (`pipeline.order_buffer = 1`), publishes another set.
#[test]
fn without_the_ordering_split_instances_on_a_held_back_backlog_decide_otherwise() {
    let _one = one_cluster();
    let st = split_at("kg-backlog-three-unordered", 16_000, 49, 50, "order_buffer = 1");
    let runs = held_back(&st);
    let mut decisions = st.broker.reader(DECISIONS, PARTITIONS);
    st.wait_all_committed(Duration::from_secs(180));
    decisions.drain(Duration::from_secs(3));
    for run in runs {
        assert_eq!(run.sigterm().code(), Some(0));
    }
    let expected = replay(&st.setup, &st.lines);
    assert_ne!(
        by_id(&decisions.seen).keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "arrival order gave replay's decisions anyway: the held-back backlog proves nothing"
    );
}

/// A backlog, three split instances, one SIGKILLed while they catch up:
/// the survivors take its partitions over, the homes wait for its sources
/// meanwhile, and the published decisions are replay's, ids included.
#[test]
fn three_split_instances_on_a_backlog_with_one_killed_decide_as_replay() {
    let _one = one_cluster();
    let st = split_at("kg-backlog-kill", 16_000, 53, 50, "");
    st.produce(&st.lines);
    let mut runs = st.start_three();
    let mut decisions = st.broker.reader(DECISIONS, PARTITIONS);
    assert!(
        decisions.read_until(Duration::from_secs(120), |seen| seen.len() >= 3),
        "{}",
        st.setup.logs()
    );
    runs.pop().expect("instance 3").sigkill();
    std::thread::sleep(Duration::from_secs(13));
    let mut topics = vec![ATTEMPTS.to_string()];
    topics.extend(["ip", "device", "account", "card"].map(|k| format!("{}-repartition-{k}", st.group)));
    nudge_group(
        &st.broker,
        st.group,
        &topics.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    st.finish(runs, &mut decisions, "a backlog, instance 3 killed");
    // The ids: the attempt that crossed each line can differ from replay's
    // after the kill (see the README, "Same decisions as one instance and as
    // replay"); how many is printed for the record.
    let expected = replay(&st.setup, &st.lines);
    let got = by_id(&decisions.seen);
    let same = got.keys().filter(|k| expected.contains_key(*k)).count();
    eprintln!("after the kill: {same} of {} decision ids are replay's", expected.len());
}

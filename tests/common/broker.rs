//! A real Kafka-protocol broker for the tests: Tansu 0.6.0, installed by
//! `scripts/setup.sh`, started on a free loopback port, killed on drop.
//!
//! What Tansu does differently from Kafka, and how the tests cope:
//! - topics are not auto-created: kamiguard and these helpers create them;
//! - offsets-for-timestamp answers 0: restores read from the start (correct,
//!   slower);
//! - a fetch from an offset inside a multi-record batch returns nothing, so a
//!   consumer resuming mid-batch stalls. Input that a test resumes from (after
//!   a restart) is produced one record per batch (`batch.num.messages=1`);
//!   production settings stay batched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    dir: PathBuf,
    log: PathBuf,
}

/// The Tansu binary: `$TANSU`, else `~/.cargo/bin/tansu`, else `tansu` on PATH.
fn tansu() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").map(PathBuf::from).unwrap_or_default();
    let cargo = home.join(".cargo/bin/tansu");
    if cargo.exists() {
        cargo
    } else {
        PathBuf::from("tansu")
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Broker {
    /// A broker that keeps everything in memory (forgets it on restart).
    pub fn memory(dir: &Path) -> Broker {
        Broker::start("memory://tansu/".into(), dir)
    }

    /// A broker on a SQLite file in `dir`: survives its own restart. (Tansu
    /// reads the path after `sqlite://` relative to its working directory,
    /// even when it starts with a slash.)
    pub fn sqlite(dir: &Path) -> Broker {
        Broker::start("sqlite://tansu.db".into(), dir)
    }

    fn start(storage: String, dir: &Path) -> Broker {
        let mut b = Broker {
            child: None,
            port: free_port(),
            storage,
            dir: dir.to_owned(),
            log: dir.join("tansu.log"),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log");
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .current_dir(&self.dir)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}); run scripts/setup.sh", tansu().display()));
        self.child = Some(child);
        super::wait_listening(self.port, "tansu");
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Creates topics with `partitions` each, through kamiguard's own code.
    pub fn create_topics(&self, partitions: i32) {
        self.ensure_topics(kamiguard::kafka::KafkaConfig {
            partitions,
            ..Default::default()
        });
    }

    /// Creates the topics `kafka` names (its brokers are set to this broker's).
    pub fn ensure_topics(&self, kafka: kamiguard::kafka::KafkaConfig) {
        let kafka = kamiguard::kafka::KafkaConfig {
            brokers: self.bootstrap(),
            replication_factor: 1,
            ..kafka
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(kamiguard::kafka::ensure_topics(&kafka))
            .expect("create topics");
    }

    /// Produces `messages` to `topic`, without keys. With `one_per_batch`,
    /// each record is its own batch (see the module doc).
    pub fn produce(&self, topic: &str, messages: &[Vec<u8>], one_per_batch: bool) {
        let unkeyed: Vec<(Option<String>, Option<i32>, &[u8])> =
            messages.iter().map(|m| (None, None, m.as_slice())).collect();
        self.produce_to(topic, &unkeyed, one_per_batch);
    }

    /// Produces (key, partition, payload) records; `None` leaves the choice
    /// to the client.
    pub fn produce_to(&self, topic: &str, messages: &[(Option<String>, Option<i32>, &[u8])], one_per_batch: bool) {
        let records: Vec<_> = messages.iter().map(|(k, p, m)| (k.clone(), *p, None, *m)).collect();
        self.produce_records(topic, &records, one_per_batch);
    }

    /// Produces (record timestamp ms, payload) records, without keys: as an
    /// upstream service that stamps each record when it sends it.
    pub fn produce_timed(&self, topic: &str, messages: &[(i64, Vec<u8>)]) {
        let records: Vec<_> = messages
            .iter()
            .map(|(at, m)| (None, None, Some(*at), m.as_slice()))
            .collect();
        self.produce_records(topic, &records, false);
    }

    /// Produces (key, partition, record timestamp, payload) records.
    #[allow(clippy::type_complexity)]
    fn produce_records(
        &self,
        topic: &str,
        messages: &[(Option<String>, Option<i32>, Option<i64>, &[u8])],
        one_per_batch: bool,
    ) {
        let mut config = ClientConfig::new();
        // Large enough for the hostile tests' 2 MiB attempts.
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("linger.ms", "5")
            .set("message.max.bytes", "10000000");
        if one_per_batch {
            config.set("batch.num.messages", "1");
        }
        let producer: BaseProducer = config.create().expect("producer");
        for (key, partition, timestamp, m) in messages {
            let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(*m);
            if let Some(at) = timestamp {
                record = record.timestamp(*at);
            }
            if let Some(k) = key {
                record = record.key(k.as_str());
            }
            if let Some(p) = partition {
                record = record.partition(*p);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
    }

    /// Committed offsets of `group` on `topic`'s `partitions`.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let c = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed");
        (0..partitions)
            .map(|p| match c.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    }

    /// A reader of every partition of `topic` from the start.
    pub fn reader(&self, topic: &str, partitions: i32) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        Reader {
            consumer,
            seen: Vec::new(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

pub struct Reader {
    consumer: BaseConsumer,
    pub seen: Vec<Record>,
}

impl Reader {
    /// Reads until `done(seen)` or `timeout`; returns whether `done` held.
    pub fn read_until(&mut self, timeout: Duration, done: impl Fn(&[Record]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            if Instant::now() > deadline {
                return false;
            }
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.seen.push(Record {
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        true
    }

    /// Reads whatever arrives within `quiet`.
    pub fn drain(&mut self, quiet: Duration) {
        let _ = self.read_until(quiet, |_| false);
    }
}

//! Running `kamiguard run` and `kamiguard replay` as a user would: a scratch
//! folder with geo fixtures and a config, processes started and stopped with
//! signals, and replay's decisions to compare with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KEY: &str = "test-code-key";
pub const ATTEMPTS: &str = "kamiguard.attempts";
pub const DECISIONS: &str = "kamiguard.decisions";
pub const DLQ: &str = "kamiguard.attempts.dlq";

/// Static membership, so a restarted processor gets its partition back at
/// once. The session is longer than the default because Tansu does not count
/// a static member's rejoin as contact: the member is expired at its first
/// heartbeat after a restart when more than a session has passed since the
/// previous instance's last heartbeat (join and sync pause 3 s each on
/// Tansu), yet it stays the group's leader, and every later member then
/// waits for that dead leader's assignment forever.
const STATIC_MEMBER: &str = r#""group.instance.id" = "kg-test-instance"
"session.timeout.ms" = "30000""#;

/// A scratch folder with geo fixtures and a config pointing at `broker`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The HTTP endpoint's port: each test its own, since tests run at once.
    pub http_port: u16,
    /// The admin API's port.
    pub admin_port: u16,
}

pub fn setup(broker_port: u16, group: &str, partitions: i32) -> Setup {
    setup_with(broker_port, group, partitions, "")
}

/// [`setup`] with `[kafka.*]` sub-tables appended.
pub fn setup_with(broker_port: u16, group: &str, partitions: i32, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let geo = kamiguard::tools::fixtures::write_geo_fixtures(&dir.path().join("geo")).expect("geo");
    let path = |p: &Option<PathBuf>| p.as_ref().expect("geo path").display().to_string();
    let config = dir.path().join("kamiguard.toml");
    let http_port = super::broker::free_port();
    let admin_port = super::broker::free_port();
    std::fs::write(
        &config,
        format!(
            r#"rules = "{rules}"
[geo]
city = "{city}"
asn = "{asn}"
anonymous = "{anonymous}"
[kafka]
brokers = "127.0.0.1:{broker_port}"
group_id = "{group}"
partitions = {partitions}
replication_factor = 1
[kafka.consumer]
{static_member}
[pipeline]
commit_interval_ms = 100
batch_ms = 10
rules_poll_secs = 0
[http]
listen = "127.0.0.1:{http_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
audit_timeout_ms = 3000
{extra}
"#,
            rules = super::root().join("config/rules").display(),
            static_member = STATIC_MEMBER,
            city = path(&geo.city),
            asn = path(&geo.asn),
            anonymous = path(&geo.anonymous),
        ),
    )
    .expect("write config");
    Setup {
        dir,
        config,
        http_port,
        admin_port,
    }
}

impl Setup {
    /// Every log in the scratch folder, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out += &format!("--- {}\n", e.path().display());
                for l in tail.iter().rev() {
                    out += l;
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// A running `kamiguard run`.
pub struct Processor {
    pub child: Child,
}

impl Processor {
    pub fn start(setup: &Setup, name: &str) -> Processor {
        Processor::start_with(setup, name, &[])
    }

    pub fn start_with(setup: &Setup, name: &str, env: &[(&str, &str)]) -> Processor {
        Processor::start_config(setup, &setup.config, name, env)
    }

    /// Member `n` of a group of several, with an HTTP port of its own. Its
    /// membership is dynamic: on Tansu, static members of a group of several
    /// rebalance every few seconds without end, while a dynamic member that
    /// dies is expired after its session (10 s).
    pub fn instance(setup: &Setup, n: usize) -> Processor {
        let text = std::fs::read_to_string(&setup.config).expect("config");
        let config = setup.dir.path().join(format!("instance-{n}.toml"));
        std::fs::write(&config, text.replace(STATIC_MEMBER, "")).expect("instance config");
        let listen = format!("127.0.0.1:{}", super::broker::free_port());
        let admin = format!("127.0.0.1:{}", super::broker::free_port());
        Processor::start_config(
            setup,
            &config,
            &format!("instance-{n}"),
            &[("KAMIGUARD_HTTP_LISTEN", &listen), ("KAMIGUARD_ADMIN_LISTEN", &admin)],
        )
    }

    pub fn start_config(setup: &Setup, config: &std::path::Path, name: &str, env: &[(&str, &str)]) -> Processor {
        let log = std::fs::File::create(setup.dir.path().join(format!("{name}.log"))).expect("log");
        let child = super::kamiguard()
            .args(["run", "--config"])
            .arg(config)
            .env("KAMIGUARD_CODE_KEY", KEY)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kamiguard run");
        Processor { child }
    }

    /// Stops (`STOP`) or resumes (`CONT`) the process: a slow instance.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal}");
    }

    pub fn sigkill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn sigterm(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kamiguard did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `kamiguard replay` decides on `lines`, by decision id, `decided_at` removed.
pub fn replay(setup: &Setup, lines: &[Vec<u8>]) -> BTreeMap<String, Value> {
    let events = setup.dir.path().join("events.jsonl");
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    std::fs::write(&events, text).expect("events");
    let out = super::kamiguard()
        .args(["replay", "--config"])
        .arg(&setup.config)
        .arg(&events)
        .env("KAMIGUARD_CODE_KEY", KEY)
        .output()
        .expect("replay");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    by_id(String::from_utf8(out.stdout).expect("utf8").lines().map(str::as_bytes))
}

pub fn by_id<'a>(payloads: impl Iterator<Item = &'a [u8]>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for p in payloads {
        let mut v: Value = serde_json::from_slice(p).expect("decision json");
        v.as_object_mut().expect("object").remove("decided_at");
        let id = v["decision_id"].as_str().expect("id").to_string();
        if let Some(earlier) = map.insert(id.clone(), v.clone()) {
            assert_eq!(earlier, v, "decision {id} published twice with different content");
        }
    }
    map
}

//! The geo step against databases this project did not write: MaxMind's own
//! test databases in their production schemas, each in its slot and in the
//! wrong one, and MaxMind's collection of corrupt files
//! (tests/fixtures/maxmind/README.md).

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use kamiguard::enrich::{EnrichError, GeoConfig, GeoDatabases, GeoNeeds, NetworkFlags};

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/maxmind").join(name)
}

fn test_db(name: &str) -> Option<PathBuf> {
    Some(fixture(&format!("test-data/{name}.mmdb")))
}

const ALL: GeoNeeds = GeoNeeds {
    city: true,
    asn: true,
    anonymous: true,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[test]
fn maxmind_test_databases_answer_in_their_slots() {
    let geo = GeoDatabases::open(&GeoConfig {
        city: test_db("GeoIP2-City-Test"),
        asn: test_db("GeoLite2-ASN-Test"),
        anonymous: test_db("GeoIP2-Anonymous-IP-Test"),
    })
    .expect("open");
    let london = geo.lookup(ip("81.2.69.142"), ALL);
    assert_eq!(london.country.map(|c| c.to_string()).as_deref(), Some("GB"));
    assert_eq!(london.location, Some((51.5142, -0.0931)));
    let flags = london.network.names();
    assert_eq!(
        flags,
        [
            "hosting",
            "anonymous",
            "vpn",
            "tor",
            "public_proxy",
            "residential_proxy"
        ]
    );
    assert_eq!(geo.lookup(ip("1.128.0.1"), ALL).asn, Some(1221));
    assert_eq!(
        geo.lookup(ip("1.124.213.1"), ALL).network.0 & NetworkFlags::TOR,
        NetworkFlags::TOR
    );
    // Outside every network: nothing known, nothing invented.
    assert_eq!(geo.lookup(ip("10.0.0.1"), ALL), Default::default());

    // The other accepted families: GeoLite2 City, a Country database for
    // city facts (countries, no location), GeoIP2-ISP for ASNs.
    let other = GeoDatabases::open(&GeoConfig {
        city: test_db("GeoIP2-Country-Test"),
        asn: test_db("GeoIP2-ISP-Test"),
        anonymous: None,
    })
    .expect("open");
    let facts = other.lookup(ip("81.2.69.142"), ALL);
    assert_eq!(facts.country.map(|c| c.to_string()).as_deref(), Some("GB"));
    assert_eq!(facts.location, None);
    assert_eq!(other.lookup(ip("1.128.0.1"), ALL).asn, Some(1221));
    GeoDatabases::open(&GeoConfig {
        city: test_db("GeoLite2-City-Test"),
        ..Default::default()
    })
    .expect("GeoLite2-City is a city database");
}

#[test]
fn a_database_in_the_wrong_slot_is_refused_with_what_it_is() {
    let cases = [
        ("city", "GeoLite2-ASN-Test", "GeoLite2-ASN"),
        ("city", "GeoIP2-Anonymous-IP-Test", "GeoIP2-Anonymous-IP"),
        ("asn", "GeoIP2-City-Test", "GeoIP2-City"),
        ("asn", "GeoIP2-Anonymous-IP-Test", "GeoIP2-Anonymous-IP"),
        ("anonymous", "GeoIP2-City-Test", "GeoIP2-City"),
        ("anonymous", "GeoLite2-ASN-Test", "GeoLite2-ASN"),
    ];
    for (slot, file, found) in cases {
        let mut config = GeoConfig::default();
        match slot {
            "city" => config.city = test_db(file),
            "asn" => config.asn = test_db(file),
            _ => config.anonymous = test_db(file),
        }
        let err = GeoDatabases::open(&config).expect_err(file);
        assert!(matches!(err, EnrichError::WrongType { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("is a `{found}")), "{text}");
        assert!(text.contains("check which file is given for which database"), "{text}");
    }
}

/// `check-rules`, `replay` and `run` all open the databases the same way:
/// each refuses an ASN database given as `--city` and exits non-zero.
#[test]
fn every_command_refuses_a_swapped_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = tmp.path().join("e.jsonl");
    std::fs::write(&events, kamiguard::tools::generate::generate(10, 1, 100)).expect("write");
    let swapped = [
        "--city".to_string(),
        fixture("test-data/GeoLite2-ASN-Test.mmdb").display().to_string(),
        "--asn".to_string(),
        fixture("test-data/GeoIP2-City-Test.mmdb").display().to_string(),
        "--anonymous".to_string(),
        fixture("test-data/GeoIP2-Anonymous-IP-Test.mmdb").display().to_string(),
    ];
    for args in [
        vec!["check-rules".to_string(), "config/rules".to_string()],
        vec!["replay".to_string(), events.display().to_string()],
    ] {
        let out = common::kamiguard()
            .current_dir(common::root())
            .args(&args)
            .args(&swapped)
            .env("KAMIGUARD_CODE_KEY", "k")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a swapped database\n{stderr}");
        assert!(stderr.contains("is a `GeoLite2-ASN"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Every corrupt file is refused when opened or survives lookups, its bad
/// records counted: never a panic.
#[test]
fn corrupt_databases_are_refused_or_survived_never_a_panic() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["libmaxminddb", "maxminddb-golang", "maxminddb-python"] {
        let mut here: Vec<PathBuf> = std::fs::read_dir(fixture(&format!("bad-data/{dir}")))
            .expect("bad-data")
            .map(|e| e.expect("entry").path())
            .collect();
        here.sort();
        files.extend(here);
    }
    files.push(fixture("test-data/GeoIP2-City-Test-Broken-Double-Format.mmdb"));
    files.push(fixture("test-data/GeoIP2-City-Test-Invalid-Node-Count.mmdb"));
    assert!(files.len() >= 23, "{files:?}");
    let addresses: Vec<IpAddr> = (0..=255u32)
        .flat_map(|a| [ip(&format!("{a}.1.2.3")), ip(&format!("{a}.128.0.1"))])
        .chain(["81.2.69.142", "1.1.1.1", "::1", "2001:218::1", "::ffff:1.2.3.4"].map(ip))
        .collect();
    let mut refused = 0;
    for file in &files {
        for slot in ["city", "asn", "anonymous"] {
            let mut config = GeoConfig::default();
            let path = Some(file.clone());
            match slot {
                "city" => config.city = path,
                "asn" => config.asn = path,
                _ => config.anonymous = path,
            }
            let outcome = std::panic::catch_unwind(|| match GeoDatabases::open(&config) {
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    true
                }
                Ok(geo) => {
                    for a in &addresses {
                        geo.lookup(*a, ALL);
                    }
                    false
                }
            });
            match outcome {
                Ok(true) => refused += 1,
                Ok(false) => {}
                Err(_) => panic!("{} in the {slot} slot panicked", show(file)),
            }
        }
    }
    assert!(refused > 0, "some corrupt files must be refused outright");
}

fn show(p: &Path) -> String {
    p.strip_prefix(common::root()).unwrap_or(p).display().to_string()
}

/// A record that does not decode reads as unknown, is counted, and the
/// rest of the database still answers.
#[test]
fn records_that_do_not_decode_are_counted() {
    let geo = GeoDatabases::open(&GeoConfig {
        city: test_db("GeoIP2-City-Test-Broken-Double-Format"),
        ..Default::default()
    });
    let Ok(geo) = geo else {
        // Refused at open: as good as counted, and said.
        return;
    };
    for a in ["81.2.69.142", "2.125.160.216", "175.16.199.1", "2001:218::1"] {
        geo.lookup(ip(a), ALL);
    }
    let failed: u64 = geo.failed_counts().iter().map(|(_, n)| n).sum();
    assert!(failed > 0, "the broken double format fails to decode somewhere");
}

//! Step 2 of the flow: enrichment. Looks an address up in MaxMind GeoIP2 /
//! GeoLite2 databases (City, ASN, Anonymous-IP, in MaxMind's standard schemas)
//! and returns the few facts the rules use.
//!
//! Databases are read fully into memory when opened; a lookup never touches
//! the disk. A database is opened only when configured, and the rule compiler
//! refuses a rule that needs one that is not (see `rules::compile`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use maxminddb::Reader;
use serde::Deserialize;

use crate::event::Country;

/// Which databases a rule set needs; also which ones are open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GeoNeeds {
    pub city: bool,
    pub asn: bool,
    pub anonymous: bool,
}

impl GeoNeeds {
    pub fn any(&self) -> bool {
        self.city || self.asn || self.anonymous
    }

    pub fn union(self, other: GeoNeeds) -> GeoNeeds {
        GeoNeeds {
            city: self.city || other.city,
            asn: self.asn || other.asn,
            anonymous: self.anonymous || other.anonymous,
        }
    }
}

/// Paths to the databases, each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// GeoIP2-City or GeoLite2-City `.mmdb` file.
    #[serde(default)]
    pub city: Option<PathBuf>,
    /// GeoLite2-ASN or GeoIP2-ISP `.mmdb` file.
    #[serde(default)]
    pub asn: Option<PathBuf>,
    /// GeoIP2-Anonymous-IP `.mmdb` file.
    #[serde(default)]
    pub anonymous: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("cannot open the {what} database {path}: {error}")]
    Open {
        what: &'static str,
        path: PathBuf,
        error: maxminddb::MaxMindDbError,
    },
    #[error("{path} is a `{found}` database, not a {what} database (expected {expected}); check which file is given for which database")]
    WrongType {
        what: &'static str,
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// The `database_type` metadata each slot accepts, as prefixes: MaxMind's
/// products whose records carry the fields kamiguard reads there. A
/// Country database has no location, so distance and speed rules never fire
/// with one; its countries serve the rest.
const CITY_TYPES: [&str; 5] = [
    "GeoIP2-City",
    "GeoLite2-City",
    "GeoIP2-Country",
    "GeoLite2-Country",
    "GeoIP2-Enterprise",
];
const ASN_TYPES: [&str; 2] = ["GeoLite2-ASN", "GeoIP2-ISP"];
const ANONYMOUS_TYPES: [&str; 2] = ["GeoIP2-Anonymous-IP", "GeoIP-Anonymous-Plus"];

/// The facts about one address.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GeoFacts {
    pub country: Option<Country>,
    /// Latitude and longitude in degrees.
    pub location: Option<(f64, f64)>,
    pub asn: Option<u32>,
    pub network: NetworkFlags,
}

/// Anonymous-IP flags, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkFlags(pub u8);

impl NetworkFlags {
    pub const HOSTING: u8 = 1;
    pub const ANONYMOUS: u8 = 2;
    pub const VPN: u8 = 4;
    pub const TOR: u8 = 8;
    pub const PUBLIC_PROXY: u8 = 16;
    pub const RESIDENTIAL_PROXY: u8 = 32;

    /// Names as written in rule files, with their bits.
    pub const NAMES: [(&'static str, u8); 6] = [
        ("hosting", Self::HOSTING),
        ("anonymous", Self::ANONYMOUS),
        ("vpn", Self::VPN),
        ("tor", Self::TOR),
        ("public_proxy", Self::PUBLIC_PROXY),
        ("residential_proxy", Self::RESIDENTIAL_PROXY),
    ];

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, bit)| self.0 & bit != 0)
            .map(|(name, _)| *name)
            .collect()
    }
}

#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: Option<CountryRecord<'a>>,
    #[serde(default)]
    location: Option<LocationRecord>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationRecord {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

#[derive(Deserialize)]
struct AsnRecord {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
}

#[derive(Deserialize, Default)]
struct AnonymousRecord {
    #[serde(default)]
    is_anonymous: Option<bool>,
    #[serde(default)]
    is_anonymous_vpn: Option<bool>,
    #[serde(default)]
    is_hosting_provider: Option<bool>,
    #[serde(default)]
    is_public_proxy: Option<bool>,
    #[serde(default)]
    is_residential_proxy: Option<bool>,
    #[serde(default)]
    is_tor_exit_node: Option<bool>,
}

/// One open database and the records it decoded last.
struct Database<T> {
    reader: Reader<Vec<u8>>,
    recent: Recent<usize, T>,
    /// Which database, for the warning on a record that does not decode.
    what: &'static str,
    /// Records found for an address that did not decode (corrupt data, or
    /// a schema other than MaxMind's): each read as "not known".
    failed: std::sync::atomic::AtomicU64,
}

/// Recently worked-out facts by key, in a direct-mapped table: a key's slot
/// holds the last key that landed there. Two layers use it:
///
/// - per database, decoded records by their offset in its data section. Many
///   networks share one record (every address of a city shares the city's),
///   and decoding a record is most of a database lookup's cost (a City record
///   carries names in many languages that are skipped field by field);
/// - in front of the databases, whole lookups by address and the databases
///   asked. Traffic repeats addresses (a user's home, a carrier's NAT, an
///   attacker's proxy), and an address answered here skips the walk down
///   every database's search tree.
struct Recent<K, T> {
    table: Mutex<Table<K, T>>,
}

struct Table<K, T> {
    slots: Vec<Option<(K, T)>>,
    /// Lookups answered from a kept entry, and entries worked out.
    kept: u64,
    decoded: u64,
}

/// Slots per table: 4,096 entries (576 KiB for all four tables: 64-byte
/// address slots, 16 to 40 bytes for a database's).
const RECENT_SLOTS: usize = 4096;

impl<K: Copy + PartialEq, T: Copy> Recent<K, T> {
    fn new() -> Recent<K, T> {
        Recent {
            table: Mutex::new(Table {
                slots: vec![None; RECENT_SLOTS],
                kept: 0,
                decoded: 0,
            }),
        }
    }

    /// The facts for `key`, worked out by `decode` when not kept. `hash`
    /// spreads keys over the slots: any mix of the key's bits.
    fn get_or(&self, key: K, hash: u64, decode: impl FnOnce() -> T) -> T {
        let slot = (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (u64::BITS - RECENT_SLOTS.trailing_zeros())) as usize;
        // Held for a read or a write, never while decoding; nothing panics under it.
        let lock = || self.table.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut table = lock();
            if let Some((at, facts)) = table.slots[slot] {
                if at == key {
                    table.kept += 1;
                    return facts;
                }
            }
        }
        let facts = decode();
        let mut table = lock();
        table.slots[slot] = Some((key, facts));
        table.decoded += 1;
        facts
    }

    /// (lookups answered from a kept record, records decoded) so far.
    fn counts(&self) -> (u64, u64) {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        (table.kept, table.decoded)
    }
}

impl<T: Copy + Default> Database<T> {
    /// The facts for `ip`: the default when the database has no record for
    /// it or the record does not decode as `R`.
    fn facts<'de, R: Deserialize<'de>>(&'de self, ip: IpAddr, from: impl FnOnce(R) -> T) -> T {
        let Ok(found) = self.reader.lookup(ip) else {
            return T::default();
        };
        let Some(offset) = found.offset() else {
            return T::default();
        };
        self.recent.get_or(offset, offset as u64, || match found.decode::<R>() {
            Ok(record) => record.map(from).unwrap_or_default(),
            Err(error) => {
                let before = self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if before == 0 {
                    tracing::warn!(database = self.what, %error, "a geo record does not decode; it reads as unknown (kamiguard_geo_records_total{{result=\"failed\"}} counts them; this is said once)");
                }
                T::default()
            }
        })
    }
}

/// What the City database says of an address: country and location.
type Place = (Option<Country>, Option<(f64, f64)>);

/// The open databases.
pub struct GeoDatabases {
    city: Option<Database<Place>>,
    asn: Option<Database<Option<u32>>>,
    anonymous: Option<Database<NetworkFlags>>,
    /// Whole lookups by address and the databases they asked.
    addresses: Recent<(IpAddr, GeoNeeds), GeoFacts>,
}

impl Default for GeoDatabases {
    /// No database open.
    fn default() -> GeoDatabases {
        GeoDatabases {
            city: None,
            asn: None,
            anonymous: None,
            addresses: Recent::new(),
        }
    }
}

impl std::fmt::Debug for GeoDatabases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDatabases")
            .field("available", &self.available())
            .finish()
    }
}

fn open<T: Copy>(
    what: &'static str,
    accepted: &[&str],
    path: &Option<PathBuf>,
) -> Result<Option<Database<T>>, EnrichError> {
    path.as_deref()
        .map(|p: &Path| {
            let reader = Reader::open_readfile(p).map_err(|error| EnrichError::Open {
                what,
                path: p.to_owned(),
                error,
            })?;
            let found = &reader.metadata().database_type;
            if !accepted.iter().any(|t| found.starts_with(t)) {
                return Err(EnrichError::WrongType {
                    what,
                    path: p.to_owned(),
                    found: found.chars().take(64).collect(),
                    expected: accepted.join(", "),
                });
            }
            Ok(Database {
                reader,
                recent: Recent::new(),
                what,
                failed: Default::default(),
            })
        })
        .transpose()
}

impl GeoDatabases {
    /// Opens every configured database.
    pub fn open(config: &GeoConfig) -> Result<GeoDatabases, EnrichError> {
        Ok(GeoDatabases {
            city: open("City", &CITY_TYPES, &config.city)?,
            asn: open("ASN", &ASN_TYPES, &config.asn)?,
            anonymous: open("Anonymous-IP", &ANONYMOUS_TYPES, &config.anonymous)?,
            addresses: Recent::new(),
        })
    }

    pub fn available(&self) -> GeoNeeds {
        GeoNeeds {
            city: self.city.is_some(),
            asn: self.asn.is_some(),
            anonymous: self.anonymous.is_some(),
        }
    }

    /// For each open database, how many lookups a kept record answered and
    /// how many records were decoded; and for `addresses`, how many whole
    /// lookups a kept address answered (they reach no database) and how many
    /// went on to the databases: whether what is kept fits the traffic.
    pub fn record_counts(&self) -> Vec<(&'static str, u64, u64)> {
        let counts = |name, recent: Option<(u64, u64)>| recent.map(|(kept, decoded)| (name, kept, decoded));
        let any_open = self.available().any();
        [
            counts("city", self.city.as_ref().map(|d| d.recent.counts())),
            counts("asn", self.asn.as_ref().map(|d| d.recent.counts())),
            counts("anonymous", self.anonymous.as_ref().map(|d| d.recent.counts())),
            counts("addresses", any_open.then(|| self.addresses.counts())),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// For each open database, the records found that did not decode.
    pub fn failed_counts(&self) -> Vec<(&'static str, u64)> {
        let failed = |name, n: Option<&std::sync::atomic::AtomicU64>| {
            n.map(|n| (name, n.load(std::sync::atomic::Ordering::Relaxed)))
        };
        [
            failed("city", self.city.as_ref().map(|d| &d.failed)),
            failed("asn", self.asn.as_ref().map(|d| &d.failed)),
            failed("anonymous", self.anonymous.as_ref().map(|d| &d.failed)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Looks `ip` up in the databases that `needs` asks for. A database error
    /// on one record (corrupt data) is treated as "not known", never a panic.
    pub fn lookup(&self, ip: IpAddr, needs: GeoNeeds) -> GeoFacts {
        self.addresses
            .get_or((ip, needs), crate::key::key_of(&ip), || self.look_up(ip, needs))
    }

    /// [`GeoDatabases::lookup`] without the kept addresses.
    fn look_up(&self, ip: IpAddr, needs: GeoNeeds) -> GeoFacts {
        let mut facts = GeoFacts::default();
        if let Some(db) = self.city.as_ref().filter(|_| needs.city) {
            (facts.country, facts.location) = db.facts(ip, |rec: CityRecord<'_>| {
                (
                    rec.country.and_then(|c| c.iso_code).and_then(Country::parse),
                    rec.location
                        .and_then(|l| Some((l.latitude?, l.longitude?)))
                        .filter(|(lat, lon)| lat.is_finite() && lon.is_finite()),
                )
            });
        }
        if let Some(db) = self.asn.as_ref().filter(|_| needs.asn) {
            facts.asn = db.facts(ip, |rec: AsnRecord| rec.autonomous_system_number);
        }
        if let Some(db) = self.anonymous.as_ref().filter(|_| needs.anonymous) {
            facts.network = db.facts(ip, |rec: AnonymousRecord| {
                let mut bits = 0;
                for (flag, bit) in [
                    (rec.is_hosting_provider, NetworkFlags::HOSTING),
                    (rec.is_anonymous, NetworkFlags::ANONYMOUS),
                    (rec.is_anonymous_vpn, NetworkFlags::VPN),
                    (rec.is_tor_exit_node, NetworkFlags::TOR),
                    (rec.is_public_proxy, NetworkFlags::PUBLIC_PROXY),
                    (rec.is_residential_proxy, NetworkFlags::RESIDENTIAL_PROXY),
                ] {
                    if flag == Some(true) {
                        bits |= bit;
                    }
                }
                NetworkFlags(bits)
            });
        }
        facts
    }
}

/// Great-circle distance in kilometres (haversine, mean Earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    // Most attempts come from the account's last city, the same point:
    // the formula gives exactly 0 there, without its five trigonometric calls.
    if a == b {
        return 0.0;
    }
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_to_shanghai_is_about_1070_km() {
        let d = distance_km((39.9042, 116.4074), (31.2304, 121.4737));
        assert!((1050.0..1090.0).contains(&d), "{d}");
    }

    #[test]
    fn kept_records_and_addresses_answer_only_for_themselves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::tools::fixtures::write_geo_fixtures(dir.path()).expect("fixtures");
        let geo = GeoDatabases::open(&config).expect("open");
        let all = geo.available();
        let country = |ip: &str| geo.lookup(ip.parse().expect("ip"), all).country.map(|c| c.to_string());
        // Each city twice, interleaved, from another address of its network
        // the second time: the second answer comes from the kept record.
        for host in [7, 8] {
            assert_eq!(country(&format!("175.16.199.{host}")).as_deref(), Some("CN"));
            assert_eq!(country(&format!("198.51.100.{host}")).as_deref(), Some("JP"));
            assert_eq!(country(&format!("203.0.113.{host}")).as_deref(), Some("US"));
            assert_eq!(country(&format!("10.0.0.{host}")), None);
        }
        let counts = |name| {
            geo.record_counts()
                .into_iter()
                .find(|(db, ..)| *db == name)
                .expect("counts")
        };
        assert_eq!(
            counts("city"),
            ("city", 3, 3),
            "three records decoded once, kept for the second pass"
        );
        assert_eq!(counts("addresses"), ("addresses", 0, 8), "eight addresses, each new");

        // The same addresses again: answered by address, no database asked.
        for host in [7, 8] {
            assert_eq!(country(&format!("203.0.113.{host}")).as_deref(), Some("US"));
            assert_eq!(country(&format!("10.0.0.{host}")), None);
        }
        assert_eq!(counts("addresses"), ("addresses", 4, 8));
        assert_eq!(counts("city"), ("city", 3, 3));
        // Asked for fewer databases, an address is looked up again, and
        // answers only what was asked.
        let only_asn = GeoNeeds {
            asn: true,
            ..GeoNeeds::default()
        };
        let facts = geo.lookup("203.0.113.7".parse().expect("ip"), only_asn);
        assert_eq!((facts.country, facts.location), (None, None));
        assert_eq!(counts("addresses"), ("addresses", 4, 9));
        let hosting = geo.lookup("192.0.2.10".parse().expect("ip"), all).network;
        assert_ne!(hosting.0, 0, "the fixture marks 192.0.2.0/24 as hosting");
        assert_eq!(geo.lookup("175.16.199.7".parse().expect("ip"), all).network.0, 0);
    }

    #[test]
    fn same_place_is_zero_km() {
        assert!(distance_km((10.0, 20.0), (10.0, 20.0)).abs() < 1e-9);
    }
}

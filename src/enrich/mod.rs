//! Step 2 of the flow: enrichment. Looks an address up in MaxMind GeoIP2 /
//! GeoLite2 databases (City, ASN, Anonymous-IP, in MaxMind's standard schemas)
//! and returns the few facts the rules use.
//!
//! Databases are read fully into memory when opened; a lookup never touches
//! the disk. A database is opened only when configured, and the rule compiler
//! refuses a rule that needs one that is not (see `rules::compile`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
}

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

/// The open databases.
#[derive(Default)]
pub struct GeoDatabases {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
    anonymous: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for GeoDatabases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDatabases")
            .field("available", &self.available())
            .finish()
    }
}

fn open(what: &'static str, path: &Option<PathBuf>) -> Result<Option<Reader<Vec<u8>>>, EnrichError> {
    path.as_deref()
        .map(|p: &Path| {
            Reader::open_readfile(p).map_err(|error| EnrichError::Open {
                what,
                path: p.to_owned(),
                error,
            })
        })
        .transpose()
}

impl GeoDatabases {
    /// Opens every configured database.
    pub fn open(config: &GeoConfig) -> Result<GeoDatabases, EnrichError> {
        Ok(GeoDatabases {
            city: open("City", &config.city)?,
            asn: open("ASN", &config.asn)?,
            anonymous: open("Anonymous-IP", &config.anonymous)?,
        })
    }

    pub fn available(&self) -> GeoNeeds {
        GeoNeeds {
            city: self.city.is_some(),
            asn: self.asn.is_some(),
            anonymous: self.anonymous.is_some(),
        }
    }

    /// Looks `ip` up in the databases that `needs` asks for. A database error
    /// on one record (corrupt data) is treated as "not known", never a panic.
    pub fn lookup(&self, ip: IpAddr, needs: GeoNeeds) -> GeoFacts {
        let mut facts = GeoFacts::default();
        if needs.city {
            if let Some(rec) = self.city.as_ref().and_then(|r| decode::<CityRecord<'_>>(r, ip)) {
                facts.country = rec.country.and_then(|c| c.iso_code).and_then(Country::parse);
                facts.location = rec
                    .location
                    .and_then(|l| Some((l.latitude?, l.longitude?)))
                    .filter(|(lat, lon)| lat.is_finite() && lon.is_finite());
            }
        }
        if needs.asn {
            facts.asn = self
                .asn
                .as_ref()
                .and_then(|r| decode::<AsnRecord>(r, ip))
                .and_then(|rec| rec.autonomous_system_number);
        }
        if needs.anonymous {
            if let Some(rec) = self.anonymous.as_ref().and_then(|r| decode::<AnonymousRecord>(r, ip)) {
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
                facts.network = NetworkFlags(bits);
            }
        }
        facts
    }
}

fn decode<'de, T: Deserialize<'de>>(reader: &'de Reader<Vec<u8>>, ip: IpAddr) -> Option<T> {
    reader.lookup(ip).ok()?.decode::<T>().ok().flatten()
}

/// Great-circle distance in kilometres (haversine, mean Earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
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
    fn same_place_is_zero_km() {
        assert!(distance_km((10.0, 20.0), (10.0, 20.0)).abs() < 1e-9);
    }
}

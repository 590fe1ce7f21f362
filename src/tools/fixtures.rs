//! Small GeoIP2/GeoLite2 databases in MaxMind's standard schemas, written
//! with the `mmdb-writer` crate: the demo's geography and the tests' fixtures.
//! The networks are documentation and shared-address ranges; what each one
//! stands for is listed here and in `tests/scenarios/README.md`. They are made
//! up and must never stand in for a real database.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::enrich::GeoConfig;
use mmdb_writer::ipnet::IpNet;
use mmdb_writer::Writer;
use serde::Serialize;

#[derive(Serialize)]
struct Names {
    names: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
struct Country {
    iso_code: &'static str,
    names: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
}

#[derive(Serialize)]
struct City {
    city: Names,
    country: Country,
    location: Location,
}

#[derive(Serialize)]
struct Asn {
    autonomous_system_number: u32,
    autonomous_system_organization: &'static str,
}

#[derive(Serialize, Default)]
struct Anonymous {
    #[serde(skip_serializing_if = "Option::is_none")]
    is_anonymous: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_anonymous_vpn: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_hosting_provider: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_tor_exit_node: Option<bool>,
}

/// (network, city, ISO country, latitude, longitude, ASN, AS organisation)
pub const PLACES: [(&str, &str, &str, f64, f64, u32, &str); 9] = [
    ("175.16.199.0/24", "Beijing", "CN", 39.9042, 116.4074, 4134, "Chinanet"),
    // The generator's honest home lines.
    ("175.17.0.0/16", "Beijing", "CN", 39.9042, 116.4074, 4134, "Chinanet"),
    (
        "100.64.0.0/16",
        "Guangzhou",
        "CN",
        23.1291,
        113.2644,
        9808,
        "China Mobile (carrier NAT)",
    ),
    (
        "100.65.0.0/16",
        "Shanghai",
        "CN",
        31.2304,
        121.4737,
        4812,
        "China Telecom Shanghai",
    ),
    ("198.51.100.0/24", "Tokyo", "JP", 35.6762, 139.6503, 2516, "KDDI"),
    ("203.0.113.0/24", "New York", "US", 40.7128, -74.0060, 7922, "Comcast"),
    (
        "192.0.2.0/24",
        "Ashburn",
        "US",
        39.0438,
        -77.4874,
        16509,
        "Amazon (hosting)",
    ),
    (
        "198.18.0.0/24",
        "Amsterdam",
        "NL",
        52.3676,
        4.9041,
        60068,
        "VPN provider",
    ),
    (
        "2001:db8::/32",
        "Frankfurt",
        "DE",
        50.1109,
        8.6821,
        3320,
        "Deutsche Telekom",
    ),
];

fn net(s: &str) -> io::Result<IpNet> {
    s.parse().map_err(invalid)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Writes `city.mmdb`, `asn.mmdb` and `anonymous.mmdb` into `dir`.
pub fn write_geo_fixtures(dir: &Path) -> io::Result<GeoConfig> {
    std::fs::create_dir_all(dir)?;
    let mut city = Writer::new("GeoLite2-City");
    let mut asn = Writer::new("GeoLite2-ASN");
    for (network, name, iso, lat, lon, number, org) in PLACES {
        city.insert(
            net(network)?,
            &City {
                city: Names {
                    names: BTreeMap::from([("en", name)]),
                },
                country: Country {
                    iso_code: iso,
                    names: BTreeMap::from([("en", iso)]),
                },
                location: Location {
                    latitude: lat,
                    longitude: lon,
                },
            },
        )
        .map_err(invalid)?;
        asn.insert(
            net(network)?,
            &Asn {
                autonomous_system_number: number,
                autonomous_system_organization: org,
            },
        )
        .map_err(invalid)?;
    }
    let mut anonymous = Writer::new("GeoIP2-Anonymous-IP");
    anonymous
        .insert(
            net("192.0.2.0/24")?,
            &Anonymous {
                is_hosting_provider: Some(true),
                ..Anonymous::default()
            },
        )
        .map_err(invalid)?;
    anonymous
        .insert(
            net("198.18.0.0/24")?,
            &Anonymous {
                is_anonymous: Some(true),
                is_anonymous_vpn: Some(true),
                ..Anonymous::default()
            },
        )
        .map_err(invalid)?;
    let write = |w: Writer, name: &str| -> io::Result<_> {
        let path = dir.join(name);
        std::fs::write(&path, w.to_bytes().map_err(invalid)?)?;
        Ok(Some(path))
    };
    Ok(GeoConfig {
        city: write(city, "city.mmdb")?,
        asn: write(asn, "asn.mmdb")?,
        anonymous: write(anonymous, "anonymous.mmdb")?,
    })
}

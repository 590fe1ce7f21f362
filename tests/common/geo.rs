//! Small GeoIP2/GeoLite2 fixture databases in MaxMind's standard schemas,
//! written with the `mmdb-writer` crate. The networks are documentation and
//! shared-address ranges; what each one stands for is listed here and in
//! `tests/scenarios/README.md`.

use std::collections::BTreeMap;
use std::path::Path;

use kamiguard::enrich::GeoConfig;
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
pub const PLACES: [(&str, &str, &str, f64, f64, u32, &str); 8] = [
    ("175.16.199.0/24", "Beijing", "CN", 39.9042, 116.4074, 4134, "Chinanet"),
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

fn net(s: &str) -> IpNet {
    s.parse().expect("fixture network")
}

/// Writes `city.mmdb`, `asn.mmdb` and `anonymous.mmdb` into `dir`.
pub fn write_geo_fixtures(dir: &Path) -> GeoConfig {
    std::fs::create_dir_all(dir).expect("fixture dir");
    let mut city = Writer::new("GeoLite2-City");
    let mut asn = Writer::new("GeoLite2-ASN");
    for (network, name, iso, lat, lon, number, org) in PLACES {
        city.insert(
            net(network),
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
        .expect("city insert");
        asn.insert(
            net(network),
            &Asn {
                autonomous_system_number: number,
                autonomous_system_organization: org,
            },
        )
        .expect("asn insert");
    }
    let mut anonymous = Writer::new("GeoIP2-Anonymous-IP");
    anonymous
        .insert(
            net("192.0.2.0/24"),
            &Anonymous {
                is_hosting_provider: Some(true),
                ..Anonymous::default()
            },
        )
        .expect("anonymous insert");
    anonymous
        .insert(
            net("198.18.0.0/24"),
            &Anonymous {
                is_anonymous: Some(true),
                is_anonymous_vpn: Some(true),
                ..Anonymous::default()
            },
        )
        .expect("anonymous insert");
    let write = |w: Writer, name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, w.to_bytes().expect("serialize mmdb")).expect("write mmdb");
        path
    };
    GeoConfig {
        city: Some(write(city, "city.mmdb")),
        asn: Some(write(asn, "asn.mmdb")),
        anonymous: Some(write(anonymous, "anonymous.mmdb")),
    }
}

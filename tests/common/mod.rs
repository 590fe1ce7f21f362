//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use kamiguard::enrich::{GeoConfig, GeoDatabases};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes the fixture databases into a fresh temporary folder and opens them.
pub fn fixture_geo() -> (tempfile::TempDir, GeoConfig, Arc<GeoDatabases>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kamiguard::demo::geo::write_geo_fixtures(dir.path()).expect("write fixture databases");
    let dbs = GeoDatabases::open(&config).expect("open fixture databases");
    (dir, config, Arc::new(dbs))
}

/// The built `kamiguard` binary.
pub fn kamiguard() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_kamiguard"))
}
pub mod broker;

//! Writes the test fixture geo databases, so the golden scenarios can be run
//! by hand: `cargo run --example geo_fixtures -- target/geo` then
//! `kamiguard test-rules tests/scenarios --city target/geo/city.mmdb --asn target/geo/asn.mmdb --anonymous target/geo/anonymous.mmdb`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/geo".into());
    let config = kamiguard::tools::fixtures::write_geo_fixtures(std::path::Path::new(&dir))?;
    println!("{}", toml::to_string(&config).unwrap_or_default());
    Ok(())
}

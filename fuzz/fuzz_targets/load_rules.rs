//! Any text as a rule file: loading never panics, and every error points
//! inside the text (line and column within bounds).
#![no_main]

use kamiguard::enrich::GeoNeeds;
use kamiguard::rules::compile_sources;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let all = GeoNeeds {
        city: true,
        asn: true,
        anonymous: true,
    };
    if let Err(errors) = compile_sources(&[("fuzz.toml".into(), text.to_owned())], all) {
        let lines = text.split('\n').count().max(1);
        for e in &errors.0 {
            assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}", e.line);
            assert!(e.column >= 1, "column {}", e.column);
        }
    }
});

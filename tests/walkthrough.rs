//! The README's "First steps" as a new user pastes them, line by line
//! (tests/walkthrough.sh), with the built `kamiguard` on the PATH.

mod common;

use std::process::Command;

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kamiguard"))
        .parent()
        .expect("bin folder")
        .to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg(common::root().join("tests/walkthrough.sh"))
        .env("PATH", path)
        .env_remove("KAMIGUARD_CODE_KEY")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("rules ok"), "check-rules: {stdout}");
    assert!(stdout.contains("\"decision_id\""), "replay wrote decisions: {stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "test-rules: {stdout}");
    // Every step ran: the trace shows each command of the README block.
    for step in [
        "kamiguard generate",
        "kamiguard check-rules",
        "kamiguard replay",
        "kamiguard test-rules",
    ] {
        assert!(stderr.contains(&format!("+ {step}")), "{step} did not run: {stderr}");
    }
}

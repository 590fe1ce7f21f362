//! deploy/ checked as far as this machine allows: no Docker engine and no
//! Kubernetes cluster here, so the manifests are parsed and cross-checked
//! (tests/deploy/check_deploy.py), the systemd unit goes through
//! `systemd-analyze verify`, and where `kubectl` exists the kustomization is
//! built offline.

mod common;

use std::process::Command;

#[test]
fn deploy_manifests_parse_and_agree_with_each_other() {
    let python = common::root().join(".venv-interop/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
    let out = Command::new(python)
        .arg(common::root().join("tests/deploy/check_deploy.py"))
        .arg(common::root())
        .output()
        .expect("check_deploy.py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_unit_verifies() {
    // The unit names /usr/local/bin/kamiguard; verify it against the built binary.
    let unit = std::fs::read_to_string(common::root().join("deploy/systemd/kamiguard.service")).expect("unit");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kamiguard.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/kamiguard", env!("CARGO_BIN_EXE_kamiguard")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kustomization_builds_where_kubectl_exists() {
    let Ok(out) = Command::new("kubectl")
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(common::root().join("deploy/k8s"))
        .output()
    else {
        eprintln!("kubectl is not installed: the kustomization is only parsed (deploy_manifests_parse_and_agree_with_each_other)");
        return;
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodMonitor",
        "NetworkPolicy",
    ] {
        assert!(text.contains(&format!("kind: {kind}")), "{kind} missing from the build");
    }
    assert!(
        text.contains("10-guessing.toml:"),
        "the rules ConfigMap carries the rule files"
    );
    // The admin API's port (9465) is in no Service, container port or
    // NetworkPolicy of the build (the ConfigMap's comments may name it).
    for doc in text.split("\n---\n") {
        let kind = doc.lines().find_map(|l| l.strip_prefix("kind: ")).unwrap_or_default();
        if ["Service", "Deployment", "NetworkPolicy"].contains(&kind) {
            assert!(!doc.contains("9465"), "the built {kind} names the admin port:\n{doc}");
        }
    }
}

#[test]
fn the_container_config_is_one_kamiguard_accepts() {
    let path = common::root().join("deploy/compose/kamiguard.toml");
    let config = kamiguard::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:9464");
    assert_eq!(
        config.rules.as_deref(),
        Some(std::path::Path::new("/etc/kamiguard/rules"))
    );
    assert_eq!(config.kafka.brokers, "kafka:9092");
    config.kafka.validate().expect("no forced property overridden");
}

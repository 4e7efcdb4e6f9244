//! The example files in `deploy/`: each configuration loads as its role
//! reads it, each systemd unit passes `systemd-analyze verify`, and the
//! Grafana dashboard asks only for metrics the roles export.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[test]
fn the_example_configurations_load_as_their_roles_read_them() {
    medledger_server::ConfigFile::load(&deploy().join("server.toml")).unwrap();
    medledger_collector::ConfigFile::load(&deploy().join("collector.toml")).unwrap();
}

#[test]
fn the_systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing (apt-get install systemd)"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(deploy().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        // The unit runs the binary under test in place of the installed one.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/medledger", env!("CARGO_BIN_EXE_medledger"));
        let copy = tmp.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        units.push(copy);
    }
    let names: Vec<_> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for role in ["chain", "server", "collector"] {
        assert!(
            names.contains(&format!("medledger-{role}.service")),
            "{names:?}"
        );
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The names of the metrics the roles export: the `medledger_...` string
/// literals of the crates' sources (a metric is named once, where it is
/// counted).
fn exported_metrics() -> std::collections::BTreeSet<String> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = std::collections::BTreeSet::new();
    let mut dirs = vec![crates];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") && !path.ends_with("deploy.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("\"medledger_").skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if piece[name.len()..].starts_with('"') {
                        names.insert(format!("medledger_{name}"));
                    }
                }
            }
        }
    }
    names
}

#[test]
fn the_grafana_dashboard_asks_only_for_metrics_the_roles_export() {
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(deploy().join("grafana/medledger.json")).unwrap())
            .unwrap();
    let exported = exported_metrics();
    let mut asked = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for piece in expr.split("medledger_").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                // A histogram is queried by its series.
                let name = name.strip_suffix("_bucket").unwrap_or(&name);
                asked.insert(format!("medledger_{name}"));
            }
        }
    }
    let unknown: Vec<_> = asked.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "not exported: {unknown:?} (exported: {exported:?})"
    );
    // Every collector and server metric has a panel.
    let shown: Vec<_> = exported
        .iter()
        .filter(|m| m.ends_with("_total") || m.ends_with("_seconds") || m.ends_with("_depth"))
        .filter(|m| !asked.contains(*m))
        .collect();
    assert!(shown.is_empty(), "without a panel: {shown:?}");
}

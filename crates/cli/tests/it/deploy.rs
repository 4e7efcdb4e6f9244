//! The example files in `deploy/`: each configuration loads as its role
//! reads it, and each systemd unit passes `systemd-analyze verify`.

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

//! `medledger demo`, the README's main command, as a newcomer runs it.

#[test]
fn the_demo_meets_every_expectation_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["demo", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("expectations held"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["hospital"]["patients"], 10);
    assert_eq!(report["hospital"]["devices"], 30);
    assert_eq!(report["accepted"], 300);
    let attacks = report["attacks"].as_array().unwrap();
    assert!(attacks.len() >= 17, "{attacks:?}");
    assert!(attacks.iter().all(|a| a["ok"] == true));
    // Every transaction input and event of the run scanned for text: only
    // codes and the hospital's own names.
    let scan = attacks
        .iter()
        .find(|a| {
            a["what"]
                .as_str()
                .is_some_and(|n| n.starts_with("free text on chain"))
        })
        .unwrap_or_else(|| panic!("no free-text scan in {attacks:?}"));
    assert!(
        scan["observed"].as_str().unwrap().starts_with("none among"),
        "{scan}"
    );
    let ledgers = report["ledgers"].as_array().unwrap();
    assert_eq!(ledgers.len(), 10);
    assert!(
        ledgers
            .iter()
            .all(|l| l["ok"] == true && l["anchors"].as_u64() > Some(0))
    );
    let forgotten = report["forgotten"].as_array().unwrap();
    assert_eq!(forgotten.len(), 4);
    assert!(forgotten.iter().all(|c| c["ok"] == true), "{forgotten:?}");
    let restored = report["restored"].as_array().unwrap();
    assert_eq!(restored.len(), 3);
    assert!(restored.iter().all(|c| c["ok"] == true), "{restored:?}");
}

/// The demo with every patient card's key on a SoftHSM2 token: each batch
/// the collectors forward is signed there, and the server, which checks
/// every card signature, takes them all.
#[test]
fn the_demo_runs_with_its_patient_cards_on_a_pkcs11_token() {
    let Some(hsm) = medledger_pki::softhsm::softhsm() else {
        return;
    };
    let token = hsm.token("demo-cards");
    let uri = format!(
        "pkcs11:token={}?module-path={}&pin-value={}",
        token.label,
        hsm.module.display(),
        token.pin
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["demo", "--readings", "2", "--cards-on-token", &uri])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "the patients' cards keep their keys on the PKCS#11 token pkcs11:token={}",
            token.label
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("pin-value"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["accepted"], 60, "{report}");
    assert!(
        report["attacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["ok"] == true)
    );
    assert!(
        report["ledgers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ok"] == true)
    );
}

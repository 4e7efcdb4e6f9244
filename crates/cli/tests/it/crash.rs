//! `medledger bench crash`: SIGKILLs under load lose nothing.

#[test]
fn sigkills_of_chain_server_and_collector_lose_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("crash.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args([
            "bench",
            "crash",
            "--kills",
            "9",
            "--devices",
            "3",
            "--seed",
            "11",
        ])
        .args(["--max-gap-ms", "400", "--data"])
        .arg(tmp.path().join("d"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Every role was killed, and the run did something worth checking.
    for role in ["chain", "server", "collector"] {
        assert!(o["kills"][role].as_u64().unwrap() > 0, "{o}");
    }
    assert!(o["readings_acknowledged"].as_u64().unwrap() > 0, "{o}");
    assert!(o["transactions_confirmed"].as_u64().unwrap() > 0, "{o}");
    assert!(
        o["readings_stored"].as_u64() >= o["readings_acknowledged"].as_u64(),
        "{o}"
    );
    for zero in [
        "acknowledged_but_lost",
        "recorded_twice",
        "transactions_lost",
    ] {
        assert_eq!(o[zero], 0, "{zero}: {o}");
    }
    assert_eq!(o["ledgers"], 1, "{o}");
    assert_eq!(o["ledgers_failed"], serde_json::json!([]), "{o}");
}

/// While the chain is down, the collector decides readings of the devices
/// it has seen from the chain's last answers: none of them gets a 503.
#[test]
fn chain_kills_alone_cost_devices_already_seen_no_503() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("crash.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["bench", "crash", "--kills", "4", "--roles", "chain"])
        .args(["--devices", "3", "--seed", "5", "--max-gap-ms", "600"])
        .arg("--data")
        .arg(tmp.path().join("d"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(o["kills"]["chain"], 4, "{o}");
    assert!(o["kills"].get("server").is_none(), "{o}");
    assert!(o["readings_acknowledged"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(o["unavailable_for_devices_seen"], 0, "{stdout}");
    assert_eq!(o["acknowledged_but_lost"], 0, "{o}");
}

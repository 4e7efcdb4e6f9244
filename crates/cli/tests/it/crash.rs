//! `medledger bench crash`: SIGKILLs under load lose nothing.

/// Runs `medledger bench crash ARGS` (3 devices) to success; its JSON
/// results.
fn bench_crash(args: &[&str]) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("crash.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["bench", "crash", "--devices", "3"])
        .args(args)
        .arg("--data")
        .arg(tmp.path().join("d"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

#[test]
fn sigkills_of_chain_server_and_collector_lose_nothing_acknowledged() {
    let o = bench_crash(&["--kills", "9", "--seed", "11", "--max-gap-ms", "400"]);
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
    let o = bench_crash(&[
        "--kills",
        "4",
        "--roles",
        "chain",
        "--seed",
        "5",
        "--max-gap-ms",
        "600",
    ]);
    assert_eq!(o["kills"]["chain"], 4, "{o}");
    assert!(o["kills"].get("server").is_none(), "{o}");
    assert!(o["readings_acknowledged"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(o["unavailable_for_devices_seen"], 0, "{o}");
    assert_eq!(o["acknowledged_but_lost"], 0, "{o}");
}

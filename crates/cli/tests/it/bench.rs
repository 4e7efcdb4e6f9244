//! `medledger bench ingest --mode up|split`: the roles in processes of
//! their own, CPU read per process.

fn ingest(mode: &str) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("ingest.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["bench", "ingest", "--mode", mode])
        .args(["--sustained-devices", "3", "--batch", "5", "--rounds", "4"])
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
fn split_runs_chain_server_and_collector_apart_and_stores_every_reading() {
    let o = ingest("split");
    assert_eq!(
        (o["readings"].as_u64(), o["stored"].as_u64()),
        (Some(60), Some(60)),
        "{o}"
    );
    let processes: Vec<&str> = o["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["process"].as_str().unwrap())
        .collect();
    assert_eq!(processes, ["chain", "server", "collector"], "{o}");
    // The server verifies every reading again: it did real work.
    assert!(o["processes"][1]["cpu_s"].as_f64().unwrap() > 0.0, "{o}");
    assert!(
        o["cpu_per_reading_in_verifications"].as_f64().unwrap() > 0.0,
        "{o}"
    );
}

#[test]
fn up_runs_in_one_process_of_its_own_and_stores_every_reading() {
    let o = ingest("up");
    assert_eq!(
        (o["readings"].as_u64(), o["stored"].as_u64()),
        (Some(60), Some(60)),
        "{o}"
    );
    assert_eq!(o["processes"].as_array().unwrap().len(), 1, "{o}");
    assert_eq!(o["mode"], "Up", "{o}");
}

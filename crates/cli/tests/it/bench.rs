//! `medledger bench ingest --mode up|split|network`: the roles in
//! processes of their own, CPU read per process; `medledger bench flood`.

fn ingest(mode: &str) -> serde_json::Value {
    ingest_with(mode, &["--sustained-devices", "3", "--rounds", "4"])
}

fn ingest_with(mode: &str, more: &[&str]) -> serde_json::Value {
    let mut args = vec!["ingest", "--mode", mode, "--batch", "5"];
    args.extend_from_slice(more);
    bench(&args)
}

/// Runs `medledger bench ARGS --json FILE`, which must succeed, and
/// returns what it wrote.
fn bench(args: &[&str]) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .arg("bench")
        .args(args)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_runs_one_server_then_three_and_moves_a_dead_servers_patient() {
    let Some(database) = medledger_storage::test_utils::postgres_url() else {
        return;
    };
    let _alone = crate::network::ONE_AT_A_TIME.lock().await;
    // 2 devices a ward, 3 wards: 6 devices x 20 requests of 5 readings. The
    // bench fails unless every acknowledged reading was stored and no
    // ledger changed writer but the dead server's patient's, once.
    let o = ingest_with(
        "network",
        &[
            "--sustained-devices",
            "6",
            "--rounds",
            "20",
            "--database",
            &database,
            "--kill-server",
        ],
    );
    let runs = o.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{o}");
    for (run, servers) in runs.iter().zip([1, 3]) {
        assert_eq!(run["servers"], servers, "{o}");
        assert_eq!(run["readings"], 600, "{o}");
        assert!(
            run["servers_cpu_per_reading_us"].as_f64().unwrap() > 0.0,
            "{o}"
        );
    }
    // Server 2 held its ward's patient when it was killed; another server
    // wrote that patient's next batch.
    assert!(runs[0]["takeover_ms"].is_null(), "{o}");
    assert!(runs[1]["takeover_ms"].as_i64().is_some(), "{o}");
}

#[test]
fn flood_refuses_the_attacks_and_fails_no_legitimate_reading() {
    let o = bench(&[
        "flood",
        "--idle",
        "300",
        "--devices",
        "3",
        "--seconds",
        "2",
        "--every-ms",
        "100",
    ]);
    assert_eq!(o["failed_before"], 0, "{o}");
    assert_eq!(o["during"]["failed"], 0, "{o}");
    let requests = |phase: &str| o[phase]["requests"].as_u64().unwrap();
    assert_eq!(requests("before") + requests("during"), 120, "{o}");
    assert_eq!(o["handshakes_accepted"], 0, "{o}");
    assert!(o["handshakes_refused"].as_u64().unwrap() > 0, "{o}");
    assert!(o["connections_peak"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(o["up_after"], true, "{o}");
}

//! `medledger verify --bundle`: an exported ledger checked by the binary.

use crate::ca::{fails, ok, s};
use medledger_patient_ledger::{Field, Ledger, NewEntry, NoteSigner};
use medledger_storage::Db;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_verifies_an_exported_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("l.db")).await.unwrap();
    db.migrate().await.unwrap();
    let ledger = Ledger::new(
        db,
        NoteSigner::from_pkcs8("hospital-a", &NoteSigner::generate_pkcs8()).unwrap(),
    );
    let patient = [7u8; 32];
    let entries = (0..3)
        .map(|i| NewEntry {
            kind: "AccessEvent",
            ts_ms: 1000 + i,
            body: BTreeMap::from([("request".to_owned(), Field::Uint(i))]),
        })
        .collect();
    ledger.append(&patient, entries).await.unwrap();
    let path = dir.path().join("bundle.json");
    std::fs::write(
        &path,
        serde_json::to_string(&ledger.export(&patient).await.unwrap()).unwrap(),
    )
    .unwrap();
    let key = ledger.verifier_key();

    let out = ok(&["verify", "--bundle", s(&path), "--key", &key]);
    assert!(
        out.contains(": verified") && out.contains("3 (every signature"),
        "{out}"
    );
    let out = ok(&["verify", "--bundle", s(&path), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["size"].as_u64(), v["trusted_key"].as_bool()),
        (Some(3), Some(false))
    );

    // One changed character: refused, naming the entry and the check.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut bundle: serde_json::Value = serde_json::from_str(&text).unwrap();
    let proof = bundle["entries"][1]["proof"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if proof.starts_with('A') {
        proof.replacen('A', "B", 1)
    } else {
        format!("A{}", &proof[1..])
    };
    bundle["entries"][1]["proof"][0] = serde_json::json!(flipped);
    std::fs::write(&path, bundle.to_string()).unwrap();
    let err = fails(&["verify", "--bundle", s(&path)]);
    assert!(
        err.contains("does not verify: entry 1: inclusion proof"),
        "{err}"
    );
    let err = fails(&["verify", "--bundle", s(&dir.path().join("nope.json"))]);
    assert!(err.contains("reading"), "{err}");
}

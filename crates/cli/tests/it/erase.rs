//! The right to be forgotten: an erased patient's data no longer opens,
//! their ledger is a tombstone, and nothing new is taken for them.

use crate::records::read;
use crate::site::{body, get_ok, post_one};
use medledger_contracts::Scope;
use medledger_pki::{Credentials, Role};
use medledger_protocol::reading_hash;

fn files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_patient_is_forgotten_and_takes_no_new_readings() {
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let first = device.heart_rate(72.0);
    let hash = reading_hash(&first);
    assert_eq!(post_one(&mut conn, first, true).await.status, 202);
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let granted = nurse
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "treatment")
        .await
        .unwrap();
    assert_eq!(read(&site, &nurse, granted.id).await.status, 200);
    let blobs = site.dir.path().join("server").join("blobs");
    assert_eq!(files(&blobs), 1);
    let size = site
        .server
        .ledger()
        .export(&site.patient_ref.0)
        .await
        .unwrap()
        .entries
        .len();

    // Only the patient (or an admin) may ask: not another patient, not staff.
    let other = site
        .admit("p2", "cardiology", "room-9", "bed-A", &site.cards)
        .await
        .unwrap();
    let path = format!("/v1/patients/{}", hex::encode(site.patient_ref));
    let server = site.server.addr().to_string();
    for who in [Credentials::from_issued(&other.card), nurse.credentials()] {
        let mut conn = site.open(&who, Role::Server, &server).await.unwrap();
        let reply = conn.request("DELETE", &path, &[], vec![]).await.unwrap();
        assert_eq!(
            reply.status,
            403,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }

    let mut patient = site.connect_patient().await.unwrap();
    let reply = patient.request("DELETE", &path, &[], vec![]).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let done = body(&reply);
    assert_eq!(
        (done["readings"].as_u64(), done["blobs"].as_u64()),
        (Some(1), Some(1))
    );

    // Nothing of theirs opens or remains; the tombstone keeps the history.
    assert!(!matches!(site.server.reading(&hash).await, Ok(Some(_))));
    assert_eq!(files(&blobs), 0);
    let bundle = site
        .server
        .ledger()
        .export(&site.patient_ref.0)
        .await
        .unwrap();
    let report = medledger_patient_ledger::bundle::verify(
        &serde_json::to_string(&bundle).unwrap(),
        Some(&site.server.ledger().verifier_key()),
    )
    .unwrap();
    assert!(report.erased);
    assert_eq!(report.size as usize, size);
    assert!(report.entries.is_empty());
    assert!(
        get_ok(&mut patient, "/v1/alerts?after=0").await["alerts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let reply = read(&site, &nurse, granted.id).await;
    assert_eq!(reply.status, 404);
    assert!(body(&reply)["detail"].as_str().unwrap().contains("erased"));

    // New readings for them are refused by the server.
    let reply = post_one(&mut conn, device.heart_rate(73.0), true).await;
    assert_ne!(reply.status, 202);
    assert!(
        String::from_utf8_lossy(&reply.body).contains("erased"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // The erasure is on chain, for restores from older backups.
    let erasures = site.admin.erasures().await.unwrap();
    assert_eq!(erasures.len(), 1);
    assert_eq!(erasures[0].patient, site.patient_ref);
    assert_eq!(erasures[0].size as usize, size);
    // Erasing again is harmless.
    let reply = patient.request("DELETE", &path, &[], vec![]).await.unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_with_no_readings_yet_can_be_forgotten() {
    let site = crate::site::start().await;
    let mut patient = site.connect_patient().await.unwrap();
    let path = format!("/v1/patients/{}", hex::encode(site.patient_ref));
    let reply = patient.request("DELETE", &path, &[], vec![]).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let erasures = site.admin.erasures().await.unwrap();
    assert_eq!(erasures.len(), 1);
    assert_eq!(erasures[0].patient, site.patient_ref);
}

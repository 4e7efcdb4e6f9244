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
        .request_access(site.patient_ref, Scope::ALL, "TREAT")
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

/// The objects under the store's prefix, in every shard.
async fn objects(store: &medledger_storage::ObjectStoreBlobs) -> Vec<String> {
    use medledger_storage::object_store::ObjectStore;
    let mut keys = Vec::new();
    let shards = store
        .store()
        .list_with_delimiter(Some(store.prefix()))
        .await
        .unwrap();
    for shard in shards.common_prefixes {
        let listed = store
            .store()
            .list_with_delimiter(Some(&shard))
            .await
            .unwrap();
        keys.extend(listed.objects.into_iter().map(|o| o.location.to_string()));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_a_changed_or_lost_blob_is_not_served_and_erasure_empties_the_bucket() {
    use medledger_storage::object_store::{ObjectStoreExt, path::Path};
    let Some(blobs) = medledger_storage::test_utils::s3() else {
        return;
    };
    let site = crate::site::Site::start(medledger_sim::Options {
        server_blobs: Some(blobs.clone()),
        ..medledger_sim::Options::default()
    })
    .await
    .unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let mut hashes = Vec::new();
    for bpm in [70.0, 71.0, 72.0] {
        let cose = device.heart_rate(bpm);
        hashes.push(reading_hash(&cose));
        assert_eq!(post_one(&mut conn, cose, true).await.status, 202);
    }
    for hash in &hashes {
        assert!(site.server.reading(hash).await.unwrap().is_some());
    }
    // One sealed object per patient per batch, in the bucket.
    let keys = objects(&blobs).await;
    assert_eq!(keys.len(), 3, "{keys:?}");

    // Changed in the bucket: detected, not served.
    let first = Path::from(keys[0].as_str());
    let sealed = blobs
        .store()
        .get(&first)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut changed = sealed.to_vec();
    changed[10] ^= 1;
    blobs.store().put(&first, changed.into()).await.unwrap();
    // Gone from the bucket: likewise.
    let second = Path::from(keys[1].as_str());
    blobs.store().delete(&second).await.unwrap();
    let mut refused = Vec::new();
    for hash in &hashes {
        match site.server.reading(hash).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("reading {} not indexed", hex::encode(hash)),
            Err(e) => refused.push(e.to_string()),
        }
    }
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused.iter().any(|e| e.contains("tampered or corrupt")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|e| e.contains("not found")),
        "{refused:?}"
    );
    blobs.store().put(&first, sealed.into()).await.unwrap();

    // Erasure deletes the patient's objects from the bucket.
    let erased = site.server.erase(&site.patient_ref.0).await.unwrap();
    assert_eq!(erased.blobs, 3);
    assert_eq!(objects(&blobs).await, Vec::<String>::new());
}

//! The server's chain indexer: every event of our contracts, once, in
//! order, resumed after a restart.

use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use medledger_contracts::{StaffRole, send, short_text};
use medledger_server::indexer::Indexer;
use medledger_storage::Db;
use std::time::Duration;

/// Every log our contracts emitted so far, straight from the chain.
async fn chain_logs(site: &crate::site::Site) -> usize {
    let filter = Filter::new()
        .address(site.admin.addresses().all())
        .from_block(0);
    site.admin.provider().get_logs(&filter).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_indexed_once_and_a_restart_resumes() {
    let site = crate::site::start().await;
    let db = Db::open_sqlite(&site.dir.path().join("index.db"))
        .await
        .unwrap();
    db.migrate().await.unwrap();

    let first = Indexer::new(db.clone(), site.admin.clone());
    let (stored, caught_up) = first.step().await.unwrap();
    assert!(caught_up);
    let head = site.admin.provider().get_block_number().await.unwrap();
    assert_eq!(first.cursor().await.unwrap(), Some(head));
    assert_eq!(stored as usize, chain_logs(&site).await);

    // More happens while the indexer is down.
    let nurse = alloy::primitives::Address::repeat_byte(0x42);
    send(site.admin.registry().registerStaff(
        nurse,
        StaffRole::Nurse.code(),
        short_text("cardiology").unwrap(),
    ))
    .await
    .unwrap();
    let _device = site.device(9).await.unwrap();
    drop(first);

    // A new indexer on the same database takes up where it stopped.
    let again = Indexer::new(db.clone(), site.admin.clone());
    let (stored, caught_up) = again.step().await.unwrap();
    assert!(caught_up);
    assert_eq!(
        stored, 3,
        "StaffRegistered, DeviceRegistered, DeviceAssigned"
    );
    // A step with nothing new stores nothing.
    assert_eq!(again.step().await.unwrap(), (0, true));

    let all = medledger_server::indexer::events(&db, None).await.unwrap();
    assert_eq!(all.len(), chain_logs(&site).await, "each event once");
    assert!(
        all.windows(2)
            .all(|w| (w[0].block, w[0].log_index) < (w[1].block, w[1].log_index)),
        "in chain order"
    );
    let staff = medledger_server::indexer::events(&db, Some("StaffRegistered"))
        .await
        .unwrap();
    let last = staff.last().unwrap();
    assert_eq!(last.args["account"], nurse.to_checksum(None));
    assert_eq!(last.args["department"], "\"cardiology\"");

    // The server's own indexer follows the chain too, anchors included.
    let mut device = site.device(10).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    assert_eq!(
        crate::site::post_one(&mut conn, device.heart_rate(70.0), true)
            .await
            .status,
        202
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let anchored = site.server.events(Some("Anchored")).await.unwrap();
        if !anchored.is_empty() {
            assert_eq!(anchored[0].args["kind"], "2");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Anchored event indexed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

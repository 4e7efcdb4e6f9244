//! A batch the server refuses outright (a 4xx) is held as a dead letter:
//! the outbox moves on, the patient is alerted, and a retry stores the
//! held readings although later ones were stored first.

use crate::alerts::wait_for_alerts;
use crate::site::{body, post_one};
use medledger_collector::dead_letters;
use medledger_contracts::send;
use medledger_sim::{Hospital, Options, signer};
use medledger_storage::Db;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_held_the_outbox_moves_on_and_a_retry_stores_it() {
    let site = Hospital::start(Options {
        forward_over_tls: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let collector = signer(&site.collector_issued).unwrap().address();
    let registry = site.admin.registry();
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let stored = |reply: &medledger_pki::https::Reply| {
        assert_eq!(reply.status, 202, "{}", body(reply));
        assert_eq!(body(reply)["status"], "committed", "{}", body(reply));
    };
    stored(&post_one(&mut conn, device.heart_rate(70.0), true).await);

    // The Registry no longer lists the collector: the server refuses its
    // batches (403), and the reading waiting on one is told it is held.
    send(registry.deactivateNode(collector)).await.unwrap();
    let held = post_one(&mut conn, device.heart_rate(71.0), true).await;
    assert_eq!(held.status, 503, "{}", body(&held));
    assert!(
        body(&held)["detail"]
            .as_str()
            .unwrap()
            .contains("held at the collector"),
        "{}",
        body(&held)
    );
    let db = Db::open_sqlite(&site.dir.path().join("collector.db"))
        .await
        .unwrap();
    let letters = dead_letters::list(&db).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].readings, letters[0].status), (1, 403));
    assert!(
        letters[0].detail.contains("not an active collector"),
        "{letters:?}"
    );
    assert!(!letters[0].told);

    // Listed again: the next reading goes through, and its batch tells the
    // server, which alerts the patient.
    send(registry.registerNode(collector, 1, alloy::primitives::B256::ZERO))
        .await
        .unwrap();
    stored(&post_one(&mut conn, device.heart_rate(72.0), true).await);
    let alerts = wait_for_alerts(&site, 1).await;
    let alert = alerts
        .iter()
        .find(|a| a["kind"] == "readings-held")
        .unwrap_or_else(|| panic!("{alerts:?}"));
    assert_eq!(alert["body"]["readings"], 1, "{alert}");
    assert!(dead_letters::list(&db).await.unwrap()[0].told);

    // Retried: the held reading (sequence 2, after 3 was stored) fills its
    // gap once; the letter is gone.
    assert_eq!(dead_letters::retry(&db, None).await.unwrap(), 1);
    assert!(dead_letters::list(&db).await.unwrap().is_empty());
    let metrics = site.server.metrics();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stored_at_server = || {
        metrics.value(
            "medledger_server_readings_total",
            &[("outcome", "stored"), ("cause", "")],
        )
    };
    loop {
        if stored_at_server() == 3.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", metrics.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same reading again is a duplicate, not a second fill.
    assert_eq!(dead_letters::retry(&db, Some(1)).await.unwrap(), 0);
}

//! Several servers on one PostgreSQL database: each patient ledger has one
//! writer at a time; a reading reaching a server that does not hold its
//! patient's lease goes on to the holder; a server that lost its lease
//! writes nothing; a dead server's patients are taken over once its lease
//! lapses, and the ledger they wrote together verifies.

use crate::site::{Site, batch_by_hand, commit_by_hand, post_one};
use medledger_pki::{Credentials, Role};
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, test_utils};
use std::time::Duration;

/// The instance (in `server_instances`) of the server listening at `addr`.
async fn instance(db: &Db, addr: std::net::SocketAddr) -> String {
    sqlx::query("SELECT instance FROM server_instances WHERE addr = $1")
        .bind(addr.to_string())
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("instance")
}

/// Who holds the patient's lease.
async fn holder(db: &Db, patient: &[u8; 32]) -> String {
    sqlx::query("SELECT holder FROM ledger_leases WHERE patient = $1")
        .bind(patient.to_vec())
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("holder")
}

/// The instances that wrote the stored batches, one per batch.
async fn writers(db: &Db) -> Vec<String> {
    sqlx::query("SELECT writer FROM ingest_batches ORDER BY created_ms")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("writer"))
        .collect()
}

/// What the collector said of a reading posted with `?wait=committed`:
/// `committed` once the server stored it.
fn committed(reply: &medledger_pki::https::Reply) -> String {
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    crate::site::body(reply)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_one_database_write_each_ledger_one_at_a_time_and_take_over_the_dead() {
    let Some((_, _, db)) = test_utils::postgres_schema().await else {
        return;
    };
    let site = Site::start(medledger_sim::Options {
        server_db: Some(db.clone()),
        lease_term: Some(Duration::from_millis(1500)),
        ..medledger_sim::Options::default()
    })
    .await
    .unwrap();
    let other = site.server_on_the_same_database("server-2").await.unwrap();
    let (first, second) = (
        instance(&db, site.server.addr()).await,
        instance(&db, other.addr()).await,
    );
    let patient = site.patient_ref.0;
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let stored = |reply: medledger_pki::https::Reply| {
        assert_eq!(committed(&reply), "committed");
    };

    // The first server writes the patient's first reading: its lease.
    stored(post_one(&mut conn, device.heart_rate(70.0), true).await);
    assert_eq!(holder(&db, &patient).await, first);

    // A collector forwarding to the second server: the reading goes on to
    // the holder, which writes it.
    let mut to_second = site
        .open(
            &Credentials::from_issued(&site.collector_issued),
            Role::Server,
            &other.addr().to_string(),
        )
        .await
        .unwrap();
    let reading = device.heart_rate(71.0);
    let batch = batch_by_hand(&site, &device.issued, vec![reading], true);
    let r = commit_by_hand(&mut to_second, batch).await;
    assert_eq!(r["status"], "stored", "{r}");
    assert!(writers(&db).await.iter().all(|w| *w == first));

    // The first server misses its renewals (a pause, a partition): the
    // second takes the lapsed lease with its next reading. (The first
    // renews a third of a term later: until the second got in first, the
    // miss is made again.)
    let mut sent = 2;
    for _ in 0..20 {
        sqlx::query("UPDATE server_instances SET alive_until_ms = 0 WHERE instance = $1")
            .bind(&first)
            .execute(db.pool())
            .await
            .unwrap();
        let reading = device.heart_rate(72.0);
        let batch = batch_by_hand(&site, &device.issued, vec![reading], true);
        let r = commit_by_hand(&mut to_second, batch).await;
        assert_eq!(r["status"], "stored", "{r}");
        sent += 1;
        if holder(&db, &patient).await == second {
            break;
        }
    }
    assert_eq!(holder(&db, &patient).await, second);
    // The first still believes it holds the lease: its append is fenced
    // off, and the reading goes on to the new holder.
    stored(post_one(&mut conn, device.heart_rate(73.0), true).await);
    assert_eq!(holder(&db, &patient).await, second);

    // The second server dies (no renewals, no goodbye): once its lease
    // lapses the first takes the patient back.
    drop(other);
    stored(post_one(&mut conn, device.heart_rate(74.0), true).await);
    assert_eq!(holder(&db, &patient).await, first);

    let by = writers(&db).await;
    assert_eq!(
        by.iter().filter(|w| **w == first).count() + by.iter().filter(|w| **w == second).count(),
        by.len(),
        "{by:?}"
    );
    assert!(by.contains(&first) && by.contains(&second), "{by:?}");
    let readings: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ingest_readings WHERE patient = $1")
        .bind(patient.to_vec())
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("n");
    assert_eq!(readings, sent + 2, "each reading stored once");
    // One ledger, written by both in turn, verifies entry by entry.
    let verified = site.server.ledger().verify(&patient, &[]).await.unwrap();
    let entries = site.server.ledger().entries(&patient).await.unwrap();
    assert_eq!(verified.size, entries.len() as u64);
    site.server.anchor_all().await.unwrap();

    // The first server stops (SIGTERM): its leases end at once, and a
    // third server takes the patient with the next reading, without
    // waiting for a lease term or sending it on.
    let third = site.server_on_the_same_database("server-3").await.unwrap();
    site.server.stop().await;
    let mut to_third = site
        .open(
            &Credentials::from_issued(&site.collector_issued),
            Role::Server,
            &third.addr().to_string(),
        )
        .await
        .unwrap();
    let reading = device.heart_rate(75.0);
    let batch = batch_by_hand(&site, &device.issued, vec![reading], true);
    let r = commit_by_hand(&mut to_third, batch).await;
    assert_eq!(r["status"], "stored", "{r}");
    assert_eq!(
        holder(&db, &patient).await,
        instance(&db, third.addr()).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_whose_server_does_not_answer_forwards_to_the_next() {
    use medledger_collector::{ServerTarget, Upstream};
    let site = crate::site::start().await;
    // Nothing listens at the first server's address any more.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let target = |addr: std::net::SocketAddr| ServerTarget {
        addr: addr.to_string(),
        name: "localhost".into(),
    };
    let ward = site
        .add_collector_forwarding_to(
            "cardiology/2/B",
            Some(Upstream::Servers(vec![
                target(gone),
                target(site.server.addr()),
            ])),
        )
        .await
        .unwrap();
    let patient = site
        .admit("failover", "cardiology", "2", "B", &ward.cards)
        .await
        .unwrap();
    let mut device = site.issue_device(40, medledger_pki::KeyAlg::P256).unwrap();
    device
        .register(&site.admin, crate::site::GROUP, Some(patient.patient_ref))
        .await
        .unwrap();
    let mut conn = site
        .open(
            &device.credentials(),
            Role::Collector,
            &ward.collector.addr().to_string(),
        )
        .await
        .unwrap();
    let reply = post_one(&mut conn, device.heart_rate(66.0), true).await;
    assert_eq!(committed(&reply), "committed");
}

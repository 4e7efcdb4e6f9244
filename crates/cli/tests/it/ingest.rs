//! The ingest path end to end over real sockets: device -> collector ->
//! server -> ledger, blob store and chain; and the attacks it refuses.

use crate::site::{Site, body, get_ok, now_ms, post_one};
use base64::Engine;
use medledger_patient_ledger::{NoteVerifier, leaf_hash, verify_inclusion};
use medledger_protocol::{Reading, reading_hash};
use std::time::Duration;

fn unhex32(v: &serde_json::Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn proof_path(v: &serde_json::Value) -> Vec<[u8; 32]> {
    v.as_array().unwrap().iter().map(unhex32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_is_stored_sealed_proven_and_anchored() {
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let cose = device.heart_rate(72.0);
    let hash = reading_hash(&cose);

    let reply = post_one(&mut conn, cose.clone(), true).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let receipt = body(&reply);
    assert_eq!(receipt["hash"], hex::encode(hash));
    assert_eq!(receipt["status"], "committed");
    assert_eq!(receipt["ledger_index"], 0);

    // Stored sealed, decryptable to the very bytes the device signed.
    assert_eq!(site.server.reading(&hash).await.unwrap().unwrap(), cose);
    let blobs: Vec<_> = walk(&site.dir.path().join("server/blobs"));
    assert_eq!(blobs.len(), 1);
    let sealed = std::fs::read(&blobs[0]).unwrap();
    assert!(
        !sealed.windows(cose.len()).any(|w| w == cose.as_slice()),
        "the blob holds the reading in the clear"
    );

    // Only the patient (or staff with a usable request) sees the proof.
    let mut collector = site.connect_server().await.unwrap();
    let refused = collector
        .request(
            "GET",
            &format!("/v1/readings/{}/proof", hex::encode(hash)),
            &[],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 403);
    // Proven and, soon, anchored.
    let mut server = site.connect_patient().await.unwrap();
    let proof = loop {
        let proof = get_ok(
            &mut server,
            &format!("/v1/readings/{}/proof", hex::encode(hash)),
        )
        .await;
        if !proof["batch"]["anchor"].is_null() && !proof["ledger"]["anchor"].is_null() {
            break proof;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ledger = &proof["ledger"];
    let verifier = NoteVerifier::new(ledger["verifier_key"].as_str().unwrap()).unwrap();
    let checkpoint = verifier
        .verify(ledger["checkpoint"].as_str().unwrap())
        .unwrap();
    let entry = base64::engine::general_purpose::STANDARD
        .decode(ledger["entry"].as_str().unwrap())
        .unwrap();
    verify_inclusion(
        &leaf_hash(&entry),
        0,
        checkpoint.size,
        &proof_path(&ledger["proof"]),
        &checkpoint.root,
    )
    .unwrap();
    let batch = &proof["batch"];
    verify_inclusion(
        &leaf_hash(&hash),
        batch["index"].as_u64().unwrap(),
        batch["count"].as_u64().unwrap(),
        &proof_path(&batch["proof"]),
        &unhex32(&batch["root"]),
    )
    .unwrap();
    // The anchor on chain holds the batch root.
    let record = anchor_record(&site, &batch["anchor"]).await;
    assert_eq!(record.kind, 2);
    assert_eq!(record.root.0, unhex32(&batch["root"]));
    assert_eq!(record.first.0, hash);
    let record = anchor_record(&site, &ledger["anchor"]).await;
    assert_eq!((record.kind, record.first), (3, site.patient_ref));
    assert_eq!(record.root.0, checkpoint.root);

    // `medledger verify --proof` checks the same offline, and catches a
    // proof whose entry was altered.
    let file = site.dir.path().join("proof.json");
    std::fs::write(&file, proof.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["verify", "--json", "--proof"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reading"], hex::encode(hash));
    assert_eq!(report["batch_anchor"]["id"], batch["anchor"]["id"]);
    let mut forged = proof.clone();
    let mut entry_bytes = entry.clone();
    let last = entry_bytes.len() - 1;
    entry_bytes[last] ^= 1;
    forged["ledger"]["entry"] = base64::engine::general_purpose::STANDARD
        .encode(&entry_bytes)
        .into();
    std::fs::write(&file, forged.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["verify", "--proof"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The patient's ledger verifies.
    let verified = site
        .server
        .ledger()
        .verify(&site.patient_ref.0, &[])
        .await
        .unwrap();
    assert_eq!(verified.size, 1);
}

/// The on-chain record of an anchor a proof names.
async fn anchor_record(
    site: &Site,
    anchor: &serde_json::Value,
) -> medledger_contracts::bindings::anchor::Anchor::Record {
    let id = anchor["id"].as_u64().unwrap();
    site.admin
        .anchor()
        .record(alloy::primitives::U256::from(id))
        .call()
        .await
        .unwrap()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Posts one reading and returns (status, problem type name).
async fn refused(conn: &mut medledger_pki::https::Connection, cose: Vec<u8>) -> (u16, String) {
    let reply = post_one(conn, cose, false).await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    let p = body(&reply);
    let kind = p["type"]
        .as_str()
        .unwrap()
        .trim_start_matches("urn:medledger:problem:")
        .to_owned();
    (reply.status, kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attack_on_the_collector_is_refused_with_its_cause() {
    // Over mutual TLS, as between machines: the server verifies again
    // (the last attack is one only the server can refuse).
    let site = crate::site::Site::start(medledger_sim::Options {
        forward_over_tls: true,
        ..medledger_sim::Options::default()
    })
    .await
    .unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();

    let first = device.heart_rate(70.0);
    assert_eq!(post_one(&mut conn, first.clone(), false).await.status, 202);
    // Replay: the same reading again.
    assert_eq!(refused(&mut conn, first).await, (409, "replay".into()));

    // False data: a heart rate no human has.
    assert_eq!(
        refused(&mut conn, device.heart_rate(400.0)).await,
        (422, "rule-violation".into())
    );

    // A flipped byte in the signature.
    let mut forged = device.heart_rate(71.0);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        refused(&mut conn, forged).await,
        (400, "bad-signature".into())
    );

    // A stale reading, correctly signed.
    device.seq += 1;
    let stale = device.key.sign(&Reading {
        dev: medledger_protocol::DeviceId(*device.epc.as_bytes()),
        seq: device.seq,
        ts_ms: now_ms() - 3_600_000,
        obs: vec![medledger_protocol::Observation::scalar(
            medledger_protocol::catalogue::data_type("8867-4").unwrap(),
            70.0,
        )],
        model: None,
    });
    assert_eq!(
        refused(&mut conn, stale).await,
        (400, "stale-timestamp".into())
    );

    // A device with a certificate from our CA that was never registered.
    let mut stranger = site.issue_device(2, medledger_pki::KeyAlg::P256).unwrap();
    let mut conn2 = site.connect(&stranger).await.unwrap();
    assert_eq!(
        refused(&mut conn2, stranger.heart_rate(70.0)).await,
        (403, "unknown-device".into())
    );

    // Too large: refused before the body is read.
    let reply = conn
        .request(
            "POST",
            "/v1/readings",
            &[("content-type", "application/cbor")],
            vec![0; 2 << 20],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 413);

    // Not a reading at all.
    let reply = conn
        .request(
            "POST",
            "/v1/readings",
            &[("content-type", "text/plain")],
            b"hi".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(body(&reply)["type"], "urn:medledger:problem:malformed");

    // Revoked at the server before the collector hears of it: the
    // collector accepts, the server refuses, and a waiting device is told.
    let mut revoked = site.device(3).await.unwrap();
    let mut conn3 = site.connect(&revoked).await.unwrap();
    let crl = site.ca.revoke(&revoked.issued.cert_der).unwrap();
    site.server.update_crls(&crl).unwrap();
    let reply = post_one(&mut conn3, revoked.heart_rate(70.0), true).await;
    assert_eq!(
        reply.status,
        401,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let p = body(&reply);
    assert_eq!(p["type"], "urn:medledger:problem:revoked");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("the server refused the reading"),
        "{p}"
    );

    // And the legitimate device still gets through.
    assert_eq!(
        post_one(&mut conn, device.heart_rate(72.0), true)
            .await
            .status,
        202
    );
    // The patient hears of the replay and the false data (readings of
    // their device the collector refused after checking the signature).
    let alerts = crate::alerts::wait_for_alerts(&site, 2).await;
    let refused: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "reading-rejected")
        .collect();
    assert_eq!(refused.len(), 2, "{alerts:?}");
    let problems: Vec<&str> = refused
        .iter()
        .map(|a| a["body"]["problem"].as_str().unwrap())
        .collect();
    assert!(
        problems.contains(&"replay") && problems.contains(&"rule-violation"),
        "{problems:?}"
    );

    let m = site.collector.metrics();
    crate::site::rejected_once(
        m,
        &[
            "replay",
            "rule-violation",
            "bad-signature",
            "stale-timestamp",
            "unknown-device",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinkhole_collector_cannot_alter_or_inject_readings() {
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let cose = device.heart_rate(72.0);
    assert_eq!(post_one(&mut conn, cose.clone(), true).await.status, 202);

    // The collector's key in an attacker's hands: build batches by hand.
    let issued = device.issued.clone();
    let batch_of = |readings: Vec<Vec<u8>>, sign_card: bool| {
        crate::site::batch_by_hand(&site, &issued, readings, sign_card)
    };
    let mut server = site.connect_server().await.unwrap();
    let mut commit = async |batch: Vec<u8>| crate::site::commit_by_hand(&mut server, batch).await;

    // A collector certificate the Registry does not list is refused.
    let mut request = medledger_pki::LeafRequest::new(medledger_pki::Role::Collector);
    request.location = Some("cardiology/204/C".parse().unwrap());
    let rogue = site.ca.issue(&request).unwrap();
    let mut rogue_conn = site
        .open(
            &medledger_pki::Credentials::from_issued(&rogue),
            medledger_pki::Role::Server,
            &site.server.addr().to_string(),
        )
        .await
        .unwrap();
    let reply = rogue_conn
        .request(
            "POST",
            "/v1/batches",
            &[("content-type", "application/cbor")],
            batch_of(vec![cose.clone()], true),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        403,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // A retry of what was stored is a duplicate, not a second entry.
    let r = commit(batch_of(vec![cose.clone()], true)).await;
    assert_eq!(
        (r["status"].as_str(), r["index"].as_u64()),
        (Some("duplicate"), Some(0))
    );

    // An altered value: the device signature no longer verifies.
    let mut next = device.heart_rate(73.0);
    let at = next.len() - 70;
    next[at] ^= 1;
    let r = commit(batch_of(vec![next], true)).await;
    assert_eq!(r["status"], "rejected");
    assert!(
        ["bad-signature", "malformed"].contains(&r["problem"].as_str().unwrap()),
        "{r}"
    );

    // A genuine reading without the patient's card signature.
    let genuine = device.heart_rate(74.0);
    let r = commit(batch_of(vec![genuine.clone()], false)).await;
    assert_eq!(
        (r["status"].as_str(), r["problem"].as_str()),
        (Some("rejected"), Some("forbidden"))
    );

    // Reordering: an older sequence number after a newer one was stored
    // fills the gap it left, once (a reading held back and sent late, as
    // a retried dead letter is); another reading with that number is a
    // replay, and the first one again a duplicate.
    let older = device.heart_rate(75.0);
    let older_seq = device.seq;
    let newer = device.heart_rate(76.0);
    let r = commit(batch_of(vec![newer], true)).await;
    assert_eq!(r["status"], "stored", "{r}");
    let r = commit(batch_of(vec![older.clone()], true)).await;
    assert_eq!(r["status"], "stored", "{r}");
    let r = commit(batch_of(vec![older], true)).await;
    assert_eq!(r["status"], "duplicate", "{r}");
    let next_seq = device.seq;
    device.seq = older_seq - 1;
    let twin = device.heart_rate(75.5);
    device.seq = next_seq;
    let r = commit(batch_of(vec![twin], true)).await;
    assert_eq!(
        (r["status"].as_str(), r["problem"].as_str()),
        (Some("rejected"), Some("replay"))
    );

    // A genuine, card-signed reading a rule denies: the server's rules,
    // not the collector's, decide; the rule's reason comes back.
    let r = commit(batch_of(vec![device.heart_rate(400.0)], true)).await;
    assert_eq!(
        (
            r["status"].as_str(),
            r["problem"].as_str(),
            r["reason"].as_str()
        ),
        (
            Some("rejected"),
            Some("rule-violation"),
            Some("above-range")
        ),
        "{r}"
    );

    assert_eq!(
        site.server
            .ledger()
            .verify(&site.patient_ref.0, &[])
            .await
            .unwrap()
            .size,
        3,
        "the newer and the older reading"
    );
}

/// A port nothing listens on (yet).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The site's collector as an operator configures a `medledger collector`
/// process: its files in `etc/` of the site's directory, the chain at
/// `rpc_url`, the server at `server_port` on loopback, `extra` lines added.
/// Returns the configuration file.
pub(crate) fn collector_config(
    site: &crate::site::Site,
    rpc_url: &str,
    server_port: u16,
    extra: &str,
) -> std::path::PathBuf {
    let etc = site.dir.path().join("etc");
    std::fs::create_dir_all(etc.join("cards")).unwrap();
    site.collector_issued.write(&etc.join("collector")).unwrap();
    site.card.write(&etc.join("cards/p1")).unwrap();
    let config = etc.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             data = \"data\"\n\
             credentials = \"collector\"\n\
             ca_root = \"{root}\"\n\
             crl = \"{crl}\"\n\
             cards = \"cards\"\n\
             chain_rpc = \"{rpc_url}\"\n\
             registry = \"{registry}\"\n\
             server = \"127.0.0.1:{server_port}\"\n\
             server_name = \"localhost\"\n\
             {extra}",
            root = site.ca.dir().join("root.crt").display(),
            crl = site.ca.dir().join("crl.pem").display(),
            registry = site.admin.addresses().registry,
        ),
    )
    .unwrap();
    config
}

/// Starts `medledger collector --config FILE` and returns it with the
/// address it listens on, read from what it prints; its log goes to
/// FILE with the extension `log`.
pub(crate) fn spawn_collector(config: &std::path::Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["collector", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the collector printed its address")
            .unwrap();
        if let Some(rest) = line.trim().strip_prefix("devices") {
            break rest
                .trim()
                .trim_start_matches("https://")
                .trim_end_matches("/v1/readings")
                .to_owned();
        }
    };
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_reading_survives_kill_9_and_arrives_once() {
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();

    // The chain over HTTP for the collector process.
    let rpc_url = crate::site::serve_rpc(&site).await;
    let server_port = free_port();
    let config = collector_config(&site, &rpc_url, server_port, "");

    // The server is down: the collector acknowledges into its outbox.
    let (mut child, addr) = spawn_collector(&config);
    let cose = device.heart_rate(72.0);
    let hash = reading_hash(&cose);
    let mut conn = site
        .open(&device.credentials(), medledger_pki::Role::Collector, &addr)
        .await
        .unwrap();
    let reply = post_one(&mut conn, cose.clone(), false).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(body(&reply)["status"], "accepted");

    // kill -9, then a restart.
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, addr) = spawn_collector(&config);

    // The server comes up; the reading arrives, once.
    let server = site
        .extra_server("server-2", &format!("127.0.0.1:{server_port}"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.reading(&hash).await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reading never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.reading(&hash).await.unwrap().unwrap(), cose);
    // The restarted collector still refuses the replay, and forwards new ones.
    let mut conn = site
        .open(&device.credentials(), medledger_pki::Role::Collector, &addr)
        .await
        .unwrap();
    assert_eq!(post_one(&mut conn, cose, false).await.status, 409);
    let reply = post_one(&mut conn, device.heart_rate(73.0), true).await;
    assert_eq!(body(&reply)["ledger_index"], 1, "exactly once before it");
    assert_eq!(
        server
            .ledger()
            .verify(&site.patient_ref.0, &[])
            .await
            .unwrap()
            .size,
        2
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The collector's count of connections refused for `cause`.
fn refused_connections(site: &Site, cause: &str) -> f64 {
    site.collector.metrics().value(
        "medledger_collector_connections_refused_total",
        &[("cause", cause)],
    )
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_connections_are_refused_before_any_request() {
    use medledger_pki::https::Connection;
    use medledger_pki::{Ca, Credentials, LeafRequest, Role};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let site = crate::site::start().await;
    let addr = site.collector.addr().to_string();

    // A device certificate from another CA (spoofed identity).
    let other = Ca::init(&site.dir.path().join("other-ca"), "Mallory").unwrap();
    let mut request = LeafRequest::new(Role::Device);
    request.epc = Some(medledger_pki::Epc::new(3, "0614141", "812345", 1).unwrap());
    request.group = Some(crate::site::GROUP.into());
    request.rule = Some("default".into());
    let spoofed = other.issue(&request).unwrap();
    let config = site
        .client_config(&Credentials::from_issued(&spoofed), Role::Collector)
        .unwrap();
    let _ = Connection::open(config, &addr, "localhost").await;
    wait_for("untrusted-certificate counted", || {
        refused_connections(&site, "untrusted-certificate") == 1.0
    })
    .await;

    // Our CA, but a patient's card is not a device.
    let config = site
        .client_config(&Credentials::from_issued(&site.card), Role::Collector)
        .unwrap();
    let _ = Connection::open(config, &addr, "localhost").await;
    wait_for("wrong-role counted", || {
        refused_connections(&site, "wrong-role") == 1.0
    })
    .await;

    // Plain HTTP: told to use TLS.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"POST /v1/readings HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("urn:medledger:problem:tls-required"),
        "{answer}"
    );

    // A handshake that never starts is dropped after the deadline.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

    // Slowloris: headers that never end are cut off.
    let device = site.device(1).await.unwrap();
    let mut config = (*site
        .client_config(&device.credentials(), Role::Collector)
        .unwrap())
    .clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"POST /v1/readings HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the slow connection was not closed");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // Revoked while connected: the connection closes, and a new handshake
    // is refused as revoked.
    let mut device = device;
    let mut conn = site.connect(&device).await.unwrap();
    assert_eq!(
        post_one(&mut conn, device.heart_rate(70.0), false)
            .await
            .status,
        202
    );
    let crl = site.ca.revoke(&device.issued.cert_der).unwrap();
    site.collector_auth.update_crls(crl).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = medledger_sim::post_readings(
        &mut conn,
        medledger_sim::Readings::One(device.heart_rate(71.0)),
        medledger_sim::Wait::Stored,
    )
    .await;
    assert!(after.is_err(), "a revoked device's connection stayed open");
    let config = site
        .client_config(&device.credentials(), Role::Collector)
        .unwrap();
    let _ = Connection::open(config, &addr, "localhost").await;
    wait_for("revoked counted", || {
        refused_connections(&site, "revoked") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unassigned_devices_and_floods_are_refused() {
    let site = crate::site::start().await;
    // Registered, but assigned to no admitted patient.
    let mut loose = site
        .registered_device(7, medledger_pki::KeyAlg::P256)
        .await
        .unwrap();
    let mut conn = site.connect(&loose).await.unwrap();
    let reply = post_one(&mut conn, loose.heart_rate(70.0), false).await;
    assert_eq!(reply.status, 409);
    assert_eq!(body(&reply)["type"], "urn:medledger:problem:not-admitted");

    // A batch (250 readings, more than the burst of 200) is accepted whole
    // from a full bucket; the next request must wait out the debt.
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let reply = post_batch(&mut conn, &mut device, 250, true).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let receipts = body(&reply);
    assert_eq!(receipts["receipts"].as_array().unwrap().len(), 250);
    assert_eq!(receipts["receipts"][249]["ledger_index"], 249);
    assert!(receipts["rejected"].as_array().unwrap().is_empty());
    let reply = post_batch(&mut conn, &mut device, 10, false).await;
    assert_eq!(reply.status, 429);
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert_eq!(body(&reply)["type"], "urn:medledger:problem:rate-limited");
}

/// Posts `n` fresh readings of `device` as one CBOR batch.
async fn post_batch(
    conn: &mut medledger_pki::https::Connection,
    device: &mut medledger_sim::Device,
    n: usize,
    wait: bool,
) -> medledger_pki::https::Reply {
    let batch: Vec<Vec<u8>> = (0..n).map(|_| device.heart_rate(70.0)).collect();
    let wait = if wait {
        medledger_sim::Wait::Committed
    } else {
        medledger_sim::Wait::Stored
    };
    medledger_sim::post_readings(conn, medledger_sim::Readings::batch(&batch), wait)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_path_runs_on_postgresql() {
    use medledger_storage::test_utils::{postgres, postgres_tls};
    // Collector and server each in a fresh schema of the test PostgreSQL,
    // then of the one that takes verified TLS connections only.
    if let (Some(server_db), Some(collector_db)) = (postgres().await, postgres().await) {
        ingest_on(server_db, collector_db).await;
    }
    if let (Some(server_db), Some(collector_db)) = (postgres_tls().await, postgres_tls().await) {
        ingest_on(server_db, collector_db).await;
    }
}

/// Readings through a collector and a server on these databases: stored,
/// anchored, provable.
async fn ingest_on(server_db: medledger_storage::Db, collector_db: medledger_storage::Db) {
    let site = Site::start(medledger_sim::Options {
        server_db: Some(server_db),
        collector_db: Some(collector_db),
        ..medledger_sim::Options::default()
    })
    .await
    .unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let mut hashes = Vec::new();
    for expected in 0..3u64 {
        let cose = device.heart_rate(70.0 + expected as f64);
        hashes.push(reading_hash(&cose));
        let reply = post_one(&mut conn, cose.clone(), true).await;
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(body(&reply)["ledger_index"], expected);
        if expected == 2 {
            assert_eq!(post_one(&mut conn, cose, false).await.status, 409);
        }
    }
    // Anchored, and provable, from PostgreSQL.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while site.server.anchored_count(&hashes).await.unwrap() < hashes.len() {
        assert!(std::time::Instant::now() < deadline, "not anchored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut server = site.connect_patient().await.unwrap();
    let proof = get_ok(
        &mut server,
        &format!("/v1/readings/{}/proof", hex::encode(hashes[2])),
    )
    .await;
    medledger_patient_ledger::reading_proof::verify(&proof.to_string(), None).unwrap();
    assert_eq!(
        site.server
            .ledger()
            .verify(&site.patient_ref.0, &[])
            .await
            .unwrap()
            .size,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_and_recertified_devices_are_refused_until_the_registry_says_so() {
    use medledger_contracts::{epc_bytes, send};
    let site = crate::site::start().await;
    let registry = site.admin.registry();

    // Deactivated in the Registry: refused from the next block on.
    let mut retired = site.device(1).await.unwrap();
    let mut conn = site.connect(&retired).await.unwrap();
    assert_eq!(
        post_one(&mut conn, retired.heart_rate(70.0), false)
            .await
            .status,
        202
    );
    send(registry.deactivateDevice(epc_bytes(&retired.epc)))
        .await
        .unwrap();
    let reply = post_one(&mut conn, retired.heart_rate(71.0), false).await;
    assert_eq!(reply.status, 403);
    assert!(
        body(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("deactivated"),
        "{}",
        body(&reply)
    );

    // A new certificate for the same EPC is refused until the Registry
    // names it; then accepted, with the sequence carried on.
    let mut device = site.device(2).await.unwrap();
    let mut old_conn = site.connect(&device).await.unwrap();
    assert_eq!(
        post_one(&mut old_conn, device.heart_rate(70.0), false)
            .await
            .status,
        202
    );
    let mut renewed = site.issue_device(2, medledger_pki::KeyAlg::P256).unwrap();
    renewed.seq = device.seq;
    let mut conn = site.connect(&renewed).await.unwrap();
    let reply = post_one(&mut conn, renewed.heart_rate(72.0), false).await;
    assert_eq!(reply.status, 403);
    assert!(
        body(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("not the one registered"),
        "{}",
        body(&reply)
    );
    send(registry.setDeviceCertificate(
        epc_bytes(&renewed.epc),
        alloy::primitives::B256::from(medledger_protocol::kid_of(&renewed.issued.cert_der)),
    ))
    .await
    .unwrap();
    let reply = post_one(&mut conn, renewed.heart_rate(73.0), true).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // The old certificate is now the one refused.
    let reply = post_one(&mut old_conn, device.heart_rate(74.0), false).await;
    assert_eq!(reply.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_signed_before_a_renewal_still_commit_and_none_signed_after() {
    use crate::site::{batch_by_hand, commit_by_hand};
    use medledger_contracts::{epc_bytes, send};
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();
    let old = device.issued.clone();
    // Accepted by the collector before the renewal, forwarded after it
    // (the server was down, say).
    let before = device.heart_rate(70.0);
    let renewed = site.issue_device(1, medledger_pki::KeyAlg::P256).unwrap();
    send(site.admin.registry().setDeviceCertificate(
        epc_bytes(&renewed.epc),
        alloy::primitives::B256::from(medledger_protocol::kid_of(&renewed.issued.cert_der)),
    ))
    .await
    .unwrap();
    let mut server = site.connect_server().await.unwrap();
    let r = commit_by_hand(&mut server, batch_by_hand(&site, &old, vec![before], true)).await;
    assert_eq!(r["status"], "stored", "{r}");

    // Signed with the retired key after its retirement: refused, even
    // from a collector that lets it through.
    let after = device.heart_rate_at(71.0, now_ms() + 1500);
    let r = commit_by_hand(&mut server, batch_by_hand(&site, &old, vec![after], true)).await;
    assert_eq!(
        (r["status"].as_str(), r["problem"].as_str()),
        (Some("rejected"), Some("unknown-device")),
        "{r}"
    );
    assert!(r["detail"].as_str().unwrap().contains("retired"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_accept() {
    let mut options = medledger_sim::Options::default();
    options.limits.max_connections = 2;
    let site = Site::start(options).await.unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut first = site.connect(&device).await.unwrap();
    let _second = site.connect(&device).await.unwrap();
    assert!(
        site.connect(&device).await.is_err(),
        "a third connection got in"
    );
    let refused = || {
        site.collector.metrics().value(
            "medledger_collector_connections_refused_total",
            &[("cause", "at-capacity")],
        )
    };
    wait_for("at-capacity counted", || refused() == 1.0).await;
    // The connections inside still work; one closing makes room.
    assert_eq!(
        post_one(&mut first, device.heart_rate(70.0), false)
            .await
            .status,
        202
    );
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        if let Ok(conn) = site.connect(&device).await {
            break conn;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after a close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        post_one(&mut again, device.heart_rate(71.0), false)
            .await
            .status,
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_cap_is_shut_out_in_the_kernel_and_no_other() {
    use medledger_pki::https::connect_from;
    let mut options = medledger_sim::Options::default();
    options.limits.max_connections_per_address = 1;
    let site = Site::start(options).await.unwrap();
    let mut device = site.device(1).await.unwrap();
    let addr = site.collector.addr().to_string();
    // Whether a TCP connection from `from` is made before a dropped SYN
    // would be sent again (1 s): the kernel makes it without an accept.
    let connects = |from: &str| {
        let (addr, from) = (addr.clone(), from.parse().unwrap());
        async move {
            let connecting = connect_from(&addr, Some(from));
            matches!(
                tokio::time::timeout(Duration::from_millis(500), connecting).await,
                Ok(Ok(_))
            )
        }
    };
    // 127.0.0.1's one connection: the device's.
    let mut held = site.connect(&device).await.unwrap();
    // More from it are refused at accept, and then not answered at all
    // (each one made is refused and shuts the address out again).
    let mut dropped = false;
    for _ in 0..20 {
        if !connects("127.0.0.1").await {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "every new connection over the cap was made");
    assert!(refused_connections(&site, "address-at-capacity") >= 1.0);
    // Another address is let in; the device's connection still works.
    let mut other = false;
    for _ in 0..3 {
        other |= connects("127.0.0.2").await;
    }
    assert!(other, "another address was shut out too");
    assert_eq!(
        post_one(&mut held, device.heart_rate(70.0), false)
            .await
            .status,
        202
    );
    // Closed, the address is let back in. (A try the collector takes
    // before it has seen the close is refused and shuts the address out
    // again: the next waits on its SYN being resent, not in a spin.)
    drop(held);
    let mut again = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(conn) = site.connect(&device).await {
                break conn;
            }
        }
    })
    .await
    .expect("let back in");
    assert_eq!(
        post_one(&mut again, device.heart_rate(71.0), false)
            .await
            .status,
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_alerts_the_patient_and_the_reading_is_retried() {
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    // The blob store breaks: its directory becomes a file.
    let blobs = site.dir.path().join("server/blobs");
    std::fs::remove_dir_all(&blobs).unwrap();
    std::fs::write(&blobs, b"not a directory").unwrap();

    let cose = device.heart_rate(72.0);
    let hash = reading_hash(&cose);
    let reply = post_one(&mut conn, cose.clone(), false).await;
    assert_eq!(reply.status, 202, "the collector holds it");
    let alerts = crate::alerts::wait_for_alerts(&site, 1).await;
    assert_eq!(alerts[0]["kind"], "storage-failure", "{alerts:?}");
    assert_eq!(alerts[0]["flagged"], true);
    // The patient reads that readings wait, not the server's internals.
    assert_eq!(alerts[0]["body"], serde_json::json!({}), "{alerts:?}");
    assert!(
        !alerts[0].to_string().contains("blobs"),
        "an alert carries no internal error text: {alerts:?}"
    );
    assert!(site.server.reading(&hash).await.unwrap().is_none());

    // Repaired: the collector's retry stores it, once.
    std::fs::remove_file(&blobs).unwrap();
    std::fs::create_dir(&blobs).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while site.server.reading(&hash).await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "never stored after the repair"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(site.server.reading(&hash).await.unwrap().unwrap(), cose);
    assert_eq!(
        site.server
            .ledger()
            .verify(&site.patient_ref.0, &[])
            .await
            .unwrap()
            .size,
        1
    );
    // One alert for the outage, however many retries it took.
    let kinds: Vec<String> = crate::alerts::inbox(&site, 0)
        .await
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["storage-failure"]);
}

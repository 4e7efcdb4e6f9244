//! The simulated hospital (`medledger_sim`) as the ingest tests use it.

use medledger_pki::https::{Connection, Reply};
pub use medledger_sim::{GROUP, Hospital as Site, now_ms};
use medledger_sim::{Readings, Wait, post_readings};

/// Runs `medledger ARGS` without the chain settings of the environment
/// (`MEDLEDGER_REGISTRY`, `_KEY`, `_RPC`): (success, stdout, stderr).
pub fn medledger(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(args)
        .env_remove("MEDLEDGER_REGISTRY")
        .env_remove("MEDLEDGER_KEY")
        .env_remove("MEDLEDGER_RPC")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A hospital with the default options.
pub async fn start() -> Site {
    Site::start(medledger_sim::Options::default())
        .await
        .unwrap()
}

/// A hospital whose patient has one heart rate stored, from device 1.
pub async fn start_with_a_reading() -> Site {
    let site = start().await;
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let reply = post_one(&mut conn, device.heart_rate(72.0), true).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    site
}

/// Posts one COSE reading (`wait`: until the server committed it).
pub async fn post_one(conn: &mut Connection, cose: Vec<u8>, wait: bool) -> Reply {
    let wait = if wait { Wait::Committed } else { Wait::Stored };
    post_readings(conn, Readings::One(cose), wait)
        .await
        .unwrap()
}

/// Asserts that the collector's metrics count exactly one reading rejected
/// for each of `causes`.
pub fn rejected_once(metrics: &medledger_pki::metrics::Metrics, causes: &[&str]) {
    for cause in causes {
        assert_eq!(
            metrics.value(
                "medledger_collector_readings_total",
                &[("outcome", "rejected"), ("cause", cause)]
            ),
            1.0,
            "{cause}"
        );
    }
}

/// The JSON body of a reply.
pub fn body(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&reply.body)))
}

/// `GET path`, which must answer 200; its JSON body.
pub async fn get_ok(conn: &mut Connection, path: &str) -> serde_json::Value {
    let reply = conn.request("GET", path, &[], vec![]).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    body(&reply)
}

/// `METHOD path` (with a JSON `body`, if any) on a new connection to the
/// site's server, as `who`.
pub async fn call(
    site: &Site,
    who: &medledger_pki::Credentials,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut conn = site
        .open(
            who,
            medledger_pki::Role::Server,
            &site.server.addr().to_string(),
        )
        .await
        .unwrap();
    let (headers, bytes) = match body {
        Some(b) => (
            &[("content-type", "application/json")][..],
            b.to_string().into_bytes(),
        ),
        None => (&[][..], Vec::new()),
    };
    conn.request(method, path, headers, bytes).await.unwrap()
}

/// Serves the hospital's chain over JSON-RPC on HTTP, for `medledger`
/// processes; returns its URL.
pub async fn serve_rpc(site: &Site) -> String {
    let rpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", rpc.local_addr().unwrap());
    tokio::spawn(medledger_chain::rpc::http::serve(
        medledger_chain::rpc::Rpc::new(site.node.clone()),
        rpc,
    ));
    url
}

/// A forward batch built by hand, as a compromised collector could:
/// readings of the device with certificate `device`, for the site's
/// patient, with the patient's card signature over them if `sign_card`.
pub fn batch_by_hand(
    site: &Site,
    device: &medledger_pki::Issued,
    readings: Vec<Vec<u8>>,
    sign_card: bool,
) -> Vec<u8> {
    use medledger_collector::CardSigner;
    use medledger_protocol::reading_hash;
    let card = medledger_collector::SoftwareCard::new(&medledger_pki::Credentials::from_issued(
        &site.card,
    ))
    .unwrap();
    let patient = site.patient_ref.0;
    let hashes: Vec<[u8; 32]> = readings.iter().map(|r| reading_hash(r)).collect();
    let mut batch = medledger_protocol::ForwardBatch {
        certs: vec![device.cert_der.clone(), site.card.cert_der.clone()],
        cas: device.chain.clone(),
        ..medledger_protocol::ForwardBatch::default()
    };
    for cose in readings {
        batch.readings.push(medledger_protocol::Forwarded {
            cose,
            cert: 0,
            patient,
            received_ms: now_ms(),
        });
    }
    if sign_card {
        batch.cards.push(medledger_protocol::CardSignature {
            patient,
            cert: 1,
            readings: (0..hashes.len() as u32).collect(),
            sig: card
                .sign(&medledger_protocol::card_digest(&patient, &hashes))
                .unwrap(),
        });
    }
    batch.to_cbor()
}

/// Posts a forward batch to the server, which must answer 200; the result
/// of its first reading.
pub async fn commit_by_hand(server: &mut Connection, batch: Vec<u8>) -> serde_json::Value {
    let reply = server
        .request(
            "POST",
            "/v1/batches",
            &[("content-type", "application/cbor")],
            batch,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    body(&reply)["results"][0].clone()
}

//! `/livez` and `/readyz` on the roles' metrics listeners, read as
//! monitoring reads them: plain HTTP on loopback, no certificate.

use crate::ingest::{collector_config, free_port, spawn_collector};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// `GET path` over plain HTTP/1.1: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: monitor\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// `GET /readyz` until it answers `status` (at most 20 s); the body.
pub(crate) async fn readyz_until(addr: SocketAddr, status: u16) -> String {
    let start = Instant::now();
    loop {
        let (now, body) = get(addr, "/readyz").await;
        if now == status {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "/readyz still answers {now}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP relay to the chain's JSON-RPC that the test can cut, every open
/// connection with it.
struct Relay {
    url: String,
    accepting: JoinHandle<()>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn to(url: &str) -> Relay {
        let target = url.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let kept = links.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                kept.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Relay {
            url,
            accepting,
            links,
        }
    }

    fn cut(&self) {
        self.accepting.abort();
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_what_does_not_answer_and_the_log_says_why_once() {
    let site = crate::site::start().await;
    // The server: its chain, database and blob store answer.
    let server = site.server.metrics_addr().unwrap();
    assert_eq!(get(server, "/livez").await, (200, "ok\n".to_owned()));
    let ready: Value = serde_json::from_str(&readyz_until(server, 200).await).unwrap();
    assert_eq!(
        ready,
        json!({ "ready": true,
                "dependencies": { "blob store": true, "chain": true, "database": true } })
    );

    // A collector process whose server is not there yet, its chain
    // through a relay.
    let rpc = Relay::to(&crate::site::serve_rpc(&site).await).await;
    let (server_port, metrics_port) = (free_port(), free_port());
    let config = collector_config(
        &site,
        &rpc.url,
        server_port,
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let (mut child, devices_at) = spawn_collector(&config);
    let monitor = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    assert_eq!(get(monitor, "/livez").await, (200, "ok\n".to_owned()));
    let problem: Value = serde_json::from_str(&readyz_until(monitor, 503).await).unwrap();
    assert_eq!(problem["type"], "urn:medledger:problem:unavailable");
    assert_eq!(problem["detail"], "not ready: the server does not answer");

    // The server comes up: ready.
    let _server = site
        .extra_server("server-2", &format!("127.0.0.1:{server_port}"))
        .await
        .unwrap();
    let ready: Value = serde_json::from_str(&readyz_until(monitor, 200).await).unwrap();
    assert_eq!(
        ready["dependencies"],
        json!({ "chain": true, "database": true, "server": true })
    );

    // The chain goes away: not ready, naming it.
    rpc.cut();
    let problem: Value = serde_json::from_str(&readyz_until(monitor, 503).await).unwrap();
    assert_eq!(problem["detail"], "not ready: the chain does not answer");
    // Asked again and again, the log says it once.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(get(monitor, "/readyz").await.0, 503);
    }
    // A device of another CA: refused at the handshake, and logged with
    // the fingerprint of the certificate it presented.
    let foreign_ca =
        medledger_pki::Ca::init(&site.dir.path().join("foreign-ca"), "Elsewhere").unwrap();
    let foreign =
        medledger_sim::Device::issue(&foreign_ca, 9, "g", medledger_pki::KeyAlg::P256).unwrap();
    let tls = site
        .client_config(&foreign.credentials(), medledger_pki::Role::Collector)
        .unwrap();
    if let Ok(mut c) = medledger_pki::https::Connection::open(tls, &devices_at, "localhost").await {
        assert!(c.request("GET", "/healthz", &[], vec![]).await.is_err());
    }
    // Plain HTTP on the devices' port, 50 times: each refusal is counted,
    // and logged with the peer and the cause until the log's limit.
    for _ in 0..50 {
        let mut tcp = tokio::net::TcpStream::connect(&devices_at).await.unwrap();
        tcp.write_all(b"GET /v1/readings HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
    }
    // A stale reading from a device: rejected, and logged with the
    // device's certificate fingerprint.
    let mut device = site.device(1).await.unwrap();
    let mut conn = site
        .open(
            &device.credentials(),
            medledger_pki::Role::Collector,
            &devices_at,
        )
        .await
        .unwrap();
    let stale = device.heart_rate_at(70.0, 1_000);
    let reply = crate::site::post_one(&mut conn, stale, false).await;
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap();
    let said = |text: &str| log.matches(text).count();
    assert_eq!(
        said("medledger collector: rejected 1 reading(s): "),
        1,
        "{log}"
    );
    assert!(
        log.contains(&device.issued.identity().unwrap().fingerprint_hex()),
        "{log}"
    );
    let foreign_fingerprint = foreign.issued.identity().unwrap().fingerprint_hex();
    assert!(
        log.lines().any(|l| l.contains("not from the medledger CA")
            && l.contains("untrusted-certificate")
            && l.contains(&foreign_fingerprint)),
        "{log}"
    );
    let refused = said("medledger collector: refused a connection: the client did not start TLS");
    assert!(
        (1..=2 * medledger_pki::throttle::BURST as usize).contains(&refused),
        "{refused} lines: {log}"
    );
    assert!(
        log.contains("tls-required") && log.contains("peer=127.0.0.1:"),
        "{log}"
    );
    assert_eq!(
        said("medledger collector: not ready: the server does not answer: "),
        1,
        "{log}"
    );
    assert_eq!(
        said("medledger collector: the server answers again"),
        1,
        "{log}"
    );
    assert_eq!(
        said("medledger collector: not ready: the chain does not answer: "),
        1,
        "{log}"
    );
}

//! Patient alerts: raised once per cause, kept while the patient is away,
//! read from the inbox or followed live.

use crate::site::get_ok;
use medledger_contracts::{Grantee, Scope, StaffRole};
use medledger_pki::{Credentials, Role};
use medledger_sim::Hospital;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The patient's alerts after `after`, read with their card certificate.
pub(crate) async fn inbox(site: &Hospital, after: u64) -> Vec<serde_json::Value> {
    let mut conn = site.connect_patient().await.unwrap();
    get_ok(&mut conn, &format!("/v1/alerts?after={after}")).await["alerts"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) async fn wait_for_alerts(site: &Hospital, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = inbox(site, 0).await;
        if alerts.len() >= n {
            return alerts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} alerts: {alerts:?}",
            alerts.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_and_consent_change_alerts_the_patient_once() {
    let site = crate::site::start_with_a_reading().await;
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let doctor = site.staff(Role::Doctor, false).await.unwrap();

    let granted = nurse
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "TREAT")
        .await
        .unwrap();
    let mut staff_conn = site
        .open(
            &nurse.credentials(),
            Role::Server,
            &site.server.addr().to_string(),
        )
        .await
        .unwrap();
    let read = staff_conn
        .request(
            "GET",
            &format!("/v1/records?request={}", granted.id),
            &[],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    doctor
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "HOPERAT")
        .await
        .unwrap();
    let patient = site.admin.with_provider(medledger_sim::provider(
        &site.node,
        &medledger_sim::signer(&site.card).unwrap(),
    ));
    patient
        .grant_consent(
            site.patient_ref,
            Grantee::Role(StaffRole::Doctor),
            Scope::ALL,
            "",
            medledger_protocol::now_ms() / 1000 + 3600,
        )
        .await
        .unwrap();

    let alerts = wait_for_alerts(&site, 4).await;
    let mut kinds: Vec<&str> = alerts.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "access-denied",
            "access-granted",
            "consent-changed",
            "record-read"
        ]
    );
    let ids: Vec<u64> = alerts.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let denied = alerts
        .iter()
        .find(|a| a["kind"] == "access-denied")
        .unwrap();
    assert_eq!(denied["flagged"], true, "a denial is always unusual");
    assert!(
        denied["why"]
            .as_str()
            .unwrap()
            .contains(&doctor.address.to_string())
    );

    // Nothing twice, however long we wait; `after` gives only what is new.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(inbox(&site, 0).await.len(), 4);
    assert!(inbox(&site, ids[3]).await.is_empty());

    // Live: the stream replays from Last-Event-ID, then follows.
    let mut config = (*site
        .client_config(&Credentials::from_issued(&site.card), Role::Server)
        .unwrap())
    .clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(site.server.addr())
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /v1/alerts/stream HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: {}\r\n\r\n",
            ids[1]
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // A new alert while following: the patient revokes nothing but opts out.
    patient.set_opt_out(site.patient_ref, true).await.unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.matches("event: alert").count() < 3 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tls.read(&mut buf))
            .await
            .expect("the stream went quiet")
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains(&format!("id: {}", ids[2])), "{seen}");
    assert!(
        !seen.contains(&format!("id: {}\n", ids[1])),
        "replayed an old one: {seen}"
    );
    assert!(seen.contains("opt-out set to true"), "{seen}");

    // Another patient's certificate, or staff, cannot read these.
    let mut staff_conn = site
        .open(
            &nurse.credentials(),
            Role::Server,
            &site.server.addr().to_string(),
        )
        .await
        .unwrap();
    let reply = staff_conn
        .request("GET", "/v1/alerts", &[], vec![])
        .await
        .unwrap();
    assert_eq!(reply.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_reads_are_flagged_with_why_and_preferences_filter_delivery() {
    let site = crate::site::start().await;
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let granted = nurse
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "TREAT")
        .await
        .unwrap();
    let mut conn = site
        .open(
            &nurse.credentials(),
            Role::Server,
            &site.server.addr().to_string(),
        )
        .await
        .unwrap();
    let path = format!("/v1/records?request={}", granted.id);
    for _ in 0..3 {
        assert_eq!(
            conn.request("GET", &path, &[], vec![])
                .await
                .unwrap()
                .status,
            200
        );
    }
    let reads: Vec<serde_json::Value> = wait_for_alerts(&site, 4)
        .await
        .into_iter()
        .filter(|a| a["kind"] == "record-read")
        .collect();
    assert_eq!(reads.len(), 3);
    // The nurse is an assigned carer: only the first read is unusual.
    assert_eq!(reads[0]["flagged"], true);
    assert!(
        reads[0]["why"]
            .as_str()
            .unwrap()
            .contains("the first read by this person"),
        "{}",
        reads[0]
    );
    assert_eq!(reads[1]["flagged"], false);

    // The patient asks for unusual alerts only, and at most 3 reads an hour.
    let mut patient = site.connect_patient().await.unwrap();
    let prefs = serde_json::json!({
        "mode": "unusual", "day_start": 0, "day_end": 0, "max_reads_per_hour": 3,
    });
    let reply = patient
        .request(
            "PUT",
            "/v1/alerts/preferences",
            &[("content-type", "application/json")],
            prefs.to_string().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let bad = patient
        .request(
            "PUT",
            "/v1/alerts/preferences",
            &[("content-type", "application/json")],
            br#"{"mode":"some","day_start":0,"day_end":0,"max_reads_per_hour":3}"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    // A fourth read this hour is unusual; the inbox now holds only the
    // flagged ones (the others are kept, not delivered).
    assert_eq!(
        conn.request("GET", &path, &[], vec![])
            .await
            .unwrap()
            .status,
        200
    );
    let delivered = inbox(&site, 0).await;
    assert!(
        delivered.iter().all(|a| a["flagged"] == true),
        "{delivered:?}"
    );
    let last = delivered.last().unwrap();
    assert_eq!(last["kind"], "record-read");
    assert!(
        last["why"]
            .as_str()
            .unwrap()
            .contains("more than 3 reads in an hour"),
        "{last}"
    );
}

/// An HTTPS endpoint on a local port with a certificate from a CA of its
/// own (not the hospital's), as a notification relay would have.
struct Receiver {
    addr: std::net::SocketAddr,
    /// Its CA's root (DER): the server's `webhook_ca`.
    root: Vec<u8>,
    _dir: tempfile::TempDir,
}

async fn https_receiver(app: axum::Router) -> Receiver {
    use medledger_pki::{Acceptor, Ca, ClientAuth, LeafRequest, https};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), "Notification Relay").unwrap();
    // A server certificate names localhost, 127.0.0.1 and ::1.
    let issued = ca.issue(&LeafRequest::new(Role::Server)).unwrap();
    let root = ca.root_cert_der().unwrap();
    // The webhook client presents no certificate; none is asked for.
    let auth = ClientAuth::new(&root, ca.write_crl().unwrap(), &[Role::Server]).unwrap();
    let tls = medledger_pki::server_config_optional_client(
        &Credentials::from_issued(&issued),
        auth.clone(),
    )
    .unwrap();
    let (listener, addr) = https::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    tokio::spawn(https::serve(
        listener,
        Acceptor::optional(tls, Duration::from_secs(5)),
        auth,
        app,
        https::ServeLimits::default(),
        std::sync::Arc::new(|_| {}),
    ));
    Receiver {
        addr,
        root,
        _dir: dir,
    }
}

/// `PUT /v1/alerts/webhook` as the site's patient.
async fn set_webhook(site: &Hospital, hook: serde_json::Value) -> medledger_pki::https::Reply {
    site.connect_patient()
        .await
        .unwrap()
        .request(
            "PUT",
            "/v1/alerts/webhook",
            &[("content-type", "application/json")],
            hook.to_string().into_bytes(),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_to_an_internal_address_or_over_http_is_refused_naming_why() {
    let site = crate::site::start().await;
    let own = site.server.addr().port();
    for (url, why) in [
        (
            "http://example.org/",
            "must be an https:// URL, not http://",
        ),
        ("https://user:pw@example.org/", "may not carry a user name"),
        ("https://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("https://[::1]/", "::1 is a loopback address"),
        (
            "https://[::ffff:127.0.0.1]/",
            "::ffff:127.0.0.1 is an IPv4-mapped form of 127.0.0.1, a loopback address",
        ),
        ("https://2130706433/", "127.0.0.1 is a loopback address"),
        ("https://0177.0.0.1/", "127.0.0.1 is a loopback address"),
        ("https://10.0.0.5/", "10.0.0.5 is a private address"),
        ("https://192.168.1.1/", "192.168.1.1 is a private address"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "169.254.169.254 is a link-local address",
        ),
        ("https://localhost/", "localhost resolves to "),
        (
            &format!("https://localhost:{own}/v1/batches"),
            "one of this server's own listening ports",
        ),
    ] {
        let reply = set_webhook(
            &site,
            serde_json::json!({ "url": url, "secret": "a shared secret for the test" }),
        )
        .await;
        let problem = crate::site::body(&reply);
        assert_eq!(reply.status, 400, "{url}: {problem}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(problem["type"], "urn:medledger:problem:malformed", "{url}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{url}: {detail}");
        if detail.contains("address") && !detail.contains("listening") {
            assert!(
                detail.ends_with("an admin may allow it with webhook_allow"),
                "{detail}"
            );
        }
    }
    let mut patient = site.connect_patient().await.unwrap();
    let shown = get_ok(&mut patient, "/v1/alerts/webhook").await;
    assert_eq!(shown["url"], serde_json::Value::Null, "nothing was set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_every_alert_signed_and_retried_until_it_answers() {
    use std::sync::{Arc, Mutex};
    const SECRET: &str = "a shared secret for the test";

    // The receiver: refuses the first two deliveries, checks signatures;
    // `/moved` answers every delivery with a redirect to `/hook`.
    #[derive(Default)]
    struct Seen {
        calls: u32,
        ids: Vec<u64>,
        bad_signatures: u32,
        hosts: Vec<String>,
        moved: u32,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = {
        let seen = seen.clone();
        let moved = seen.clone();
        axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let seen = seen.clone();
                        async move {
                            let mut s = seen.lock().unwrap();
                            s.calls += 1;
                            s.hosts
                                .push(headers["host"].to_str().unwrap_or_default().to_owned());
                            if s.calls <= 2 {
                                return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            let key =
                                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
                            let expected =
                                format!("sha256={}", hex::encode(ring::hmac::sign(&key, &body)));
                            if headers["x-medledger-signature"] != expected.as_str() {
                                s.bad_signatures += 1;
                            }
                            let alert: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            s.ids.push(alert["id"].as_u64().unwrap());
                            axum::http::StatusCode::NO_CONTENT
                        }
                    },
                ),
            )
            .route(
                "/moved",
                axum::routing::post(move || {
                    let seen = moved.clone();
                    async move {
                        seen.lock().unwrap().moved += 1;
                        (
                            axum::http::StatusCode::FOUND,
                            [(axum::http::header::LOCATION, "/hook")],
                        )
                    }
                }),
            )
    };
    let receiver = https_receiver(app).await;
    let port = receiver.addr.port();
    // The admin allows exactly the relay's port (as `localhost` may also
    // resolve to ::1, that too), and trusts the relay's CA.
    let site = crate::site::Site::start(medledger_sim::Options {
        webhook_allow: vec![
            format!("127.0.0.1:{port}").parse().unwrap(),
            format!("[::1]:{port}").parse().unwrap(),
        ],
        webhook_ca: Some(vec![receiver.root.clone()]),
        ..medledger_sim::Options::default()
    })
    .await
    .unwrap();

    // Still refused: plain HTTP to the same relay, and its other ports.
    let refused = set_webhook(
        &site,
        serde_json::json!({ "url": format!("http://127.0.0.1:{port}/hook"), "secret": SECRET }),
    )
    .await;
    assert_eq!(refused.status, 400, "only https:// endpoints");
    let refused = set_webhook(
        &site,
        serde_json::json!({ "url": format!("https://127.0.0.1:{}/hook", port ^ 1), "secret": SECRET }),
    )
    .await;
    assert_eq!(refused.status, 400, "only the allowed port");

    // By name: resolved to the allowed address, verified as `localhost`.
    let url = format!("https://localhost:{port}/hook");
    let reply = set_webhook(
        &site,
        serde_json::json!({ "url": url, "secret": SECRET, "after": 0 }),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(crate::site::body(&reply)["url"], url.as_str());

    // Two alerts: a granted request and a denied one.
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let doctor = site.staff(Role::Doctor, false).await.unwrap();
    nurse
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "TREAT")
        .await
        .unwrap();
    doctor
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "HOPERAT")
        .await
        .unwrap();
    let alerts = wait_for_alerts(&site, 2).await;
    let want: Vec<u64> = alerts.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let calls = loop {
        {
            let s = seen.lock().unwrap();
            if s.ids == want {
                assert!(s.calls >= 4, "two refusals, then two deliveries");
                assert_eq!(s.bad_signatures, 0);
                let host = format!("localhost:{port}");
                assert!(s.hosts.iter().all(|h| *h == host), "{:?}", s.hosts);
                break s.calls;
            }
            assert!(s.ids.len() <= want.len(), "delivered twice: {:?}", s.ids);
        }
        assert!(std::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failures = |site: &Hospital| {
        site.server
            .metrics()
            .value("medledger_server_webhook_failures_total", &[])
    };
    assert!(failures(&site) >= 2.0, "the two refusals are counted");

    // A redirect is a failed delivery, retried, and never followed.
    let before = failures(&site);
    let reply = set_webhook(
        &site,
        serde_json::json!({
            "url": format!("https://127.0.0.1:{port}/moved"), "secret": SECRET, "after": 0,
        }),
    )
    .await;
    assert_eq!(reply.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().moved < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery attempted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The runner counts each failure after the answer: wait for the third.
    while failures(&site) < before + 3.0 {
        assert!(std::time::Instant::now() < deadline, "failures not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = seen.lock().unwrap();
    assert_eq!(s.calls, calls, "the redirect to /hook was followed");
    assert_eq!(s.ids, want);
}

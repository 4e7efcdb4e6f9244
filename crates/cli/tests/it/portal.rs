//! The web portal in a real browser: Debian's Chromium, driven headless by
//! `web/e2e/portal.mjs` (playwright-core), through the main flow of a
//! patient, a doctor and an admin against `medledger up`. Screenshots of
//! each step go to `target/tmp/portal-screenshots`.

use crate::ingest::free_port;
use crate::up::{field, medledger, sim, stop, up_with_portal};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Chromium, node and playwright-core, or why they are missing.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = PathBuf::from(
        std::env::var("MEDLEDGER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set MEDLEDGER_CHROMIUM)",
            chromium.display()
        ));
    }
    let script = workspace().join("web/e2e/portal.mjs");
    if !workspace()
        .join("web/node_modules/playwright-core")
        .exists()
    {
        return Err("web/node_modules/playwright-core is missing (cd web && npm ci)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node is not installed".into());
    }
    Ok((chromium, script))
}

/// What `medledger ca show` says a certificate's `label` is.
fn shown(cert: &Path, label: &str) -> String {
    field(&medledger(&["ca", "show", cert.to_str().unwrap()]), label)
}

fn person(prefix: &Path, patient_ref: &str) -> serde_json::Value {
    let file = |suffix: &str| format!("{}{suffix}", prefix.display());
    serde_json::json!({
        "key": file(".eth.key"),
        "cert": file(".crt"),
        "pkcs8": file(".key"),
        "account": shown(Path::new(&file(".crt")), "address"),
        "ref": patient_ref,
    })
}

#[test]
fn patients_doctors_and_admins_use_the_portal_in_chromium() {
    let (chromium, script) = match browser() {
        Ok(found) => found,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the portal test needs a browser in CI: {why}")
        }
        Err(why) => {
            eprintln!("\n!!! SKIPPED the portal browser test: {why} !!!\n");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("medledger");
    let d = data.to_str().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let portal = free_port();
    let (child, printed) = up_with_portal(&data, ports, &format!("127.0.0.1:{portal}"));
    assert!(printed.contains("portal"), "{printed}");
    let rpc = format!("http://127.0.0.1:{}", ports[0]);
    let registry = field(&printed, "Registry");

    // A simulated patient with devices, and their readings.
    assert!(sim(&data, ports[0], "3", "4") > 0);
    let patient_ref = format!("{}", alloy::primitives::keccak256("salt:sim-patient"));

    // A doctor, registered and caring for the patient.
    let doctor = data.join("people/doctor");
    medledger(&[
        "ca",
        "issue",
        "--ca",
        &format!("{d}/ca"),
        "--role",
        "doctor",
        "--cn",
        "Dr Ada Lovelace",
        "--out",
        doctor.to_str().unwrap(),
    ]);
    let doctor_account = shown(&doctor.with_extension("crt"), "address");
    let admin_key = format!("{d}/people/admin.eth.key");
    let admin = |args: &[&str]| {
        let mut all = vec![
            "admin",
            "--rpc",
            &rpc,
            "--registry",
            &registry,
            "--key",
            &admin_key,
        ];
        all.extend_from_slice(args);
        medledger(&all)
    };
    admin(&[
        "staff",
        "register",
        &doctor_account,
        "--role",
        "doctor",
        "--department",
        "ward",
    ]);
    admin(&[
        "person",
        "certificate",
        "--cert",
        doctor.with_extension("crt").to_str().unwrap(),
    ]);
    admin(&[
        "patient",
        "assign-carer",
        "--patient",
        &patient_ref,
        "--carer",
        &doctor_account,
    ]);

    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots).unwrap();
    // What the admin registers from the portal: a nurse, a device by its
    // certificate, a patient with their card.
    let issue = |args: &[&str]| {
        let mut all = vec!["ca", "issue", "--ca"];
        let ca = format!("{d}/ca");
        all.push(&ca);
        all.extend_from_slice(args);
        medledger(&all);
    };
    let nurse = data.join("people/nurse-e2e");
    issue(&["--role", "nurse", "--out", nurse.to_str().unwrap()]);
    let device = data.join("devices-e2e/monitor");
    issue(&[
        "--role",
        "device",
        "--epc",
        "urn:epc:tag:sgtin-96:3.0614141.812345.777",
        "--group",
        "ward-monitor",
        "--rule",
        "default",
        "--out",
        device.to_str().unwrap(),
    ]);
    let newcomer = data.join("people/patient-e2e");
    issue(&["--role", "patient", "--out", newcomer.to_str().unwrap()]);
    let manage = serde_json::json!({
        "staff": shown(&nurse.with_extension("crt"), "address"),
        "device_cert": device.with_extension("crt"),
        "patient_ref": format!("{}", alloy::primitives::keccak256("salt:e2e-newcomer")),
        "patient_account": shown(&newcomer.with_extension("crt"), "address"),
    });

    // Shown by the name on their certificate once the portal has seen it.
    let mut doctor_facts = person(&doctor, &patient_ref);
    doctor_facts["name"] = serde_json::json!("Dr Ada Lovelace");
    let facts = serde_json::json!({
        "portal": format!("https://127.0.0.1:{portal}"),
        "chromium": chromium,
        "patient": person(&data.join("sim/patient"), &patient_ref),
        "doctor": doctor_facts,
        "admin": person(&data.join("people/admin"), &patient_ref),
        "manage": manage,
    });
    let facts_file = dir.path().join("facts.json");
    std::fs::write(&facts_file, facts.to_string()).unwrap();
    let run = Command::new("node")
        .arg(&script)
        .arg("--facts")
        .arg(&facts_file)
        .arg("--screenshots")
        .arg(&screenshots)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{said}");
    println!("screenshots: {}", screenshots.display());

    // What the browser did is on chain, signed by each person.
    let audit = medledger(&[
        "audit",
        "--rpc",
        &rpc,
        "--registry",
        &registry,
        "--patient",
        &patient_ref,
    ]);
    stop(child);
    assert!(run.status.success(), "the browser flow failed:\n{said}");
    for event in [
        "ConsentGranted",
        "AccessGranted",
        "BreakGlass",
        "ConsentRevoked",
    ] {
        assert!(audit.contains(event), "no {event} on chain:\n{audit}");
    }
    let pictures = std::fs::read_dir(&screenshots).unwrap().count();
    assert!(pictures >= 5, "only {pictures} screenshots");
}

/// The portal over HTTPS without a client certificate, as a browser
/// whose user signs in with a key.
pub(crate) struct Visitor {
    conn: medledger_pki::https::Connection,
    pub(crate) cookie: String,
}

impl Visitor {
    pub(crate) async fn open(root: &Path, addr: &str, own: Option<&Path>) -> Visitor {
        let root = medledger_pki::files::read_first(root, "CERTIFICATE").unwrap();
        let own = own.map(|p| medledger_pki::Credentials::load(p).unwrap());
        let config =
            medledger_pki::client_config(own.as_ref(), &root, &[medledger_pki::Role::Server])
                .unwrap();
        let conn = medledger_pki::https::Connection::open(config, addr, "localhost")
            .await
            .unwrap();
        Visitor {
            conn,
            cookie: String::new(),
        }
    }

    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
    ) -> (u16, serde_json::Value) {
        let mut headers = vec![("content-type", "application/json")];
        if !self.cookie.is_empty() {
            headers.push(("cookie", self.cookie.as_str()));
        }
        headers.extend_from_slice(extra);
        let reply = self
            .conn
            .request(method, path, &headers, body.as_bytes().to_vec())
            .await
            .unwrap();
        if let Some(set) = reply.header("set-cookie") {
            self.cookie = set.split(';').next().unwrap_or("").to_owned();
        }
        let json = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
        (reply.status, json)
    }

    /// A sign-in challenge, waiting as `Retry-After` says when the
    /// portal's per-address rate limit answers 429, as a client should.
    pub(crate) async fn challenge(&mut self) -> String {
        loop {
            let reply = self
                .conn
                .request("POST", "/portal/v1/challenge", &[], b"{}".to_vec())
                .await
                .unwrap();
            let body: serde_json::Value =
                serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
            if reply.status == 429 {
                let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                continue;
            }
            assert_eq!(reply.status, 200, "{body}");
            return body["message"].as_str().unwrap().to_owned();
        }
    }

    /// Signs in with a chain key and the certificate (PEM) that goes with
    /// it, as the page does.
    pub(crate) async fn sign_in_by_key(
        &mut self,
        key: &alloy::signers::local::PrivateKeySigner,
        certificate: &str,
    ) -> (u16, serde_json::Value) {
        let message = self.challenge().await;
        let answer = serde_json::json!({
            "message": message,
            "signature": sign(key, message.as_bytes()),
            "certificate": certificate,
        });
        self.send("POST", "/portal/v1/session", &[], &answer.to_string())
            .await
    }
}

fn sign(key: &alloy::signers::local::PrivateKeySigner, message: &[u8]) -> String {
    use alloy::signers::SignerSync;
    let signature = key.sign_message_sync(message).unwrap();
    format!("0x{}", hex::encode(signature.as_bytes()))
}

pub(crate) fn problem_type(body: &serde_json::Value) -> &str {
    body["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("urn:medledger:problem:")
}

/// A legacy transaction to `to`, signed by `key`, as the page makes them.
fn signed_tx(
    key: &alloy::signers::local::PrivateKeySigner,
    to: alloy::primitives::Address,
) -> String {
    use alloy::consensus::{SignableTransaction, TxLegacy};
    use alloy::eips::Encodable2718;
    use alloy::signers::SignerSync;
    let tx = TxLegacy {
        chain_id: Some(1337),
        nonce: 0,
        gas_price: 0,
        gas_limit: 100_000,
        to: alloy::primitives::TxKind::Call(to),
        value: alloy::primitives::U256::ZERO,
        input: Default::default(),
    };
    let signature = key.sign_hash_sync(&tx.signature_hash()).unwrap();
    format!(
        "0x{}",
        hex::encode(tx.into_signed(signature).encoded_2718())
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_portal_signs_in_only_registered_keys_and_relays_only_what_they_signed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("medledger");
    let ports = [free_port(), free_port(), free_port()];
    let portal = format!("127.0.0.1:{}", free_port());
    let (child, printed) = up_with_portal(&data, ports, &portal);
    let registry: alloy::primitives::Address = field(&printed, "Registry").parse().unwrap();
    let root = data.join("ca/root.crt");
    let admin_key = std::fs::read_to_string(data.join("people/admin.eth.key")).unwrap();
    let admin: alloy::signers::local::PrivateKeySigner = admin_key.trim().parse().unwrap();
    let admin_cert = std::fs::read_to_string(data.join("people/admin.crt")).unwrap();
    let stranger = alloy::signers::local::PrivateKeySigner::random();
    let mut v = Visitor::open(&root, &portal, None).await;

    // Signed out: only the page and sign-in.
    let (status, page) = v.send("GET", "/", &[], "").await;
    assert_eq!(status, 200, "{page}");
    let (status, body) = v.send("GET", "/portal/v1/overview", &[], "").await;
    assert_eq!((status, problem_type(&body)), (401, "sign-in-required"));

    // A key the Registry does not know signs in to nothing, even with a
    // valid certificate (someone else's).
    let message = v.challenge().await;
    let answer = serde_json::json!({
        "message": message,
        "signature": sign(&stranger, message.as_bytes()),
        "certificate": admin_cert,
    });
    let (status, body) = v
        .send("POST", "/portal/v1/session", &[], &answer.to_string())
        .await;
    assert_eq!((status, problem_type(&body)), (403, "forbidden"), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&stranger.address().to_string())
    );
    // The right key without its certificate signs in to nothing either.
    let message = v.challenge().await;
    let answer =
        serde_json::json!({ "message": message, "signature": sign(&admin, message.as_bytes()) });
    let (status, body) = v
        .send("POST", "/portal/v1/session", &[], &answer.to_string())
        .await;
    assert_eq!((status, problem_type(&body)), (400, "malformed"), "{body}");
    // Each challenge is answered once.
    let again = serde_json::json!({
        "message": message,
        "signature": sign(&admin, message.as_bytes()),
        "certificate": admin_cert,
    });
    let (status, body) = v
        .send("POST", "/portal/v1/session", &[], &again.to_string())
        .await;
    assert_eq!(status, 403, "a used challenge signed in: {body}");
    // A signature over another message names no account of ours.
    let message = v.challenge().await;
    let wrong = serde_json::json!({
        "message": message,
        "signature": sign(&admin, b"something else"),
        "certificate": admin_cert,
    });
    let (status, body) = v
        .send("POST", "/portal/v1/session", &[], &wrong.to_string())
        .await;
    assert_eq!(status, 403, "{body}");

    // Nor does the message of a challenge, altered (another portal's name).
    let message = v.challenge().await;
    let altered = message.replace("portal: ", "portal: elsewhere.example ");
    let answer =
        serde_json::json!({ "message": altered, "signature": sign(&admin, altered.as_bytes()) });
    let (status, body) = v
        .send("POST", "/portal/v1/session", &[], &answer.to_string())
        .await;
    assert_eq!(status, 403, "an altered challenge signed in: {body}");
    // A page of another site may not make the browser ask.
    let (status, body) = v
        .send(
            "GET",
            "/portal/v1/catalogue",
            &[("sec-fetch-site", "cross-site")],
            "",
        )
        .await;
    assert_eq!((status, problem_type(&body)), (403, "forbidden"), "{body}");

    // The admin's key signs in, with the admin's certificate.
    let (status, session) = v.sign_in_by_key(&admin, &admin_cert).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["role"], "admin");
    assert_eq!(session["via"], "key");
    assert!(v.cookie.starts_with("medledger_session="));
    let (status, overview) = v.send("GET", "/portal/v1/overview", &[], "").await;
    assert_eq!(status, 200, "{overview}");
    assert!(overview["chain"]["height"].as_u64().unwrap() > 0);

    // Off-chain changes must be signed by the signed-in account.
    let prefs = r#"{"mode":"all","day_start":0,"day_end":0,"max_reads_per_hour":10}"#;
    let (status, body) = v.send("PUT", "/v1/alerts/preferences", &[], prefs).await;
    assert_eq!(
        (status, problem_type(&body)),
        (403, "bad-request-signature"),
        "{body}"
    );
    assert_eq!(
        body["title"],
        "The request is not signed by the signed-in account's chain key"
    );
    let signed = |key, nonce: &str, portal_named: &str| {
        let at = medledger_protocol::now_ms().to_string();
        let text = format!(
            "medledger portal request\nportal: {portal_named}\nnonce: {nonce}\nPUT /v1/alerts/preferences\n{at}\n{prefs}"
        );
        (at, nonce.to_owned(), sign(key, text.as_bytes()))
    };
    let headers = |(at, nonce, signature): &(String, String, String)| {
        vec![
            ("x-medledger-signed-at", at.clone()),
            ("x-medledger-nonce", nonce.clone()),
            ("x-medledger-signature", signature.clone()),
        ]
    };
    let put = async |v: &mut Visitor, h: Vec<(&'static str, String)>| {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        v.send("PUT", "/v1/alerts/preferences", &h, prefs).await
    };
    let (status, body) = put(
        &mut v,
        headers(&signed(&stranger, "nonce-of-the-stranger-1", &portal)),
    )
    .await;
    assert_eq!(
        (status, problem_type(&body)),
        (403, "bad-request-signature"),
        "{body}"
    );
    // Signed for another portal: refused here.
    let (status, body) = put(
        &mut v,
        headers(&signed(
            &admin,
            "nonce-for-elsewhere-1",
            "elsewhere.example",
        )),
    )
    .await;
    assert_eq!(
        (status, problem_type(&body)),
        (403, "bad-request-signature"),
        "{body}"
    );
    // Signed by the admin, it reaches the endpoint, which is the patient's.
    let by_admin = signed(&admin, "0123456789abcdef-first", &portal);
    let (status, body) = put(&mut v, headers(&by_admin)).await;
    assert_eq!((status, problem_type(&body)), (403, "wrong-role"), "{body}");
    // The very same request again: taken once only.
    let (status, body) = put(&mut v, headers(&by_admin)).await;
    assert_eq!(
        (status, problem_type(&body)),
        (409, "replayed-request"),
        "{body}"
    );

    // The portal relays only the signed-in account's own transactions,
    // and only to medledger's contracts.
    let relay = |raw: String| serde_json::json!({ "raw": raw }).to_string();
    let (status, body) = v
        .send(
            "POST",
            "/portal/v1/transactions",
            &[],
            &relay(signed_tx(&stranger, registry)),
        )
        .await;
    assert_eq!(
        (status, problem_type(&body)),
        (403, "bad-request-signature"),
        "{body}"
    );
    let (status, body) = v
        .send(
            "POST",
            "/portal/v1/transactions",
            &[],
            &relay(signed_tx(&admin, stranger.address())),
        )
        .await;
    assert_eq!((status, problem_type(&body)), (403, "forbidden"), "{body}");
    // What the contract would refuse is named before anything is signed.
    let (status, body) = v
        .send(
            "POST",
            "/portal/v1/prepare",
            &[],
            r#"{"action":"close_review","id":7,"outcome":"ok"}"#,
        )
        .await;
    assert_eq!(
        (status, problem_type(&body)),
        (422, "contract-refused"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("UnknownRequest"),
        "{body}"
    );

    // Signed out, the cookie is worth nothing.
    let (status, _) = v.send("DELETE", "/portal/v1/session", &[], "").await;
    assert_eq!(status, 204);
    let (status, _) = v.send("GET", "/portal/v1/overview", &[], "").await;
    assert_eq!(status, 401);

    // A flood of challenges from one address is cut short (429 with
    // Retry-After) and evicts nothing: challenges hold no state, so the
    // first one given is still good.
    let first = v.challenge().await;
    let mut flooder = Visitor::open(&root, &portal, None).await;
    let mut limited = 0;
    for _ in 0..200 {
        let reply = flooder
            .conn
            .request("POST", "/portal/v1/challenge", &[], b"{}".to_vec())
            .await
            .unwrap();
        if reply.status == 429 {
            assert!(reply.header("retry-after").is_some());
            limited += 1;
        }
    }
    assert!(
        limited > 100,
        "only {limited} of 200 challenges were limited"
    );
    let answer = serde_json::json!({
        "message": first,
        "signature": sign(&admin, first.as_bytes()),
        "certificate": admin_cert,
    });
    let (status, session) = v
        .send("POST", "/portal/v1/session", &[], &answer.to_string())
        .await;
    assert_eq!(status, 200, "{session}");
    // An account has at most 16 sessions: a 17th ends the oldest.
    let mut newest = Vec::new();
    for _ in 0..16 {
        let mut other = Visitor::open(&root, &portal, None).await;
        assert_eq!(other.sign_in_by_key(&admin, &admin_cert).await.0, 200);
        newest.push(other);
    }
    let (status, _) = v.send("GET", "/portal/v1/session", &[], "").await;
    assert_eq!(status, 401, "the oldest of 17 sessions still lives");
    let last = newest.pop().unwrap();

    // A client certificate signs in by itself.
    let mut with_cert = Visitor::open(&root, &portal, Some(&data.join("people/admin"))).await;
    let (status, session) = with_cert.send("GET", "/portal/v1/session", &[], "").await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["via"], "certificate");
    assert_eq!(session["account"], admin.address().to_string());

    // After a restart, a session goes on (sessions are in SQL), and the
    // signed request is still taken (so are nonces).
    stop(child);
    let (child, _) = up_with_portal(&data, ports, &portal);
    let mut v = Visitor::open(&root, &portal, None).await;
    v.cookie = last.cookie.clone();
    let (status, session) = v.send("GET", "/portal/v1/session", &[], "").await;
    assert_eq!(status, 200, "a session ended with the restart: {session}");
    assert_eq!(session["via"], "key");
    let (status, body) = put(&mut v, headers(&by_admin)).await;
    assert_eq!(
        (status, problem_type(&body)),
        (409, "replayed-request"),
        "{body}"
    );
    stop(child);
}

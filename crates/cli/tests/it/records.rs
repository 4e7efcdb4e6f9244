//! Staff reading records: only with a usable access request of their own,
//! within its scope, as FHIR Observations with ledger proofs; every
//! attempt recorded in the patient's ledger.

use crate::site::{body, call, medledger, post_one};
use base64::Engine;
use medledger_contracts::{Scope, send};
use medledger_patient_ledger::{Entry, Field, NoteVerifier, leaf_hash, verify_inclusion};
use medledger_pki::Role;
use medledger_pki::https::{Connection, Reply};
use medledger_protocol::test_utils::assert_valid_fhir;
use medledger_sim::{Hospital, Staff};
use serde_json::json;

pub(crate) async fn read(site: &Hospital, who: &Staff, request: u64) -> Reply {
    let mut conn: Connection = site
        .open(
            &who.credentials(),
            Role::Server,
            &site.server.addr().to_string(),
        )
        .await
        .unwrap();
    conn.request(
        "GET",
        &format!("/v1/records?request={request}"),
        &[],
        vec![],
    )
    .await
    .unwrap()
}

fn extension<'a>(list: &'a serde_json::Value, url: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == url)
        .unwrap_or_else(|| panic!("no extension {url} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_read_records_only_with_a_usable_request_of_their_own() {
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    for bpm in [71.0, 72.0] {
        assert_eq!(
            post_one(&mut conn, device.heart_rate(bpm), true)
                .await
                .status,
            202
        );
    }
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let doctor = site.staff(Role::Doctor, false).await.unwrap();

    // The assigned nurse asks and reads: two heart rates, each proven.
    let granted = nurse
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "TREAT")
        .await
        .unwrap();
    assert!(granted.granted());
    let reply = read(&site, &nurse, granted.id).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some("application/fhir+json"));
    let bundle = body(&reply);
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_valid_fhir(&bundle);
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let meta = &bundle["meta"]["extension"];
    let verifier = NoteVerifier::new(
        extension(meta, medledger_server::records::KEY_EXTENSION)["valueString"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let checkpoint = verifier
        .verify(
            extension(meta, medledger_server::records::CHECKPOINT_EXTENSION)["valueString"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    for (i, e) in entries.iter().enumerate() {
        let obs = &e["resource"];
        assert_eq!(obs["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(obs["valueQuantity"]["value"], [71.0, 72.0][i]);
        let proof = extension(
            &obs["extension"],
            medledger_server::records::PROOF_EXTENSION,
        );
        let parts = &proof["extension"];
        let index = extension(parts, "index")["valueUnsignedInt"]
            .as_u64()
            .unwrap();
        let stored = base64::engine::general_purpose::STANDARD
            .decode(
                extension(parts, "entry")["valueBase64Binary"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let path: Vec<[u8; 32]> = extension(parts, "path")["valueString"]
            .as_str()
            .unwrap()
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| hex::decode(h).unwrap().try_into().unwrap())
            .collect();
        verify_inclusion(
            &leaf_hash(&stored),
            index,
            checkpoint.size,
            &path,
            &checkpoint.root,
        )
        .unwrap();
        // The entry records this very reading.
        let entry = Entry::open(&stored, &verifier).unwrap();
        let id = obs["identifier"][0]["value"].as_str().unwrap();
        let hash = hex::decode(id.split('#').next().unwrap()).unwrap();
        assert_eq!(entry.body["reading"], Field::Bytes(hash));
    }

    // The nurse may also see a reading's proof, with the request.
    let first = entries[0]["resource"]["identifier"][0]["value"]
        .as_str()
        .unwrap();
    let hash = first.split('#').next().unwrap();
    let mut conn = site
        .open(
            &nurse.credentials(),
            Role::Server,
            &site.server.addr().to_string(),
        )
        .await
        .unwrap();
    for (path, status) in [
        (format!("/v1/readings/{hash}/proof"), 403),
        (
            format!("/v1/readings/{hash}/proof?request={}", granted.id),
            200,
        ),
    ] {
        let reply = conn.request("GET", &path, &[], vec![]).await.unwrap();
        assert_eq!(reply.status, status, "{path}");
    }

    // The nurse annotates the first reading on chain; only they can give
    // its text, and only the text that hashes to it.
    let text = "Taken after exercise.";
    let annotation = nurse
        .contracts
        .annotate(
            granted.id,
            hash.parse().unwrap(),
            false,
            medledger_protocol::reading_hash(text.as_bytes()).into(),
        )
        .await
        .unwrap();
    let give = |who: &Staff, text: &str| {
        let body = serde_json::json!({ "annotation": annotation, "text": text });
        let who = who.credentials();
        let site = &site;
        async move {
            let mut conn = site
                .open(&who, Role::Server, &site.server.addr().to_string())
                .await
                .unwrap();
            conn.request(
                "POST",
                "/v1/annotations",
                &[("content-type", "application/json")],
                body.to_string().into_bytes(),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(give(&doctor, text).await.status, 403);
    let wrong = give(&nurse, "Taken at rest.").await;
    assert_eq!(wrong.status, 400);
    assert!(
        body(&wrong)["detail"]
            .as_str()
            .unwrap()
            .contains("contentHash")
    );
    assert_eq!(give(&nurse, text).await.status, 200);
    let notes = &body(&read(&site, &nurse, granted.id).await)["entry"][0]["resource"]["note"];
    assert_eq!(notes[0]["text"], text, "{notes}");
    assert_eq!(
        notes[0]["extension"][0]["valueCode"], "annotation",
        "{notes}"
    );

    // The scope is the request's: SpO2 only gives nothing here.
    let spo2 = nurse
        .contracts
        .request_access(site.patient_ref, "spo2".parse().unwrap(), "TREAT")
        .await
        .unwrap();
    let reply = read(&site, &nurse, spo2.id).await;
    assert_eq!(reply.status, 200);
    assert!(body(&reply)["entry"].as_array().unwrap().is_empty());

    // A doctor who is not a carer, without consent: denied on chain, and
    // refused here.
    let denied = doctor
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "HOPERAT")
        .await
        .unwrap();
    assert!(!denied.granted());
    let reply = read(&site, &doctor, denied.id).await;
    assert_eq!(reply.status, 403);
    assert!(body(&reply)["detail"].as_str().unwrap().contains("denied"));
    // Nor may they use the nurse's request.
    let reply = read(&site, &doctor, granted.id).await;
    assert_eq!(reply.status, 403);
    assert!(
        body(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("was made by")
    );
    // An unknown request.
    assert_eq!(read(&site, &nurse, 999).await.status, 404);

    // Released from the patient's care: the nurse's next read is refused.
    send(
        site.admin
            .registry()
            .releaseCarer(site.patient_ref, nurse.address),
    )
    .await
    .unwrap();
    let reply = read(&site, &nurse, granted.id).await;
    assert_eq!(reply.status, 403);
    assert!(
        body(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("no longer holds")
    );

    // Every attempt is in the patient's ledger: 2 served, 3 refused.
    let ledger = site.server.ledger();
    let verifier = NoteVerifier::new(&ledger.verifier_key()).unwrap();
    let mut outcomes = Vec::new();
    for stored in ledger.entries(&site.patient_ref.0).await.unwrap() {
        let entry = Entry::open(&stored, &verifier).unwrap();
        if entry.kind == "AccessEvent" {
            let Field::Text(outcome) = &entry.body["outcome"] else {
                panic!("outcome is text")
            };
            outcomes.push(outcome.clone());
        }
    }
    assert_eq!(
        outcomes,
        [
            "served", "served", "served", "refused", "refused", "refused"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_command_line_a_patient_consents_and_a_doctor_reads() {
    // The patient's webhook goes to a local port the admin allows.
    let site = crate::site::Site::start(medledger_sim::Options {
        webhook_allow: vec!["127.0.0.1:9".parse().unwrap()],
        ..medledger_sim::Options::default()
    })
    .await
    .unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    assert_eq!(
        post_one(&mut conn, device.heart_rate(72.0), true)
            .await
            .status,
        202
    );
    let doctor = site.staff(Role::Doctor, false).await.unwrap();

    // The chain over HTTP, and everyone's files as `medledger ca issue` writes them.
    let rpc_url = crate::site::serve_rpc(&site).await;
    let etc = site.dir.path().join("people");
    std::fs::create_dir_all(&etc).unwrap();
    doctor.issued.write(&etc.join("doctor")).unwrap();
    site.card.write(&etc.join("patient")).unwrap();
    let registry = site.admin.addresses().registry.to_string();
    let patient = site.patient_ref.to_string();
    let chain = |key: &str| {
        vec![
            "--rpc".to_owned(),
            rpc_url.clone(),
            "--registry".to_owned(),
            registry.clone(),
            "--key".to_owned(),
            etc.join(format!("{key}.eth.key")).display().to_string(),
            "--json".to_owned(),
        ]
    };
    let run = |mut args: Vec<String>, who: &str| {
        args.extend(chain(who));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        medledger(&refs)
    };

    // Without consent the doctor, no carer, is denied.
    let (ok, out, err) = run(
        vec![
            "access".into(),
            "request".into(),
            "--patient".into(),
            patient.clone(),
            "--purpose".into(),
            "CAREMGT".into(),
        ],
        "doctor",
    );
    assert!(ok, "{err}");
    let denied: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(denied["reason"], "no-consent", "{denied}");

    // The patient grants every doctor heart rate for review; then it works.
    let (ok, out, err) = run(
        vec![
            "consent".into(),
            "grant".into(),
            "--patient".into(),
            patient.clone(),
            "--role".into(),
            "doctor".into(),
            "--scope".into(),
            "heart-rate".into(),
            "--purpose".into(),
            "CAREMGT".into(),
            "--days".into(),
            "1".into(),
        ],
        "patient",
    );
    assert!(ok, "{err}");
    let grant: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (ok, out, _) = run(
        vec![
            "consent".into(),
            "list".into(),
            "--patient".into(),
            patient.clone(),
        ],
        "patient",
    );
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["count"], 1);
    assert_eq!(list["grants"][0]["grantee"], "doctor");

    let (ok, out, err) = run(
        vec![
            "access".into(),
            "request".into(),
            "--patient".into(),
            patient.clone(),
            "--scope".into(),
            "heart-rate".into(),
            "--purpose".into(),
            "CAREMGT".into(),
        ],
        "doctor",
    );
    assert!(ok, "{err}");
    let granted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(granted["basis"], "consent", "{granted}");
    let request = granted["request"].to_string();

    let bundle_file = etc.join("bundle.json");
    let records = |request: &str| {
        medledger(&[
            "records",
            "get",
            "--request",
            request,
            "--server",
            &site.server.addr().to_string(),
            "--cert",
            &etc.join("doctor").display().to_string(),
            "--ca-root",
            &site.ca.dir().join("root.crt").display().to_string(),
            "--out",
            &bundle_file.display().to_string(),
        ])
    };
    let (ok, _, err) = records(&request);
    assert!(ok, "{err}");
    assert!(
        err.contains("1 observation(s); every ledger proof checked"),
        "{err}"
    );
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle_file).unwrap()).unwrap();
    assert_eq!(
        bundle["entry"][0]["resource"]["valueQuantity"]["value"],
        72.0
    );

    // The doctor annotates the reading; the next read carries the note.
    let reading = bundle["entry"][0]["resource"]["identifier"][0]["value"]
        .as_str()
        .unwrap()
        .split('#')
        .next()
        .unwrap()
        .to_owned();
    let (ok, out, err) = run(
        vec![
            "annotate".into(),
            "--request".into(),
            request.clone(),
            "--reading".into(),
            reading.clone(),
            "--text".into(),
            "Rate confirmed by palpation.".into(),
            "--server".into(),
            site.server.addr().to_string(),
            "--cert".into(),
            etc.join("doctor").display().to_string(),
            "--ca-root".into(),
            site.ca.dir().join("root.crt").display().to_string(),
        ],
        "doctor",
    );
    assert!(ok, "{err}");
    let stored: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (stored["stored"].as_bool(), stored["reading"].as_str()),
        (Some(true), Some(reading.as_str()))
    );
    let (ok, _, err) = records(&request);
    assert!(ok, "{err}");
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle_file).unwrap()).unwrap();
    assert_valid_fhir(&bundle);
    let note = &bundle["entry"][0]["resource"]["note"][0];
    assert_eq!(note["text"], "Rate confirmed by palpation.", "{bundle}");
    assert_eq!(
        note["authorReference"]["identifier"]["value"]
            .as_str()
            .unwrap(),
        doctor.address.to_string().to_lowercase()
    );

    // Revoked: the next read is refused, with the reason.
    let (ok, _, err) = run(
        vec![
            "consent".into(),
            "revoke".into(),
            "--patient".into(),
            patient.clone(),
            "--id".into(),
            grant["grant"].to_string(),
        ],
        "patient",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = records(&request);
    assert!(!ok);
    assert!(
        err.contains("refused (403)") && err.contains("no longer holds"),
        "{err}"
    );

    // The patient reads it all in their alerts.
    let alerts = || {
        medledger(&[
            "alerts",
            "list",
            "--json",
            "--server",
            &site.server.addr().to_string(),
            "--cert",
            &etc.join("patient").display().to_string(),
            "--ca-root",
            &site.ca.dir().join("root.crt").display().to_string(),
        ])
    };
    let want = [
        "access-denied",
        "consent-changed",
        "access-granted",
        "record-read",
        "record-refused",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, out, err) = alerts();
        assert!(ok, "{err}");
        let kinds: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        if want.iter().all(|k| kinds.iter().any(|x| x == k)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alerts so far: {kinds:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // And chooses to hear only of the unusual, with usual hours.
    let (ok, out, err) = medledger(&[
        "alerts",
        "prefs",
        "--mode",
        "unusual",
        "--hours",
        "7-19",
        "--server",
        &site.server.addr().to_string(),
        "--cert",
        &etc.join("patient").display().to_string(),
        "--ca-root",
        &site.ca.dir().join("root.crt").display().to_string(),
    ]);
    assert!(ok, "{err}");
    let prefs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            prefs["mode"].as_str(),
            prefs["day_start"].as_u64(),
            prefs["day_end"].as_u64()
        ),
        (Some("unusual"), Some(7), Some(19))
    );

    // A webhook: set, shown, removed.
    let secret = etc.join("webhook.secret");
    std::fs::write(&secret, "a-secret-of-sixteen-or-more\n").unwrap();
    let patient_tls = [
        "--server".to_owned(),
        site.server.addr().to_string(),
        "--cert".to_owned(),
        etc.join("patient").display().to_string(),
        "--ca-root".to_owned(),
        site.ca.dir().join("root.crt").display().to_string(),
    ];
    let hook = |extra: &[&str]| {
        let mut args = vec!["alerts", "webhook"];
        args.extend(extra);
        args.extend(patient_tls.iter().map(String::as_str));
        let (ok, out, err) = medledger(&args);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["url"].clone()
    };
    let url = "https://127.0.0.1:9/alerts";
    let secret = secret.display().to_string();
    // Only https://, and not to an internal address unless the admin
    // allows it (this site allows 127.0.0.1:9, where nothing listens).
    let mut args = vec!["alerts", "webhook", "--secret-file", &secret, "--url"];
    args.extend(patient_tls.iter().map(String::as_str));
    for (refused, why) in [
        (
            "http://127.0.0.1:9/alerts",
            "must be an https:// URL, not http://",
        ),
        (
            "https://127.0.0.1:10/alerts",
            "127.0.0.1 is a loopback address",
        ),
    ] {
        args.insert(5, refused);
        let (ok, _, err) = medledger(&args);
        assert!(!ok && err.contains(why), "{refused}: {err}");
        args.remove(5);
    }
    assert_eq!(hook(&["--url", url, "--secret-file", &secret]), url);
    assert_eq!(hook(&[]), url);
    assert_eq!(hook(&["--remove"]), serde_json::Value::Null);

    // The patient checks their ledger against the checkpoints anchored on
    // chain, once the consent changes are in it and it is anchored.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let report = loop {
        let (ok, out, err) = medledger(&[
            "verify",
            "--patient",
            &patient,
            "--json",
            "--rpc",
            &rpc_url,
            "--registry",
            &registry,
            "--key",
            &site.server.ledger().verifier_key(),
            "--server",
            &site.server.addr().to_string(),
            "--cert",
            &etc.join("patient").display().to_string(),
            "--ca-root",
            &site.ca.dir().join("root.crt").display().to_string(),
        ]);
        assert!(ok, "{err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let kinds = report["kinds"].as_array().unwrap();
        let consent_changes = kinds.iter().filter(|k| *k == "ConsentChanged").count();
        let latest = report["anchors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["size"].as_u64().unwrap())
            .max();
        let annotations = kinds.iter().filter(|k| *k == "Annotation").count();
        if consent_changes == 2 && annotations == 1 && latest == report["size"].as_u64() {
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not yet consistent: {report}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(report["verified"], true);
    let kinds: Vec<&str> = report["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "DataRecorded");
    assert_eq!(kinds.iter().filter(|k| **k == "AccessEvent").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "Annotation").count(), 1);
    assert!(
        report["anchors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["checked"] == true),
        "{report}"
    );

    // A patient's certificate reads only its own ledger.
    let (ok, _, err) = medledger(&[
        "verify",
        "--patient",
        &format!("0x{}", "ab".repeat(32)),
        "--rpc",
        &rpc_url,
        "--registry",
        &registry,
        "--server",
        &site.server.addr().to_string(),
        "--cert",
        &etc.join("patient").display().to_string(),
        "--ca-root",
        &site.ca.dir().join("root.crt").display().to_string(),
    ]);
    assert!(!ok);
    assert!(err.contains("not 0xabab"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_reviewed_and_the_history_audited_from_the_command_line() {
    let site = crate::site::start().await;
    let doctor = site.staff(Role::Doctor, false).await.unwrap();
    let rpc_url = crate::site::serve_rpc(&site).await;
    let etc = site.dir.path().join("people");
    std::fs::create_dir_all(&etc).unwrap();
    doctor.issued.write(&etc.join("doctor")).unwrap();
    medledger_pki::files::write_secret(
        &etc.join("admin.eth.key"),
        format!("0x{}", hex::encode(site.admin_signer.to_bytes())).as_bytes(),
    )
    .unwrap();
    let registry = site.admin.addresses().registry.to_string();
    let patient = site.patient_ref.to_string();
    let run = |args: &[&str], who: &str| {
        let key = etc.join(format!("{who}.eth.key")).display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--rpc",
            &rpc_url,
            "--registry",
            &registry,
            "--key",
            &key,
            "--json",
        ]);
        let (ok, out, err) = medledger(&all);
        assert!(ok, "{all:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };

    // The reason stays off chain: the chain holds its SHA-256, the server
    // the text, sealed for the patient and the admins who review.
    let auditor = site.admin_person().await.unwrap();
    auditor.issued.write(&etc.join("auditor")).unwrap();
    let server = site.server.addr().to_string();
    let root = site.ca.dir().join("root.crt").display().to_string();
    let cert = |who: &str| etc.join(who).display().to_string();
    let reason = "cardiac arrest in the corridor, unconscious";
    let glass = run(
        &[
            "access",
            "break-glass",
            "--patient",
            &patient,
            "--reason",
            reason,
            "--server",
            &server,
            "--cert",
            &cert("doctor"),
            "--ca-root",
            &root,
        ],
        "doctor",
    );
    assert_eq!(glass["basis"], "emergency", "{glass}");
    let pending = run(
        &[
            "review",
            "list",
            "--server",
            &server,
            "--cert",
            &cert("auditor"),
            "--ca-root",
            &root,
        ],
        "auditor",
    );
    assert_eq!(pending["count"], 1);
    assert_eq!(pending["pending"][0]["justification"], reason, "{pending}");
    assert_eq!(
        pending["pending"][0]["justification_sha256"],
        format!(
            "0x{}",
            hex::encode(medledger_protocol::reading_hash(reason.as_bytes()))
        )
    );
    let id = pending["pending"][0]["request"]
        .as_str()
        .unwrap()
        .to_owned();
    // Given again (as after a server that could not be reached): taken,
    // nothing changes.
    let again = run(
        &[
            "access",
            "break-glass",
            "--id",
            &id,
            "--reason",
            reason,
            "--server",
            &server,
            "--cert",
            &cert("doctor"),
            "--ca-root",
            &root,
        ],
        "doctor",
    );
    assert_eq!(again["stored"], true, "{again}");
    run(
        &["review", "close", "--id", &id, "--outcome", "justified"],
        "admin",
    );
    assert_eq!(run(&["review", "list"], "admin")["count"], 0);

    let audit = run(&["audit", "--patient", &patient], "admin");
    let names: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["AccessGranted", "BreakGlass"], "{audit}");
    assert!(audit["events"][1]["tx"].as_str().unwrap().starts_with("0x"));

    // The doctor reads under break-glass; an admin exports the reads as
    // FHIR AuditEvents. A doctor may not.
    let request: u64 = id.parse().unwrap();
    assert_eq!(read(&site, &doctor, request).await.status, 200);
    let fhir = etc.join("audit.json");
    let export = |who: &str| {
        medledger(&[
            "audit",
            "--patient",
            &patient,
            "--rpc",
            &rpc_url,
            "--registry",
            &registry,
            "--fhir",
            &fhir.display().to_string(),
            "--server",
            &site.server.addr().to_string(),
            "--cert",
            &etc.join(who).display().to_string(),
            "--ca-root",
            &site.ca.dir().join("root.crt").display().to_string(),
        ])
    };
    let (ok, _, err) = export("auditor");
    assert!(ok, "{err}");
    assert!(err.contains("1 AuditEvent(s) written"), "{err}");
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fhir).unwrap()).unwrap();
    assert_valid_fhir(&bundle);
    let event = &bundle["entry"][0]["resource"];
    assert_eq!(event["resourceType"], "AuditEvent");
    assert_eq!(event["outcome"], "0");
    assert_eq!(event["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
    assert_eq!(
        event["agent"][0]["who"]["identifier"]["value"],
        doctor.address.to_string()
    );
    assert_eq!(event["entity"][1]["what"]["identifier"]["value"], id);
    let (ok, _, err) = export("doctor");
    assert!(!ok);
    assert!(err.contains("refused (403)"), "{err}");
}

/// A break-glass reason goes to the server only as the chain names it (its
/// SHA-256), only from the doctor who broke the glass; the patient and the
/// admins read it back, nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_justification_is_kept_only_as_hashed_on_chain_and_read_by_the_patient() {
    let site = crate::site::start().await;
    let doctor = site.staff(Role::Doctor, false).await.unwrap();
    let other = site.staff(Role::Doctor, false).await.unwrap();
    let reason = "unconscious, known epileptic";
    let d = doctor
        .contracts
        .break_glass(site.patient_ref, Scope::ALL, reason)
        .await
        .unwrap();
    assert!(d.granted());
    let post = |who: &Staff, text: &str| {
        let (who, body) = (who.credentials(), json!({ "request": d.id, "text": text }));
        let site = &site;
        async move { call(site, &who, "POST", "/v1/justifications", Some(body)).await }
    };
    // Another text than the one hashed on chain, or another doctor: no.
    let wrong = post(&doctor, "something else").await;
    assert_eq!(wrong.status, 400, "{}", body(&wrong));
    assert!(
        body(&wrong)["detail"]
            .as_str()
            .unwrap()
            .contains("justification hash")
    );
    let theirs = post(&other, reason).await;
    assert_eq!(theirs.status, 403, "{}", body(&theirs));
    // A request the chain does not know: not found, not the chain's fault.
    let unknown = json!({ "request": d.id + 1000, "text": reason });
    let unknown = call(
        &site,
        &doctor.credentials(),
        "POST",
        "/v1/justifications",
        Some(unknown),
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", body(&unknown));
    assert_eq!(post(&doctor, reason).await.status, 200);
    // Read back by the patient; not by a doctor.
    let path = format!("/v1/justifications?request={}", d.id);
    let card = medledger_pki::Credentials::from_issued(&site.card);
    let read = call(&site, &card, "GET", &path, None).await;
    assert_eq!(read.status, 200, "{}", body(&read));
    assert_eq!(body(&read)["text"], reason);
    let refused = call(&site, &other.credentials(), "GET", &path, None).await;
    assert_eq!(refused.status, 403);
}

/// People shown as people: the directory takes each person's name from
/// their certificate (never from the chain, never put there), admins set or
/// correct it, patients' names stay between them and the admins, and reads
/// are announced and audited by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_are_shown_by_name_from_the_directory_and_a_patient_is_forgotten_with_theirs() {
    let site = crate::site::start_with_a_reading().await;
    let nurse = site
        .staff_named(
            Role::Nurse,
            "cardiology",
            Some("Nurse Mary Seacole"),
            &[site.patient_ref],
        )
        .await
        .unwrap();
    let doctor = site.staff(Role::Doctor, false).await.unwrap();
    let admin = site.admin_person().await.unwrap();
    let card = medledger_pki::Credentials::from_issued(&site.card);
    let (as_nurse, as_doctor, as_admin) = (
        nurse.credentials(),
        doctor.credentials(),
        admin.credentials(),
    );
    let site = &site;
    let get = |who, path| async move { body(&call(site, who, "GET", path, None).await) };
    let name = |who, account, name: &str| {
        let body = json!({ "name": name, "role": "nurse" });
        let path = format!("/v1/directory/{account}");
        async move { call(site, who, "PUT", &path, Some(body)).await }
    };
    let nurse_key = nurse.address.to_string();
    let patient_account = site.card.account.as_ref().unwrap().address().to_string();

    // The nurse reads: her name comes from her certificate.
    let granted = nurse
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "TREAT")
        .await
        .unwrap();
    assert_eq!(read(site, &nurse, granted.id).await.status, 200);
    let names = get(&as_doctor, "/v1/directory").await;
    assert_eq!(names["names"][&nurse_key], "Nurse Mary Seacole", "{names}");
    // The patient's alert and audit trail name her.
    let alerts = get(&card, "/v1/alerts").await;
    let read_alert = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "record-read")
        .unwrap_or_else(|| panic!("no record-read alert in {alerts}"));
    assert!(
        read_alert["why"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Nurse Mary Seacole ({nurse_key}) read")),
        "{read_alert}"
    );
    let audit = get(&card, "/v1/audit").await;
    assert_eq!(
        audit["entry"][0]["resource"]["agent"][0]["who"]["display"],
        "Nurse Mary Seacole"
    );
    assert_valid_fhir(&audit);

    // An admin names the patient and corrects the nurse; a certificate
    // never overrides an admin. A doctor does not see the patient's name,
    // the patient does.
    let patient_name = json!({ "name": "Grace Hopper", "role": "patient" });
    let path = format!("/v1/directory/{patient_account}");
    let named = call(site, &as_admin, "PUT", &path, Some(patient_name)).await;
    assert_eq!(named.status, 200, "{}", body(&named));
    assert_eq!(
        name(&as_admin, &nurse_key, "Mary Seacole, RN").await.status,
        200
    );
    assert_eq!(read(site, &nurse, granted.id).await.status, 200);
    let seen_by_doctor = get(&as_doctor, "/v1/directory").await;
    assert_eq!(seen_by_doctor["names"][&nurse_key], "Mary Seacole, RN");
    assert!(
        seen_by_doctor["names"].get(&patient_account).is_none(),
        "{seen_by_doctor}"
    );
    let seen_by_patient = get(&card, "/v1/directory").await;
    assert_eq!(seen_by_patient["names"][&patient_account], "Grace Hopper");
    // Only admins name people, and a name is a name.
    let refused = name(&as_doctor, &nurse_key, "x").await;
    assert_eq!(refused.status, 403, "{}", body(&refused));
    let refused = name(&as_nurse, &nurse_key, "x").await;
    assert_eq!(refused.status, 403, "{}", body(&refused));
    let bad = name(&as_admin, &nurse_key, "a\u{7}bell").await;
    assert_eq!(bad.status, 400, "{}", body(&bad));

    // Erased, the patient's name goes with them.
    let path = format!("/v1/patients/{}", hex::encode(site.patient_ref));
    let erased = call(site, &as_admin, "DELETE", &path, None).await;
    assert_eq!(erased.status, 200, "{}", body(&erased));
    let after = get(&as_admin, "/v1/directory").await;
    assert!(after["names"].get(&patient_account).is_none(), "{after}");
    assert_eq!(after["names"][&nurse_key], "Mary Seacole, RN");
}

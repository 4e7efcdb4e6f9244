//! The FHIR REST API (`/fhir/r4/`) read by a FHIR client library no one
//! here wrote: fhirclient (SMART on FHIR's Python client, from PyPI), over
//! mutual TLS, parsing every resource into its models. Each answer is also
//! checked by the FHIR validator.

use crate::site::post_one;
use medledger_contracts::{Grantee, Scope, StaffRole};
use medledger_pki::Role;
use medledger_protocol::Observation;
use medledger_protocol::catalogue::data_type;
use medledger_protocol::test_utils::assert_valid_fhir;
use medledger_sim::{Hospital, now_ms};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Python with fhirclient (`pip install fhirclient`, as `.ci/run` does), or
/// `None` after saying loudly that the test is skipped.
fn python_with_fhirclient() -> Option<&'static str> {
    let found = Command::new("python3")
        .args(["-c", "import fhirclient, requests"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = "python3 with fhirclient not found: the FHIR client test is skipped; \
                       `pip install fhirclient`";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!! SKIPPED: {message}\n");
        return None;
    }
    Some("python3")
}

/// Runs the client as `who` (the files `PREFIX.crt` and `PREFIX.key`).
fn client(python: &str, site: &Hospital, who: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fhir_client/read.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("https://{}/fhir/r4/", site.server.addr()))
        .arg(site.ca.dir().join("root.crt"))
        .arg(who.with_extension("crt"))
        .arg(who.with_extension("key"))
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the FHIR client failed: {said}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The same request with our own HTTPS client, for the validator.
async fn fetch(
    site: &Hospital,
    who: &medledger_pki::Credentials,
    path: &str,
    request: u64,
) -> Value {
    let mut conn = site
        .open(who, Role::Server, &site.server.addr().to_string())
        .await
        .unwrap();
    let header = request.to_string();
    let reply = conn
        .request(
            "GET",
            path,
            &[("x-access-request", header.as_str())],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some("application/fhir+json"));
    serde_json::from_slice(&reply.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_client_searches_pages_and_reads_with_an_access_request_each_read_recorded() {
    let Some(python) = python_with_fhirclient() else {
        return;
    };
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let (hr, spo2) = (data_type("8867-4").unwrap(), data_type("59408-5").unwrap());
    for (bpm, saturation) in [(71.0, 97.0), (72.0, 98.0)] {
        let reading = device.reading(vec![
            Observation::scalar(hr, bpm),
            Observation::scalar(spo2, saturation),
        ]);
        assert_eq!(post_one(&mut conn, reading, true).await.status, 202);
    }
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let doctor = site.staff(Role::Doctor, false).await.unwrap();
    let request = nurse
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "TREAT")
        .await
        .unwrap();
    assert!(request.granted());
    let patient = hex::encode(site.patient_ref);
    site.patient_contracts()
        .unwrap()
        .grant_consent(
            site.patient_ref,
            Grantee::Role(StaffRole::Doctor),
            Scope::of([hr]),
            "CAREMGT",
            now_ms() / 1000 + 86_400,
        )
        .await
        .unwrap();
    let etc = site.dir.path().join("people");
    nurse.issued.write(&etc.join("nurse")).unwrap();
    doctor.issued.write(&etc.join("doctor")).unwrap();
    site.card.write(&etc.join("patient")).unwrap();

    // The nurse's client: the capability statement, a search paged three
    // at a time, a search by code, a read by id, a miss, the device.
    let id = request.id.to_string();
    let read = client(
        python,
        &site,
        &etc.join("nurse"),
        &["observations", &id, &patient],
    );
    assert_eq!(read["fhirVersion"], "4.0.1");
    assert_eq!(
        read["resources"],
        serde_json::json!(["Observation", "AuditEvent", "Consent", "Device"])
    );
    assert_eq!(read["pages"], serde_json::json!([3, 1]), "{read}");
    assert_eq!(read["totals"], serde_json::json!([4, 4]));
    let observations = read["observations"].as_array().unwrap();
    let values: Vec<f64> = observations
        .iter()
        .map(|o| o["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [71.0, 97.0, 72.0, 98.0]);
    assert_eq!(
        observations[1]["codes"],
        serde_json::json!(["59408-5", "2708-6"])
    );
    assert_eq!(
        observations[1]["profile"],
        serde_json::json!(["http://hl7.org/fhir/StructureDefinition/oxygensat"])
    );
    assert_eq!(observations[0]["unit"], "/min");
    let urn = observations[0]["device"].as_str().unwrap();
    assert!(urn.starts_with("urn:epc:id:sgtin:"), "{urn}");
    assert_eq!(read["heart_rates"], serde_json::json!([71.0, 72.0]));
    assert_eq!(read["read"]["id"], observations[0]["id"]);
    assert_eq!(read["read"]["value"], 71.0);
    assert_eq!(read["missing"], "not-found");
    assert_eq!(read["device"]["id"], device.epc.to_hex().to_lowercase());
    assert_eq!(read["device"]["identifiers"][0], urn);
    assert_eq!(read["device"]["status"], "active");

    // The same answers pass the FHIR validator.
    let bundle = fetch(
        &site,
        &nurse.credentials(),
        "/fhir/r4/Observation?_count=3",
        request.id,
    )
    .await;
    assert_eq!(bundle["type"], "searchset");
    assert!(
        bundle["link"][1]["url"]
            .as_str()
            .unwrap()
            .ends_with("_count=3&_offset=3")
    );
    assert_valid_fhir(&bundle);
    let device_path = format!("/fhir/r4/Device/{}", device.epc.to_hex().to_lowercase());
    assert_valid_fhir(&fetch(&site, &nurse.credentials(), &device_path, request.id).await);
    assert_valid_fhir(&fetch(&site, &nurse.credentials(), "/fhir/r4/metadata", request.id).await);
    let first = bundle["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let one = fetch(
        &site,
        &nurse.credentials(),
        &format!("/fhir/r4/Observation/{first}"),
        request.id,
    )
    .await;
    assert_valid_fhir(&one);

    // Someone else's request, no request, an unknown parameter, a write:
    // each an OperationOutcome naming what is wrong.
    let refused = client(
        python,
        &site,
        &etc.join("doctor"),
        &["refused", &id, &patient],
    );
    let answer = |name: &str| {
        let a = &refused[name];
        assert_eq!(a["resourceType"], "OperationOutcome", "{refused}");
        assert_eq!(a["type"], "application/fhir+json", "{refused}");
        (
            a["status"].as_u64().unwrap(),
            a["code"].as_str().unwrap().to_owned(),
            a["text"].as_str().unwrap().to_owned(),
        )
    };
    let (status, code, text) = answer("no-request");
    assert_eq!((status, code.as_str()), (400, "invalid"));
    assert!(text.contains("X-Access-Request"), "{text}");
    let (status, _, text) = answer("unknown-parameter");
    assert_eq!(status, 400);
    assert!(text.contains("unknown search parameter `colour`"), "{text}");
    let (status, code, text) = answer("not-theirs");
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    assert!(
        text.contains(&format!("request {id} was made by")),
        "{text}"
    );
    let (status, code, _) = answer("write");
    assert_eq!((status, code.as_str()), (405, "not-supported"));

    // The patient sees every read of theirs as an AuditEvent (the nurse's
    // five through the client and two here, the doctor's refusal), and
    // their consent.
    let view = client(
        python,
        &site,
        &etc.join("patient"),
        &["patient-view", &patient],
    );
    // The patient's own searches pass the validator too.
    let card = medledger_pki::Credentials::from_issued(&site.card);
    for path in ["/fhir/r4/AuditEvent", "/fhir/r4/Consent"] {
        let found = fetch(
            &site,
            &card,
            &format!("{path}?patient=Patient/{patient}"),
            0,
        )
        .await;
        assert_eq!(found["type"], "searchset", "{found}");
        assert_valid_fhir(&found);
    }
    let outcomes: Vec<&str> = view["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["0", "0", "0", "0", "0", "0", "0", "4"], "{view}");
    assert_eq!(view["consents"][0]["status"], "active");
    assert_eq!(view["consents"][0]["codes"], serde_json::json!(["8867-4"]));
    assert_eq!(view["consents"][0]["actor"], "any doctor");
}

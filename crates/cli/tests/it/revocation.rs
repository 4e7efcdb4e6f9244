//! A person is their certificate and their account together: revoking the
//! certificate ends every way they act off chain (API, portal by
//! certificate or key, sessions already open), and `medledger ca revoke`
//! ends the account's on-chain rights too, or says how.

use crate::portal::{Visitor, problem_type};
use crate::records::read;
use crate::site::medledger;
use medledger_contracts::Scope;
use medledger_pki::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_nurse_reads_nothing_through_the_api_the_portal_or_an_open_session() {
    let site = crate::site::start_with_a_reading().await;
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let admin = site.admin_person().await.unwrap();
    let etc = site.dir.path().join("people");
    std::fs::create_dir_all(&etc).unwrap();
    nurse.issued.write(&etc.join("nurse")).unwrap();
    admin.issued.write(&etc.join("admin")).unwrap();
    let nurse_cert = std::fs::read_to_string(etc.join("nurse.crt")).unwrap();
    let nurse_key = medledger_sim::signer(&nurse.issued).unwrap();
    let records = |id: u64| format!("/v1/records?request={id}");

    // The assigned nurse is granted access and reads, over the API...
    let granted = nurse
        .contracts
        .request_access(site.patient_ref, Scope::ALL, "TREAT")
        .await
        .unwrap();
    assert!(granted.granted());
    assert_eq!(read(&site, &nurse, granted.id).await.status, 200);
    // ... and through the portal, signed in with her chain key.
    let root = site.ca.dir().join("root.crt");
    let portal = site.server.portal_addr().unwrap().to_string();
    let mut open_session = Visitor::open(&root, &portal, None).await;
    let (status, session) = open_session.sign_in_by_key(&nurse_key, &nurse_cert).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["role"], "nurse");
    let (status, bundle) = open_session
        .send("GET", &records(granted.id), &[], "")
        .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["resourceType"], "Bundle");

    // Her certificate is revoked, with the Registry call an admin makes.
    let rpc = crate::site::serve_rpc(&site).await;
    let registry = site.admin.addresses().registry.to_string();
    let ca = site.ca.dir().display().to_string();
    let (ok, out, err) = medledger(&[
        "ca",
        "revoke",
        "--ca",
        &ca,
        &etc.join("nurse.crt").display().to_string(),
        "--rpc",
        &rpc,
        "--registry",
        &registry,
        "--key",
        &etc.join("admin.eth.key").display().to_string(),
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("AccountRevoked"), "{out}");
    assert!(out.contains("StaffDeactivated"), "{out}");
    // The servers load the new CRL (what `medledger server` does when the file changes).
    let crls =
        medledger_pki::files::read_der_blocks(&site.ca.dir().join("crl.pem"), "X509 CRL").unwrap();
    site.server.update_crls(&crls).unwrap();

    // The API refuses her handshake.
    let api = site.server.addr().to_string();
    let refused = match site.open(&nurse.credentials(), Role::Server, &api).await {
        Err(_) => true,
        Ok(mut conn) => conn
            .request("GET", &records(granted.id), &[], vec![])
            .await
            .is_err(),
    };
    assert!(refused, "the API still took a revoked certificate");
    // The session she opened before is over.
    let (status, body) = open_session
        .send("GET", &records(granted.id), &[], "")
        .await;
    assert_eq!(
        (status, problem_type(&body)),
        (401, "sign-in-required"),
        "{body}"
    );
    // Her key signs in to nothing: the certificate that goes with it is revoked.
    let mut again = Visitor::open(&root, &portal, None).await;
    let (status, body) = again.sign_in_by_key(&nurse_key, &nurse_cert).await;
    assert_eq!((status, problem_type(&body)), (401, "revoked"), "{body}");
    // Nor does her certificate in the browser sign her in to the portal.
    let by_cert = match medledger_pki::https::Connection::open(
        site.client_config(&nurse.credentials(), Role::Server)
            .unwrap(),
        &portal,
        "localhost",
    )
    .await
    {
        Err(_) => true,
        Ok(mut conn) => conn
            .request("GET", "/portal/v1/session", &[], vec![])
            .await
            .map_or(true, |r| r.status != 200),
    };
    assert!(by_cert, "the portal still took a revoked certificate");

    // On chain, her account lost its rights: the request is no longer usable.
    let reg = site.admin.registry();
    assert!(reg.isRevoked(nurse.address).call().await.unwrap());
    assert!(!reg.isActiveStaff(nurse.address).call().await.unwrap());
    assert!(
        !site
            .admin
            .access_log()
            .usable(alloy::primitives::U256::from(granted.id), nurse.address)
            .call()
            .await
            .unwrap()
    );

    // Without a Registry and a key, `ca revoke` says what ends the rest.
    let doctor = site.staff(Role::Doctor, false).await.unwrap();
    doctor.issued.write(&etc.join("doctor")).unwrap();
    let (ok, out, err) = medledger(&[
        "ca",
        "revoke",
        "--ca",
        &ca,
        &etc.join("doctor.crt").display().to_string(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("person revoke {}", doctor.address)),
        "{out}"
    );
}

/// Every refusal of the API and the portal is problem+json with the right
/// type and title, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_problem_naming_what_is_wrong() {
    let site = crate::site::start().await;
    let api = site.server.addr().to_string();
    let patient = medledger_pki::Credentials::from_issued(&site.card);
    let mut as_patient = site.open(&patient, Role::Server, &api).await.unwrap();
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let mut as_nurse = site
        .open(&nurse.credentials(), Role::Server, &api)
        .await
        .unwrap();
    let problem = |reply: &medledger_pki::https::Reply| {
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        (reply.status, problem_type(&body).to_owned(), body)
    };
    for (path, named) in [
        ("/v1/alerts?limit=abc", "limit"),
        ("/v1/alerts?after=-5", "after"),
        ("/v1/alerts/stream?after=x", "after"),
        ("/v1/ledger?patient=zz", "patient"),
    ] {
        let reply = as_patient.request("GET", path, &[], vec![]).await.unwrap();
        let (status, kind, body) = problem(&reply);
        assert_eq!(
            (status, kind.as_str()),
            (400, "malformed"),
            "{path}: {body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains(named),
            "{path}: {body}"
        );
    }
    let reply = as_patient
        .request("GET", "/v1/no-such-thing", &[], vec![])
        .await
        .unwrap();
    assert_eq!(problem(&reply).0, 404);
    let reply = as_patient
        .request("POST", "/v1/alerts", &[], vec![])
        .await
        .unwrap();
    let (status, kind, _) = problem(&reply);
    assert_eq!((status, kind.as_str()), (405, "method-not-allowed"));

    // The collector too: another method, an unknown path.
    let device = site.device(1).await.unwrap();
    let mut at_collector = site.connect(&device).await.unwrap();
    let reply = at_collector
        .request("GET", "/v1/readings", &[], vec![])
        .await
        .unwrap();
    let (status, kind, _) = problem(&reply);
    assert_eq!((status, kind.as_str()), (405, "method-not-allowed"));
    let reply = at_collector
        .request("GET", "/v1/nothing", &[], vec![])
        .await
        .unwrap();
    assert_eq!(problem(&reply).0, 404);

    // A nurse who tries to erase a patient is told who may.
    let reply = as_nurse
        .request(
            "DELETE",
            &format!("/v1/patients/{}", hex::encode(site.patient_ref)),
            &[],
            vec![],
        )
        .await
        .unwrap();
    let (status, kind, body) = problem(&reply);
    assert_eq!((status, kind.as_str()), (403, "wrong-role"), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("only the patient or an admin"),
        "{body}"
    );

    // The portal, by certificate: a path value it cannot read.
    let portal = site.server.portal_addr().unwrap().to_string();
    let mut on_portal = site.open(&patient, Role::Server, &portal).await.unwrap();
    let reply = on_portal
        .request("GET", "/portal/v1/ledger/-1", &[], vec![])
        .await
        .unwrap();
    let (status, kind, body) = problem(&reply);
    assert_eq!((status, kind.as_str()), (400, "malformed"), "{body}");
    let reply = on_portal
        .request("GET", "/portal/v1/nothing-here", &[], vec![])
        .await
        .unwrap();
    assert_eq!(problem(&reply).0, 404);
}

/// A key session ends at once when the Registry removes the account, even
/// with its certificate still valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_session_ends_when_the_registry_removes_the_account() {
    let site = crate::site::start().await;
    let nurse = site.staff(Role::Nurse, true).await.unwrap();
    let etc = site.dir.path().join("people");
    std::fs::create_dir_all(&etc).unwrap();
    nurse.issued.write(&etc.join("nurse")).unwrap();
    let cert = std::fs::read_to_string(etc.join("nurse.crt")).unwrap();
    let key = medledger_sim::signer(&nurse.issued).unwrap();
    let root = site.ca.dir().join("root.crt");
    let portal = site.server.portal_addr().unwrap().to_string();
    let mut v = Visitor::open(&root, &portal, None).await;
    assert_eq!(v.sign_in_by_key(&key, &cert).await.0, 200);
    assert_eq!(v.send("GET", "/portal/v1/session", &[], "").await.0, 200);
    medledger_contracts::send(site.admin.registry().deactivateStaff(nurse.address))
        .await
        .unwrap();
    let (status, body) = v.send("GET", "/portal/v1/session", &[], "").await;
    assert_eq!(
        (status, problem_type(&body)),
        (401, "sign-in-required"),
        "{body}"
    );
}

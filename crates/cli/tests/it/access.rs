//! Staff access end to end: the decision on chain for every role, consent
//! and assignment, the read that follows it, and what each read leaves
//! behind (one on-chain record, one ledger entry, one alert).

use crate::records::read;
use crate::site::{body, get_ok};
use medledger_contracts::{Grantee, Scope, StaffRole};
use medledger_patient_ledger::{Entry, Field, NoteVerifier};
use medledger_pki::Role;
use medledger_sim::Hospital;
use std::collections::BTreeMap;
use std::time::Duration;

/// How a case's staff member stands with the patient's consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consent {
    None,
    ToThem,
    ToTheirRole,
    Revoked,
}

/// The patient's ledger entries of `kind`, decoded.
async fn entries(site: &Hospital, kind: &str) -> Vec<Entry> {
    let ledger = site.server.ledger();
    let verifier = NoteVerifier::new(&ledger.verifier_key()).unwrap();
    ledger
        .entries(&site.patient_ref.0)
        .await
        .unwrap()
        .iter()
        .map(|stored| Entry::open(stored, &verifier).unwrap())
        .filter(|e| e.kind == kind)
        .collect()
}

/// Waits until `count()` reaches `n`, at most 20 s.
async fn eventually<F: std::future::Future<Output = usize>>(
    what: &str,
    n: usize,
    mut count: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = count().await;
        if now >= n {
            assert_eq!(now, n, "{what}: more than expected");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {now} of {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_consent_and_assignment_gets_its_decision_and_each_read_is_recorded_once() {
    let site = crate::site::start_with_a_reading().await;
    let patient = site.patient_contracts().unwrap();
    let expiry = medledger_protocol::now_ms() / 1000 + 3600;
    let (mut granted, mut denied, mut consent_events) = (0usize, 0usize, 0usize);
    let mut first_nurse = None;
    for opted_out in [false, true] {
        if opted_out {
            patient.set_opt_out(site.patient_ref, true).await.unwrap();
            consent_events += 1;
        }
        for role in [Role::Doctor, Role::Nurse] {
            for assigned in [false, true] {
                for consent in [
                    Consent::None,
                    Consent::ToThem,
                    Consent::ToTheirRole,
                    Consent::Revoked,
                ] {
                    let case = format!(
                        "{role:?}, assigned {assigned}, consent {consent:?}, opted out {opted_out}"
                    );
                    let staff = site.staff(role, assigned).await.unwrap();
                    let grantee = match consent {
                        Consent::ToTheirRole if role == Role::Doctor => {
                            Grantee::Role(StaffRole::Doctor)
                        }
                        Consent::ToTheirRole => Grantee::Role(StaffRole::Nurse),
                        _ => Grantee::Account(staff.address),
                    };
                    let grant = match consent {
                        Consent::None => None,
                        _ => Some(
                            patient
                                .grant_consent(
                                    site.patient_ref,
                                    grantee,
                                    Scope::ALL,
                                    "CAREMGT",
                                    expiry,
                                )
                                .await
                                .unwrap(),
                        ),
                    };
                    consent_events += usize::from(grant.is_some());
                    if consent == Consent::Revoked {
                        patient
                            .revoke_consent(site.patient_ref, grant.unwrap())
                            .await
                            .unwrap();
                        consent_events += 1;
                    }

                    let decision = staff
                        .contracts
                        .request_access(site.patient_ref, Scope::ALL, "CAREMGT")
                        .await
                        .unwrap();
                    let expect = (assigned && !opted_out)
                        || matches!(consent, Consent::ToThem | Consent::ToTheirRole);
                    assert_eq!(decision.granted(), expect, "{case}: {decision:?}");
                    let reply = read(&site, &staff, decision.id).await;
                    if expect {
                        assert_eq!(reply.status, 200, "{case}");
                        assert_eq!(body(&reply)["entry"].as_array().unwrap().len(), 1);
                        granted += 1;
                    } else {
                        assert_eq!(reply.status, 403, "{case}");
                        assert!(
                            body(&reply)["detail"].as_str().unwrap().contains("denied"),
                            "{case}"
                        );
                        denied += 1;
                    }
                    // A role-wide grant would reach later cases: end it.
                    if consent == Consent::ToTheirRole {
                        patient
                            .revoke_consent(site.patient_ref, grant.unwrap())
                            .await
                            .unwrap();
                        consent_events += 1;
                    }
                    if role == Role::Nurse && assigned && !opted_out && first_nurse.is_none() {
                        first_nurse = Some((staff, decision.id));
                    }
                }
            }
        }
    }
    assert_eq!((granted, denied), (20, 12));

    // Each read: one decision on chain, one ledger entry, one alert.
    eventually("AccessGranted events", granted, || async {
        site.server
            .events(Some("AccessGranted"))
            .await
            .unwrap()
            .len()
    })
    .await;
    let access = entries(&site, "AccessEvent").await;
    let outcomes = access.iter().fold(BTreeMap::new(), |mut m, e| {
        let Field::Text(outcome) = &e.body["outcome"] else {
            panic!("outcome is text")
        };
        *m.entry(outcome.clone()).or_insert(0usize) += 1;
        m
    });
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("refused".to_owned(), denied),
            ("served".to_owned(), granted)
        ])
    );
    eventually("ConsentChanged entries", consent_events, || async {
        entries(&site, "ConsentChanged").await.len()
    })
    .await;
    let alerts =
        crate::alerts::wait_for_alerts(&site, 2 * (granted + denied) + consent_events).await;
    let by_kind = alerts.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a["kind"].as_str().unwrap().to_owned())
            .or_insert(0usize) += 1;
        m
    });
    assert_eq!(
        by_kind,
        BTreeMap::from([
            ("access-denied".to_owned(), denied),
            ("access-granted".to_owned(), granted),
            ("consent-changed".to_owned(), consent_events),
            ("record-read".to_owned(), granted),
            ("record-refused".to_owned(), denied),
        ])
    );

    // The patient hears only of the unusual: a carer's second read, in
    // hours and under the hourly limit, is stored but not delivered.
    let mut patient_conn = site.connect_patient().await.unwrap();
    let reply = patient_conn
        .request(
            "PUT",
            "/v1/alerts/preferences",
            &[("content-type", "application/json")],
            serde_json::json!({
                "mode": "unusual", "day_start": 0, "day_end": 0, "max_reads_per_hour": 10,
            })
            .to_string()
            .into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let (nurse, request) = first_nurse.unwrap();
    // Opted out since: the carer's request no longer holds.
    assert_eq!(read(&site, &nurse, request).await.status, 403);
    patient.set_opt_out(site.patient_ref, false).await.unwrap();
    assert_eq!(read(&site, &nurse, request).await.status, 200);
    let newest = alerts.last().unwrap()["id"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = get_ok(&mut patient_conn, &format!("/v1/alerts?after={newest}")).await;
    let delivered: Vec<&str> = delivered["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(delivered, ["record-refused"], "only the refusal is unusual");
    assert_eq!(
        entries(&site, "AccessEvent").await.len(),
        granted + denied + 2
    );
}

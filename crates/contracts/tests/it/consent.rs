//! Consent: only the patient's own account changes it.

use crate::common::{Hospital, assert_refused, event, patient_ref, text};
use alloy::primitives::{Address, U256};
use medledger_contracts::bindings::Consent;
use medledger_contracts::{Grantee, Scope, StaffRole, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patient_grants_revokes_and_opts_out() {
    let h = Hospital::start().await;
    let p = h.patient_ref;
    let consent = h.patient.consent();
    let expiry = h.now().await + 3600;
    let scope: Scope = "heart-rate,spo2".parse().unwrap();
    let receipt = send(consent.grant(p, h.other_doctor.address, 0, scope.0, text("TREAT"), expiry))
        .await
        .unwrap();
    // Free text as a purpose is refused; no purpose (zero) means any.
    assert_refused(
        send(consent.grant(
            p,
            h.other_doctor.address,
            0,
            scope.0,
            text("my GP Bob"),
            expiry,
        ))
        .await,
        "UnknownPurpose",
    );
    let e: Consent::ConsentGranted = event(&receipt);
    assert_eq!(
        (
            e.id,
            e.patientRef,
            e.grantee,
            e.role,
            e.scope,
            e.purpose,
            e.expiry
        ),
        (
            U256::from(1),
            p,
            h.other_doctor.address,
            0,
            scope.0,
            text("TREAT"),
            expiry
        )
    );
    let g = consent.grantOf(U256::from(1)).call().await.unwrap();
    assert_eq!(
        (g.patientRef, g.grantee, g.revoked, g.expiry),
        (p, h.other_doctor.address, false, expiry)
    );

    // A grant to a role, through the typed client.
    let id = h
        .patient
        .grant_consent(p, Grantee::Role(StaffRole::Nurse), Scope::ALL, "", expiry)
        .await
        .unwrap();
    assert_eq!(id, 2);
    assert_eq!(
        consent.liveGrants(p).call().await.unwrap(),
        [U256::from(1), U256::from(2)]
    );

    // Covering: account, scope subset, purpose.
    let covering = async |who: Address, role: u8, s: Scope, purpose: &str| {
        consent
            .covering(p, who, role, s.0, text(purpose))
            .call()
            .await
    };
    let hr: Scope = "heart-rate".parse().unwrap();
    assert_eq!(
        covering(h.other_doctor.address, 1, hr, "TREAT")
            .await
            .unwrap(),
        U256::from(1)
    );
    assert_eq!(
        covering(h.other_doctor.address, 1, Scope::ALL, "TREAT")
            .await
            .unwrap(),
        U256::ZERO
    );
    assert_eq!(
        covering(h.other_doctor.address, 1, hr, "HRESCH")
            .await
            .unwrap(),
        U256::ZERO
    );
    assert_eq!(
        covering(h.doctor.address, 1, hr, "TREAT").await.unwrap(),
        U256::ZERO
    );
    // Any nurse, any purpose, any scope.
    assert_eq!(
        covering(h.nurse.address, 2, Scope::ALL, "HRESCH")
            .await
            .unwrap(),
        U256::from(2)
    );

    let e: Consent::ConsentRevoked = event(&h.patient.revoke_consent(p, 1).await.unwrap());
    assert_eq!((e.id, e.patientRef), (U256::from(1), p));
    assert!(consent.grantOf(U256::from(1)).call().await.unwrap().revoked);
    assert_eq!(
        covering(h.other_doctor.address, 1, hr, "TREAT")
            .await
            .unwrap(),
        U256::ZERO
    );
    assert_eq!(consent.liveGrants(p).call().await.unwrap(), [U256::from(2)]);
    assert_refused(h.patient.revoke_consent(p, 1).await, "AlreadyRevoked");
    assert_refused(h.patient.revoke_consent(p, 7).await, "UnknownGrant");

    let e: Consent::OptOutChanged = event(&h.patient.set_opt_out(p, true).await.unwrap());
    assert_eq!((e.patientRef, e.optedOut), (p, true));
    assert!(consent.optedOut(p).call().await.unwrap());
    h.patient.set_opt_out(p, false).await.unwrap();
    assert!(!consent.optedOut(p).call().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_else_changes_a_patients_consent() {
    let h = Hospital::start().await;
    let p = h.patient_ref;
    let expiry = h.now().await + 3600;
    let id = h
        .patient
        .grant_consent(
            p,
            Grantee::Account(h.doctor.address),
            Scope::ALL,
            "",
            expiry,
        )
        .await
        .unwrap();
    // Not the admin, not staff, not another patient.
    let other = h.account();
    send(h.admin.registry().admit(
        patient_ref("p2"),
        other.address,
        text("d"),
        text("f"),
        text("r"),
        text("b"),
        vec![],
    ))
    .await
    .unwrap();
    for who in [&h.admin, &h.doctor, &other] {
        assert_refused(
            who.grant_consent(p, Grantee::Account(who.address), Scope::ALL, "", expiry)
                .await,
            "NotPatient",
        );
        assert_refused(who.revoke_consent(p, id).await, "NotPatient");
        assert_refused(who.set_opt_out(p, true).await, "NotPatient");
    }
    // Revoking another patient's grant through one's own patientRef is refused too.
    assert_refused(
        other.revoke_consent(patient_ref("p2"), id).await,
        "UnknownGrant",
    );
    // An unknown patientRef has no owner.
    assert_refused(
        h.patient.set_opt_out(patient_ref("nobody"), true).await,
        "NotPatient",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grants_are_refused_and_expired_ones_lapse() {
    let h = Hospital::start().await;
    let p = h.patient_ref;
    let consent = h.patient.consent();
    let now = h.now().await;
    let grant = |grantee: Address, role: u8, scope: U256, expiry: u64| {
        let consent = consent.clone();
        async move { send(consent.grant(p, grantee, role, scope, text(""), expiry)).await }
    };
    let doc = h.doctor.address;
    assert_refused(grant(doc, 1, U256::MAX, now + 60).await, "GranteeOrRole");
    assert_refused(
        grant(Address::ZERO, 0, U256::MAX, now + 60).await,
        "GranteeOrRole",
    );
    assert_refused(grant(doc, 0, U256::ZERO, now + 60).await, "EmptyScope");
    assert_refused(grant(doc, 0, U256::MAX, now).await, "ExpiryNotInFuture");

    // A grant that expires in two seconds stops covering once the chain's
    // clock passes it (blocks carry the time they were sealed at).
    grant(doc, 0, U256::MAX, now + 2).await.unwrap();
    assert_eq!(
        consent
            .covering(p, doc, 1, U256::MAX, text("x"))
            .call()
            .await
            .unwrap(),
        U256::from(1)
    );
    wait_for_chain_time(&h, now + 2).await;
    assert_eq!(
        consent
            .covering(p, doc, 1, U256::MAX, text("x"))
            .call()
            .await
            .unwrap(),
        U256::ZERO
    );
    assert!(consent.liveGrants(p).call().await.unwrap().is_empty());

    // Live grants are capped; expired ones make room.
    let max = consent.MAX_LIVE().call().await.unwrap().to::<u64>();
    for _ in 0..max {
        grant(doc, 0, U256::MAX, now + 3600).await.unwrap();
    }
    assert_refused(grant(doc, 0, U256::MAX, now + 3600).await, "TooManyGrants");
}

/// Seals blocks (each a cheap transaction) until the chain's time passes `t`.
pub async fn wait_for_chain_time(h: &Hospital, t: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.now().await <= t {
        assert!(
            std::time::Instant::now() < deadline,
            "the chain's clock did not pass {t}"
        );
        h.patient.set_opt_out(h.patient_ref, false).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

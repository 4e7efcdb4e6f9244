//! AccessLog: the whole role x consent x assignment matrix, break-glass and
//! its review queue, annotations, and that nothing recorded can change.

use crate::common::{Hospital, assert_refused, event, patient_ref, text};
use crate::consent::wait_for_chain_time;
use alloy::primitives::{B256, U256};
use medledger_contracts::bindings::AccessLog;
use medledger_contracts::{AccessDecision, Basis, DenyReason, Grantee, Scope, StaffRole, send};

fn vitals() -> Scope {
    "heart-rate,spo2".parse().unwrap()
}

#[track_caller]
fn granted(d: &AccessDecision, basis: Basis) {
    assert_eq!(d.outcome, Ok(basis), "{d:?}");
}

#[track_caller]
fn denied(d: &AccessDecision, reason: DenyReason) {
    assert_eq!(d.outcome, Err(reason), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_carers_are_granted_others_need_consent() {
    let h = Hospital::start().await;
    let p = h.patient_ref;
    let ttl = h.admin.access_log().accessTtl().call().await.unwrap();

    // Assigned carers: doctor and nurse.
    for carer in [&h.doctor, &h.nurse] {
        let d = carer.request_access(p, vitals(), "TREAT").await.unwrap();
        granted(&d, Basis::Carer);
        assert_eq!(d.grant_id, 0);
        assert!(d.expires_at >= h.now().await + ttl - 5 && d.expires_at <= h.now().await + ttl);
        assert!(carer.request_usable(d.id, carer.address).await.unwrap());
        // Usable by its requester only.
        assert!(
            !carer
                .request_usable(d.id, h.other_doctor.address)
                .await
                .unwrap()
        );
    }

    // Active staff but not a carer, no consent: denied.
    let d = h
        .other_doctor
        .request_access(p, vitals(), "TREAT")
        .await
        .unwrap();
    denied(&d, DenyReason::NoConsent);
    assert_eq!(d.expires_at, 0);
    assert!(
        !h.other_doctor
            .request_usable(d.id, h.other_doctor.address)
            .await
            .unwrap()
    );

    // Not staff at all: the patient, a registered node, a stranger.
    for who in [&h.patient, &h.collector, &h.stranger] {
        denied(
            &who.request_access(p, vitals(), "TREAT").await.unwrap(),
            DenyReason::NotStaff,
        );
    }
    // Unknown patient.
    let d = h
        .doctor
        .request_access(patient_ref("nobody"), vitals(), "TREAT")
        .await
        .unwrap();
    denied(&d, DenyReason::UnknownPatient);

    // A deactivated carer's open request stops working; on the embedded
    // chain they cannot even send any more (elsewhere they would be denied
    // as not staff, like the stranger above).
    let open = h.nurse.request_access(p, vitals(), "TREAT").await.unwrap();
    send(h.admin.registry().deactivateStaff(h.nurse.address))
        .await
        .unwrap();
    let err = h
        .nurse
        .request_access(p, vitals(), "TREAT")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not permitted"), "{err}");
    assert!(
        !h.nurse
            .request_usable(open.id, h.nurse.address)
            .await
            .unwrap()
    );
    // Registered again, they do not get their old patients back.
    let registry = h.admin.registry();
    send(registry.registerStaff(h.nurse.address, StaffRole::Nurse.code(), text("cardiology")))
        .await
        .unwrap();
    assert!(
        !registry
            .isAssignedCarer(p, h.nurse.address)
            .call()
            .await
            .unwrap()
    );
    denied(
        &h.nurse.request_access(p, vitals(), "TREAT").await.unwrap(),
        DenyReason::NoConsent,
    );
    send(registry.assignCarer(p, h.nurse.address))
        .await
        .unwrap();
    granted(
        &h.nurse.request_access(p, vitals(), "TREAT").await.unwrap(),
        Basis::Carer,
    );

    // A carer released from the patient is denied from then on.
    let open = h.doctor.request_access(p, vitals(), "TREAT").await.unwrap();
    send(h.admin.registry().releaseCarer(p, h.doctor.address))
        .await
        .unwrap();
    denied(
        &h.doctor.request_access(p, vitals(), "TREAT").await.unwrap(),
        DenyReason::NoConsent,
    );
    assert!(
        !h.doctor
            .request_usable(open.id, h.doctor.address)
            .await
            .unwrap()
    );

    // After discharge, carers of that admission are carers no more.
    send(h.admin.registry().assignCarer(p, h.doctor.address))
        .await
        .unwrap();
    send(h.admin.registry().discharge(p)).await.unwrap();
    denied(
        &h.doctor.request_access(p, vitals(), "TREAT").await.unwrap(),
        DenyReason::NoConsent,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_grants_revocation_expiry_and_opt_out() {
    let h = Hospital::start().await;
    let p = h.patient_ref;
    let now = h.now().await;

    // A consent to the unassigned doctor for vitals, for treatment.
    let grant = h
        .patient
        .grant_consent(
            p,
            Grantee::Account(h.other_doctor.address),
            vitals(),
            "TREAT",
            now + 600,
        )
        .await
        .unwrap();
    let d = h
        .other_doctor
        .request_access(p, vitals(), "TREAT")
        .await
        .unwrap();
    granted(&d, Basis::Consent);
    assert_eq!(d.grant_id, grant);
    // Capped by the consent's expiry, not the access TTL.
    assert_eq!(d.expires_at, now + 600);
    // Outside the scope or the purpose: denied.
    let all = h
        .other_doctor
        .request_access(p, Scope::ALL, "TREAT")
        .await
        .unwrap();
    denied(&all, DenyReason::NoConsent);
    denied(
        &h.other_doctor
            .request_access(p, vitals(), "HRESCH")
            .await
            .unwrap(),
        DenyReason::NoConsent,
    );

    // Revocation takes effect on the next request, and on the open one.
    h.patient.revoke_consent(p, grant).await.unwrap();
    assert!(
        !h.other_doctor
            .request_usable(d.id, h.other_doctor.address)
            .await
            .unwrap()
    );
    denied(
        &h.other_doctor
            .request_access(p, vitals(), "TREAT")
            .await
            .unwrap(),
        DenyReason::NoConsent,
    );

    // A consent to a role covers every active member of it. Its expiry is
    // a few seconds from the chain's time now (not from `now`, read many
    // transactions ago: a loaded machine takes seconds for them).
    let soon = h.now().await + 5;
    let role_grant = h
        .patient
        .grant_consent(p, Grantee::Role(StaffRole::Doctor), Scope::ALL, "", soon)
        .await
        .unwrap();
    let d = h
        .other_doctor
        .request_access(p, Scope::ALL, "HRESCH")
        .await
        .unwrap();
    granted(&d, Basis::Consent);
    assert_eq!(d.grant_id, role_grant);
    // ...until it expires.
    wait_for_chain_time(&h, soon).await;
    denied(
        &h.other_doctor
            .request_access(p, Scope::ALL, "HRESCH")
            .await
            .unwrap(),
        DenyReason::NoConsent,
    );
    assert!(
        !h.other_doctor
            .request_usable(d.id, h.other_doctor.address)
            .await
            .unwrap()
    );

    // Opt-out: the assigned carers lose default access...
    h.patient.set_opt_out(p, true).await.unwrap();
    let open = h.nurse.request_access(p, vitals(), "TREAT").await;
    denied(&open.unwrap(), DenyReason::OptedOut);
    // ...but a consent still lets one of them in.
    h.patient
        .grant_consent(
            p,
            Grantee::Account(h.nurse.address),
            vitals(),
            "",
            now + 600,
        )
        .await
        .unwrap();
    granted(
        &h.nurse.request_access(p, vitals(), "TREAT").await.unwrap(),
        Basis::Consent,
    );
    // Opting back in restores carer access.
    h.patient.set_opt_out(p, false).await.unwrap();
    granted(
        &h.doctor.request_access(p, vitals(), "TREAT").await.unwrap(),
        Basis::Carer,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_recorded_with_its_decision() {
    let h = Hospital::start().await;
    let p = h.patient_ref;
    let log = h.doctor.access_log();
    let receipt = send(log.requestAccess(p, vitals().0, text("TREAT")))
        .await
        .unwrap();
    let e: AccessLog::AccessGranted = event(&receipt);
    assert_eq!(
        (
            e.id,
            e.patientRef,
            e.requester,
            e.scope,
            e.purpose,
            e.basis,
            e.grantId
        ),
        (
            U256::from(1),
            p,
            h.doctor.address,
            vitals().0,
            text("TREAT"),
            1,
            U256::ZERO
        )
    );
    let r = log.requestOf(U256::from(1)).call().await.unwrap();
    assert_eq!(
        (r.requester, r.decision, r.basis, r.denyReason),
        (h.doctor.address, 1, 1, 0)
    );
    assert_eq!(
        (r.patientRef, r.scope, r.purpose, r.expiresAt),
        (p, vitals().0, text("TREAT"), e.expiresAt)
    );
    assert!(r.time > 0 && r.time <= h.now().await);

    let log = h.other_doctor.access_log();
    let receipt = send(log.requestAccess(p, Scope::ALL.0, text("HOPERAT")))
        .await
        .unwrap();
    let e: AccessLog::AccessDenied = event(&receipt);
    assert_eq!(
        (
            e.id,
            e.patientRef,
            e.requester,
            e.scope,
            e.purpose,
            e.reason
        ),
        (
            U256::from(2),
            p,
            h.other_doctor.address,
            U256::MAX,
            text("HOPERAT"),
            4
        )
    );
    let r = log.requestOf(U256::from(2)).call().await.unwrap();
    assert_eq!((r.decision, r.denyReason, r.expiresAt), (2, 4, 0));
    assert_eq!(log.requestCount().call().await.unwrap(), U256::from(2));

    // Malformed requests are refused outright.
    assert_refused(
        send(log.requestAccess(p, U256::ZERO, text("x"))).await,
        "EmptyScope",
    );
    assert_refused(
        send(log.requestAccess(p, U256::MAX, B256::ZERO)).await,
        "MissingPurpose",
    );
    // A purpose is a PurposeOfUse code: free text is public forever on
    // chain, and refused.
    assert_refused(
        send(log.requestAccess(p, U256::MAX, text("arrest of Bob"))).await,
        "UnknownPurpose",
    );
    for (code, _) in medledger_contracts::PURPOSES {
        assert!(log.isPurpose(text(code)).call().await.unwrap(), "{code}");
    }
    for free in ["treatment", "TREATMENT", "treat", "emergency", ""] {
        assert!(!log.isPurpose(text(free)).call().await.unwrap(), "{free}");
    }
    assert_refused(
        log.requestOf(U256::from(3))
            .call()
            .await
            .map_err(Into::into),
        "UnknownRequest",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_granted_to_doctors_flagged_and_reviewed() {
    let h = Hospital::start().await;
    let p = h.patient_ref;
    // The patient even opted out; an unassigned doctor breaks the glass.
    h.patient.set_opt_out(p, true).await.unwrap();
    let log = h.other_doctor.access_log();
    let receipt = send(log.breakGlass(p, Scope::ALL.0, text("cardiac-arrest")))
        .await
        .unwrap();
    let g: AccessLog::AccessGranted = event(&receipt);
    assert_eq!(
        (g.requester, g.basis, g.purpose),
        (h.other_doctor.address, 3, text("ETREAT"))
    );
    let b: AccessLog::BreakGlass = event(&receipt);
    assert_eq!(
        (b.id, b.patientRef, b.requester, b.reason),
        (g.id, p, h.other_doctor.address, text("cardiac-arrest"))
    );
    assert_eq!(
        log.pendingReviews(U256::ZERO, U256::from(100))
            .call()
            .await
            .unwrap(),
        [g.id]
    );
    assert!(
        h.other_doctor
            .request_usable(g.id.to(), h.other_doctor.address)
            .await
            .unwrap()
    );
    let r = log.requestOf(g.id).call().await.unwrap();
    assert_eq!(
        (r.basis, r.emergencyReason, r.reviewed),
        (3, text("cardiac-arrest"), false)
    );

    // A reason is mandatory.
    assert_refused(
        send(log.breakGlass(p, Scope::ALL.0, B256::ZERO)).await,
        "MissingReason",
    );
    // Nurses and strangers are denied, and that is recorded (not queued).
    let d = h.nurse.break_glass(p, Scope::ALL, "fall").await.unwrap();
    denied(&d, DenyReason::NotDoctor);
    denied(
        &h.stranger.break_glass(p, Scope::ALL, "fall").await.unwrap(),
        DenyReason::NotStaff,
    );
    assert_eq!(
        log.pendingReviews(U256::ZERO, U256::from(100))
            .call()
            .await
            .unwrap(),
        [g.id]
    );

    // Review: admins only, once.
    let second = h
        .doctor
        .break_glass(p, vitals(), "unconscious")
        .await
        .unwrap();
    granted(&second, Basis::Emergency);
    assert_refused(
        send(log.closeReview(g.id, text("justified"))).await,
        "NotAdmin",
    );
    let admin_log = h.admin.access_log();
    let e: AccessLog::ReviewClosed = event(
        &send(admin_log.closeReview(g.id, text("justified")))
            .await
            .unwrap(),
    );
    assert_eq!(
        (e.id, e.reviewer, e.outcome),
        (g.id, h.admin.address, text("justified"))
    );
    assert_eq!(
        admin_log
            .pendingReviews(U256::ZERO, U256::from(100))
            .call()
            .await
            .unwrap(),
        [U256::from(second.id)]
    );
    assert_refused(
        send(admin_log.closeReview(g.id, text("again"))).await,
        "NotUnderReview",
    );
    assert_refused(
        send(admin_log.closeReview(U256::from(d.id), text("x"))).await,
        "NotUnderReview",
    );
    assert_refused(
        send(admin_log.closeReview(U256::from(99), text("x"))).await,
        "UnknownRequest",
    );
    assert!(log.requestOf(g.id).call().await.unwrap().reviewed);
    assert_eq!(
        admin_log.pendingReviewCount().call().await.unwrap(),
        U256::from(1)
    );
    // An admin who is also a doctor cannot close their own break-glass.
    send(
        h.admin
            .registry()
            .registerStaff(h.admin.address, 1, text("er")),
    )
    .await
    .unwrap();
    let own = h.admin.break_glass(p, vitals(), "stroke").await.unwrap();
    assert_refused(
        send(admin_log.closeReview(U256::from(own.id), text("fine"))).await,
        "OwnReview",
    );
    assert_eq!(
        admin_log
            .pendingReviews(U256::from(1), U256::from(1))
            .call()
            .await
            .unwrap(),
        [U256::from(own.id)]
    );
    assert!(
        admin_log
            .pendingReviews(U256::from(5), U256::from(1))
            .call()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_need_a_usable_request() {
    let h = Hospital::start().await;
    let p = h.patient_ref;
    let d = h.nurse.request_access(p, vitals(), "TREAT").await.unwrap();
    let log = h.nurse.access_log();
    let reading = B256::repeat_byte(0x42);
    let content = B256::repeat_byte(0x43);
    let receipt = send(log.annotate(U256::from(d.id), reading, 2, content))
        .await
        .unwrap();
    let e: AccessLog::Annotated = event(&receipt);
    assert_eq!(
        (
            e.id,
            e.patientRef,
            e.author,
            e.requestId,
            e.readingRef,
            e.kind,
            e.contentHash
        ),
        (
            U256::from(1),
            p,
            h.nurse.address,
            U256::from(d.id),
            reading,
            2,
            content
        )
    );
    // A second annotation of the same reading appends; it does not overwrite.
    let e: AccessLog::Annotated = event(
        &send(log.annotate(U256::from(d.id), reading, 1, content))
            .await
            .unwrap(),
    );
    assert_eq!(e.id, U256::from(2));
    assert_eq!(log.annotationCount().call().await.unwrap(), U256::from(2));

    assert_refused(
        send(log.annotate(U256::from(d.id), reading, 0, content)).await,
        "InvalidAnnotation",
    );
    assert_refused(
        send(log.annotate(U256::from(d.id), B256::ZERO, 1, content)).await,
        "InvalidAnnotation",
    );
    // Someone else's request, a denied one, an unknown one.
    let other = h.other_doctor.access_log();
    assert_refused(
        send(other.annotate(U256::from(d.id), reading, 1, content)).await,
        "RequestNotUsable",
    );
    let denied_req = h
        .other_doctor
        .request_access(p, vitals(), "TREAT")
        .await
        .unwrap();
    assert_refused(
        send(other.annotate(U256::from(denied_req.id), reading, 1, content)).await,
        "RequestNotUsable",
    );
    assert_refused(
        send(other.annotate(U256::from(99), reading, 1, content)).await,
        "RequestNotUsable",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_ttl_is_set_by_admins() {
    let h = Hospital::start().await;
    assert_refused(
        send(h.doctor.access_log().setAccessTtl(60)).await,
        "NotAdmin",
    );
    assert_refused(
        send(h.admin.access_log().setAccessTtl(0)).await,
        "InvalidTtl",
    );
    let e: AccessLog::AccessTtlChanged =
        event(&send(h.admin.access_log().setAccessTtl(60)).await.unwrap());
    assert_eq!(e.ttl, 60);
    let d = h
        .doctor
        .request_access(h.patient_ref, vitals(), "TREAT")
        .await
        .unwrap();
    assert!(d.expires_at <= h.now().await + 60);
}

/// Nothing recorded can be changed or deleted: AccessLog, Consent and
/// Anchor have no state-changing function beyond these, and none of them
/// edits a past request, grant or anchor.
#[test]
fn the_logs_are_append_only() {
    let mutating = |artifact: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(artifact).unwrap();
        let mut names: Vec<String> = v["abi"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["type"] == "function")
            .filter(|item| !matches!(item["stateMutability"].as_str(), Some("view" | "pure")))
            .map(|item| item["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        mutating(include_str!("../../../../contracts/out/AccessLog.json")),
        [
            "annotate",
            "breakGlass",
            "closeReview",
            "requestAccess",
            "setAccessTtl"
        ]
    );
    assert_eq!(
        mutating(include_str!("../../../../contracts/out/Consent.json")),
        // The restore functions add grants and opt-outs, never edit one,
        // and only while a recovery's set is `restoring`.
        [
            "closeRestore",
            "grant",
            "restoreGrant",
            "restoreOptOut",
            "revoke",
            "setOptOut"
        ]
    );
    assert_eq!(
        mutating(include_str!("../../../../contracts/out/Anchor.json")),
        ["anchor", "anchorMany"]
    );
}

//! The chain node lets only accounts the Registry knows send.

use crate::common::{Hospital, assert_refused, provider, text};
use alloy::primitives::B256;
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use medledger_contracts::{StaffRole, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_decides_who_may_send() {
    let h = Hospital::start().await;
    let newcomer = PrivateKeySigner::random();
    let p = provider(&h.node, &newcomer);
    // Nonces are explicit: a refused send must not leave a gap.
    let tx = |nonce| {
        alloy::rpc::types::TransactionRequest::default()
            .to(newcomer.address())
            .gas_limit(21_000)
            .nonce(nonce)
    };
    // Unknown to the Registry and not in the genesis allowlist: refused by the node.
    let err = p.send_transaction(tx(0)).await.unwrap_err().to_string();
    assert!(
        err.contains("not permitted") || err.contains("permission"),
        "{err}"
    );

    // Registered as staff: accepted.
    let registry = h.admin.registry();
    send(registry.registerStaff(newcomer.address(), StaffRole::Nurse.code(), text("icu")))
        .await
        .unwrap();
    p.send_transaction(tx(0))
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();

    // Deactivated: refused again.
    send(registry.deactivateStaff(newcomer.address()))
        .await
        .unwrap();
    let err = p.send_transaction(tx(1)).await.unwrap_err().to_string();
    assert!(err.contains("not permitted"), "{err}");

    // Patients (by their account) and nodes may send too; the admins did all along.
    for who in [&h.patient, &h.collector, &h.admin] {
        assert!(registry.canTransact(who.address).call().await.unwrap());
    }
    assert!(
        !registry
            .canTransact(newcomer.address())
            .call()
            .await
            .unwrap()
    );
}

/// Revoking a person's certificate has an on-chain half: `revokeAccount`
/// ends every right of the account, whatever its role, until a new
/// certificate is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_account_loses_every_right_until_a_new_certificate() {
    let h = Hospital::start().await;
    let registry = h.admin.registry();
    let cert = B256::repeat_byte(7);

    // Only admins record certificates and revoke accounts.
    assert_refused(
        send(h.doctor.registry().revokeAccount(h.nurse.address)).await,
        "NotAdmin",
    );
    assert_refused(
        send(registry.setCertificate(h.patient.address, B256::ZERO)).await,
        "NoCertificate",
    );
    send(registry.setCertificate(h.patient.address, cert))
        .await
        .unwrap();
    assert_eq!(
        registry
            .certificateOf(h.patient.address)
            .call()
            .await
            .unwrap(),
        cert
    );

    // Staff: deactivated, so its assignments lapse.
    assert!(
        registry
            .isAssignedCarer(h.patient_ref, h.nurse.address)
            .call()
            .await
            .unwrap()
    );
    send(registry.revokeAccount(h.nurse.address)).await.unwrap();
    assert!(
        !registry
            .isActiveStaff(h.nurse.address)
            .call()
            .await
            .unwrap()
    );
    assert!(
        !registry
            .isAssignedCarer(h.patient_ref, h.nurse.address)
            .call()
            .await
            .unwrap()
    );
    assert!(!registry.canTransact(h.nurse.address).call().await.unwrap());

    // A patient: no transactions, and no consent changes (on a chain
    // without permissioning too: Consent asks the Registry).
    send(registry.revokeAccount(h.patient.address))
        .await
        .unwrap();
    assert_eq!(
        registry
            .certificateOf(h.patient.address)
            .call()
            .await
            .unwrap(),
        B256::ZERO
    );
    assert!(
        !registry
            .canTransact(h.patient.address)
            .call()
            .await
            .unwrap()
    );
    let opt_out = h
        .admin
        .consent()
        .setOptOut(h.patient_ref, true)
        .from(h.patient.address)
        .call()
        .await
        .map_err(medledger_contracts::Error::from);
    assert_refused(opt_out, "NotPatient");

    // A new certificate gives the patient's account back its rights.
    send(registry.setCertificate(h.patient.address, cert))
        .await
        .unwrap();
    assert!(
        registry
            .canTransact(h.patient.address)
            .call()
            .await
            .unwrap()
    );
    send(h.patient.consent().setOptOut(h.patient_ref, true))
        .await
        .unwrap();

    // An admin: removed, but never the last one.
    let second = h.account();
    send(registry.addAdmin(second.address)).await.unwrap();
    send(registry.revokeAccount(second.address)).await.unwrap();
    assert!(!registry.isAdmin(second.address).call().await.unwrap());
    assert_refused(
        send(registry.revokeAccount(h.admin.address)).await,
        "LastAdmin",
    );
}

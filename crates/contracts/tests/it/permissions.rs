//! The chain node lets only accounts the Registry knows send.

use crate::common::{Hospital, provider, text};
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

//! Chain recovery: a deployment's final state, rebuilt from its events on
//! a fresh chain.

use crate::common::{Hospital, assert_refused, epc, patient_ref, provider, text};
use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::{Node, NodeConfig, Sealing};
use medledger_contracts::recover::{Replica, addresses_from_logs};
use medledger_contracts::{Contracts, Grantee, Scope, StaffRole, code_key, epc_bytes, send};
use std::time::Duration;

/// Scope of a group binding in RuleManager.
const GROUP: u8 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_chain_gets_the_registry_rules_and_live_consents_of_the_retired_one() {
    let h = Hospital::start().await;
    let (p, registry) = (h.patient_ref, h.admin.registry());
    let expiry = h.now().await + 3600;

    // History on the chain to be retired.
    send(registry.releaseCarer(p, h.nurse.address))
        .await
        .unwrap();
    send(registry.deactivateStaff(h.other_doctor.address))
        .await
        .unwrap();
    // People's certificates; one account revoked.
    for (who, byte) in [
        (h.patient.address, 1),
        (h.doctor.address, 2),
        (h.nurse.address, 3),
    ] {
        send(registry.setCertificate(who, B256::repeat_byte(byte)))
            .await
            .unwrap();
    }
    send(registry.revokeAccount(h.nurse.address)).await.unwrap();
    let [worn, lent, retired] = [1, 2, 3].map(|n| epc_bytes(&epc(n)));
    for d in [worn, lent, retired] {
        send(registry.registerDevice(d, text("icu"), text("default"), B256::repeat_byte(7)))
            .await
            .unwrap();
    }
    send(registry.assignDevice(worn, p)).await.unwrap();
    send(registry.assignDevice(lent, p)).await.unwrap();
    send(registry.releaseDevice(lent)).await.unwrap();
    send(registry.deactivateDevice(retired)).await.unwrap();
    let gone = patient_ref("p2");
    let gone_account = h.account();
    send(registry.admit(
        gone,
        gone_account.address,
        text("ward"),
        text("f"),
        text("r"),
        text("b"),
        vec![],
    ))
    .await
    .unwrap();
    send(registry.discharge(gone)).await.unwrap();
    let rules = h.admin.rule_manager();
    send(rules.bind(GROUP, text("icu"), text("default")))
        .await
        .unwrap();
    let hr = code_key("8867-4");
    send(
        h.admin
            .allowed_types()
            .setAllowed(text("icu"), vec![hr], true),
    )
    .await
    .unwrap();
    send(h.admin.value_range().clearRange(code_key("2339-0")))
        .await
        .unwrap();
    h.patient
        .grant_consent(p, Grantee::Role(StaffRole::Nurse), Scope::ALL, "", expiry)
        .await
        .unwrap();
    let revoked = h
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
    h.patient.revoke_consent(p, revoked).await.unwrap();
    h.patient.set_opt_out(p, true).await.unwrap();
    send(h.admin.access_log().setAccessTtl(3600)).await.unwrap();
    // A server records an erasure.
    let server = h.account();
    send(registry.registerNode(server.address, 2, text("server")))
        .await
        .unwrap();
    server
        .anchor_root(4, B256::repeat_byte(1), 1, gone, B256::ZERO)
        .await
        .unwrap();

    // A normal deployment can restore nothing.
    assert_refused(
        send(h.admin.consent().restoreOptOut(p)).await,
        "NotRestoring",
    );

    // The recovery copy: every log of the set, in chain order.
    let old = *h.admin.addresses();
    let logs: Vec<_> = h
        .admin
        .provider()
        .get_logs(&Filter::new().address(old.all()).from_block(0))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.inner)
        .collect();
    assert_eq!(addresses_from_logs(old.registry, &logs).unwrap(), old);
    let mut replica = Replica::new(old);
    for log in &logs {
        replica.apply(log).unwrap();
    }
    assert_eq!(replica.erasures(), vec![gone.0], "stays forgotten");

    // A new chain, deployed by another admin who leaves at the end.
    let dir = tempfile::tempdir().unwrap();
    let deployer = PrivateKeySigner::random();
    let node = Node::start(&NodeConfig {
        data_dir: dir.path().to_owned(),
        chain_id: 31337,
        allow: vec![deployer.address()],
        sealing: Sealing::OnDemand {
            min_interval: Duration::from_millis(1),
        },
    })
    .unwrap();
    let new = Contracts::danger_deploy_restoring(provider(&node, &deployer))
        .await
        .unwrap();
    let done = replica.restore(&new, deployer.address()).await.unwrap();
    assert_eq!(
        (done.staff, done.nodes, done.devices, done.patients),
        (3, 2, 3, 2)
    );
    assert_eq!((done.grants, done.opt_outs, done.bindings), (1, 1, 1));
    assert!(done.custom_rules.is_empty());

    let r = new.registry();
    assert!(r.isAdmin(h.admin.address).call().await.unwrap());
    assert!(!r.isAdmin(deployer.address()).call().await.unwrap());
    let a = r.admission(p).call().await.unwrap();
    assert_eq!(
        (a.active, a.account, a.room),
        (true, h.patient.address, text("room-201"))
    );
    assert!(r.isAssignedCarer(p, h.doctor.address).call().await.unwrap());
    assert!(!r.isAssignedCarer(p, h.nurse.address).call().await.unwrap());
    assert!(!r.staff(h.other_doctor.address).call().await.unwrap().active);
    assert!(r.isActiveNode(h.collector.address).call().await.unwrap());
    assert_eq!(
        r.certificateOf(h.patient.address).call().await.unwrap(),
        B256::repeat_byte(1)
    );
    assert_eq!(
        r.certificateOf(h.doctor.address).call().await.unwrap(),
        B256::repeat_byte(2)
    );
    assert!(r.isRevoked(h.nurse.address).call().await.unwrap());
    assert_eq!(
        r.certificateOf(h.nurse.address).call().await.unwrap(),
        B256::ZERO
    );
    let b = r
        .deviceBindings(vec![worn, lent, retired])
        .call()
        .await
        .unwrap();
    assert_eq!(
        b.iter()
            .map(|b| (b.registered, b.active, b.patientRef))
            .collect::<Vec<_>>(),
        vec![
            (true, true, p),
            (true, true, B256::ZERO),
            (true, false, B256::ZERO)
        ]
    );
    assert_eq!(b[0].certFingerprint, B256::repeat_byte(7));
    let discharged = r.admission(gone).call().await.unwrap();
    assert_eq!(
        (discharged.active, discharged.account),
        (false, gone_account.address)
    );

    let rm = new.rule_manager();
    assert_eq!(
        rm.bindings(GROUP, text("icu")).call().await.unwrap(),
        text("default")
    );
    assert!(
        new.allowed_types()
            .allowed(text("icu"), hr)
            .call()
            .await
            .unwrap()
    );
    let vr = new.value_range();
    assert!(!vr.ranges(code_key("2339-0")).call().await.unwrap().set);
    assert!(vr.ranges(code_key("8867-4")).call().await.unwrap().set);

    assert_eq!(new.access_log().accessTtl().call().await.unwrap(), 3600);
    let c = new.consent();
    let live = c.liveGrants(p).call().await.unwrap();
    assert_eq!(live.len(), 1, "the revoked grant stays behind");
    let g = c.grantOf(live[0]).call().await.unwrap();
    assert_eq!((g.grantee, g.role, g.expiry), (Address::ZERO, 2, expiry));
    assert!(c.optedOut(p).call().await.unwrap());
    assert!(!c.restoring().call().await.unwrap());
    // The deployer is no admin any more, and restoring is closed for good.
    assert_refused(send(c.closeRestore()).await, "NotAdmin");
}

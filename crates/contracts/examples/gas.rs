//! Gas used by every contract function, on the embedded chain: the table in
//! `docs/benchmarks.md`.
//!
//!     cargo run --release -p medledger-contracts --example gas

#![allow(clippy::unwrap_used)]

use alloy::primitives::{B256, U256, keccak256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::rpc::Rpc;
use medledger_chain::rpc::transport::InProcess;
use medledger_chain::{Node, NodeConfig, RegistryPermissions, Sealing};
use medledger_contracts::bindings::RuleManager::RuleInput;
use medledger_contracts::{
    Contracts, Scope, StaffRole, code_key, epc_bytes, milli, send, short_text, signing_provider,
};
use medledger_pki::Epc;
use std::sync::Arc;
use std::time::Duration;

fn provider(node: &Node, signer: &PrivateKeySigner) -> DynProvider {
    let client = RpcClient::new(InProcess::new(Rpc::new(node.clone())), true);
    signing_provider(signer.clone(), client)
}

fn t(s: &str) -> B256 {
    short_text(s).unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let admin = PrivateKeySigner::random();
    let node = Node::start(&NodeConfig {
        data_dir: dir.path().to_owned(),
        chain_id: 1337,
        allow: vec![admin.address()],
        sealing: Sealing::OnDemand {
            min_interval: Duration::from_millis(1),
        },
    })
    .unwrap();
    let a = Contracts::deploy(provider(&node, &admin)).await.unwrap();
    node.set_permissions(Arc::new(RegistryPermissions::new(a.addresses().registry)));
    let mut rows: Vec<(String, u64)> = Vec::new();

    // Deployment: the creation transactions, by contract.
    let head = a.provider().get_block_number().await.unwrap();
    let names = [
        (a.addresses().registry, "Registry"),
        (a.addresses().rule_manager, "RuleManager"),
        (a.addresses().consent, "Consent"),
        (a.addresses().access_log, "AccessLog"),
        (a.addresses().anchor, "Anchor"),
        (a.addresses().allowed_types, "AllowedTypesRule"),
        (a.addresses().value_range, "ValueRangeRule"),
        (a.addresses().default_rule, "AllOfRule"),
    ];
    for n in 1..=head {
        let block = a
            .provider()
            .get_block_by_number(n.into())
            .await
            .unwrap()
            .unwrap();
        for hash in block.transactions.hashes() {
            let r = a
                .provider()
                .get_transaction_receipt(hash)
                .await
                .unwrap()
                .unwrap();
            if let Some(at) = r.contract_address {
                let name = names.iter().find(|(x, _)| *x == at).map_or("?", |(_, n)| n);
                rows.push((format!("deploy {name}"), r.gas_used));
            }
        }
    }

    macro_rules! gas {
        ($label:expr, $call:expr) => {{
            let receipt = send($call).await.unwrap();
            rows.push(($label.to_string(), receipt.gas_used));
            receipt
        }};
    }

    let [doctor, nurse, collector, patient] = std::array::from_fn(|_| PrivateKeySigner::random());
    let reg = a.registry();
    let second_admin = PrivateKeySigner::random().address();
    gas!("Registry.addAdmin", reg.addAdmin(second_admin));
    gas!("Registry.removeAdmin", reg.removeAdmin(second_admin));
    gas!(
        "Registry.registerStaff",
        reg.registerStaff(doctor.address(), StaffRole::Doctor.code(), t("cardiology"))
    );
    send(reg.registerStaff(nurse.address(), StaffRole::Nurse.code(), t("cardiology")))
        .await
        .unwrap();
    gas!(
        "Registry.registerNode",
        reg.registerNode(collector.address(), 1, t("cardiology/2"))
    );
    let p = keccak256("salt:p1");
    gas!(
        "Registry.admit (2 carers)",
        reg.admit(
            p,
            patient.address(),
            t("cardiology"),
            t("2"),
            t("201"),
            t("1"),
            vec![doctor.address(), nurse.address()]
        )
    );
    gas!(
        "Registry.transfer (1 carer)",
        reg.transfer(
            p,
            t("cardiology"),
            t("2"),
            t("202"),
            t("1"),
            vec![doctor.address()]
        )
    );
    gas!("Registry.assignCarer", reg.assignCarer(p, nurse.address()));
    gas!(
        "Registry.releaseCarer",
        reg.releaseCarer(p, nurse.address())
    );
    let epc = Epc::new(3, "0614141", "812345", 1).unwrap();
    let dev = epc_bytes(&epc);
    gas!(
        "Registry.registerDevice",
        reg.registerDevice(dev, t("icu-hr-monitor"), t("default"), B256::repeat_byte(1))
    );
    gas!(
        "Registry.setDeviceCertificate",
        reg.setDeviceCertificate(dev, B256::repeat_byte(2))
    );
    gas!("Registry.assignDevice", reg.assignDevice(dev, p));
    gas!("Registry.releaseDevice", reg.releaseDevice(dev));
    send(reg.assignDevice(dev, p)).await.unwrap();

    let rules = a.rule_manager();
    let allowed = a.allowed_types();
    let range = a.value_range();
    let codes = vec![code_key("8867-4"), code_key("59408-5")];
    gas!(
        "AllowedTypesRule.setAllowed (2 types)",
        allowed.setAllowed(t("icu-hr-monitor"), codes, true)
    );
    gas!(
        "ValueRangeRule.setRange",
        range.setRange(code_key("8867-4"), milli(25.0), milli(250.0))
    );
    gas!("RuleManager.bind", rules.bind(2, t("202"), t("default")));
    gas!("RuleManager.unbind", rules.unbind(2, t("202")));

    let pc = a.with_provider(provider(&node, &patient));
    let consent = pc.consent();
    let expiry = u64::MAX / 2;
    let vitals: Scope = "heart-rate,spo2".parse().unwrap();
    gas!(
        "Consent.grant",
        consent.grant(p, doctor.address(), 0, vitals.0, t("TREAT"), expiry)
    );
    gas!("Consent.setOptOut", consent.setOptOut(p, true));
    gas!("Consent.revoke", consent.revoke(p, U256::from(1)));
    send(consent.setOptOut(p, false)).await.unwrap();

    let dc = a.with_provider(provider(&node, &doctor));
    let log = dc.access_log();
    gas!(
        "AccessLog.requestAccess (carer, granted)",
        log.requestAccess(p, vitals.0, t("TREAT"))
    );
    send(
        pc.consent()
            .grant(p, nurse.address(), 0, vitals.0, t(""), expiry),
    )
    .await
    .unwrap();
    let nc = a.with_provider(provider(&node, &nurse));
    gas!(
        "AccessLog.requestAccess (consent, granted)",
        nc.access_log().requestAccess(p, vitals.0, t("TREAT"))
    );
    let stranger_p = keccak256("salt:nobody");
    gas!(
        "AccessLog.requestAccess (denied)",
        log.requestAccess(stranger_p, vitals.0, t("TREAT"))
    );
    gas!(
        "AccessLog.breakGlass",
        log.breakGlass(p, Scope::ALL.0, t("cardiac-arrest"))
    );
    gas!(
        "AccessLog.annotate",
        log.annotate(U256::from(4), B256::repeat_byte(3), 1, B256::repeat_byte(4))
    );
    gas!(
        "AccessLog.closeReview",
        a.access_log().closeReview(U256::from(4), t("justified"))
    );

    let cc = a.with_provider(provider(&node, &collector));
    let anchor = cc.anchor();
    gas!(
        "Anchor.anchor",
        anchor.anchor(
            1,
            B256::repeat_byte(5),
            100,
            B256::repeat_byte(6),
            B256::repeat_byte(7)
        )
    );

    println!("| function | gas used |\n|---|---:|");
    for (label, gas) in &rows {
        println!("| `{label}` | {gas} |");
    }

    // Rule checks are calls (no transaction): gas per batch, and per reading.
    println!("\n| `RuleManager.check` batch | gas | gas per reading |\n|---:|---:|---:|");
    for n in [1usize, 10, 100, 1000] {
        let input = RuleInput {
            epc: dev,
            code: code_key("8867-4"),
            min: milli(72.0),
            max: milli(72.0),
        };
        let gas = rules.check(vec![input; n]).estimate_gas().await.unwrap();
        println!("| {n} | {gas} | {} |", gas / n as u64);
    }
}

//! The same typed client against anvil: the contracts do not depend on our
//! node.

use crate::common::{assert_refused, text};
use alloy::primitives::keccak256;
use alloy::providers::Provider;
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::test_utils::{Anvil, tool};
use medledger_contracts::bindings::RuleManager::RuleInput;
use medledger_contracts::{
    Basis, Contracts, RuleReason, Scope, StaffRole, code_key, epc_bytes, milli, send,
    signing_provider,
};

/// anvil's first two development keys (funded there).
const DEV_KEYS: [&str; 2] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_runs_against_anvil() {
    // HTTP clients (reqwest, with rustls when the S3 client turns it on)
    // take the process's crypto provider: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(bin) = tool("anvil") else {
        return;
    };
    let anvil = Anvil::start(&bin, &[]);
    let [admin, doctor]: [PrivateKeySigner; 2] = DEV_KEYS.map(|k| k.parse().unwrap());
    let connect = |signer: &PrivateKeySigner| {
        signing_provider(
            signer.clone(),
            RpcClient::new_http(anvil.url.parse().unwrap()),
        )
    };
    let a = Contracts::deploy(connect(&admin)).await.unwrap();
    let found = Contracts::at(connect(&doctor), a.addresses().registry)
        .await
        .unwrap();
    assert_eq!(found.addresses(), a.addresses());

    let reg = a.registry();
    send(reg.registerStaff(doctor.address(), StaffRole::Doctor.code(), text("icu")))
        .await
        .unwrap();
    let p = keccak256("salt:anvil");
    let patient = PrivateKeySigner::random().address();
    let (d, f, r, b) = (text("icu"), text("1"), text("101"), text("1"));
    send(reg.admit(p, patient, d, f, r, b, vec![doctor.address()]))
        .await
        .unwrap();
    let decision = found.request_access(p, Scope::ALL, "TREAT").await.unwrap();
    assert_eq!(decision.outcome, Ok(Basis::Carer));
    assert!(
        found
            .request_usable(decision.id, doctor.address())
            .await
            .unwrap()
    );

    // Rules run the same; refusals decode the same.
    let epc = medledger_pki::Epc::new(3, "0614141", "812345", 7).unwrap();
    send(reg.registerDevice(
        epc_bytes(&epc),
        text("g"),
        text("default"),
        Default::default(),
    ))
    .await
    .unwrap();
    send(
        a.allowed_types()
            .setAllowed(text("g"), vec![code_key("8867-4")], true),
    )
    .await
    .unwrap();
    let input = |v| RuleInput {
        epc: epc_bytes(&epc),
        code: code_key("8867-4"),
        min: milli(v),
        max: milli(v),
    };
    let (reasons, _) = a
        .check_readings(vec![input(70.0), input(400.0)])
        .await
        .unwrap();
    assert_eq!(reasons, [RuleReason::Allow, RuleReason::AboveRange]);
    assert_refused(
        send(found.registry().addAdmin(doctor.address())).await,
        "NotAdmin",
    );
    assert!(a.provider().get_block_number().await.unwrap() > 10);
}

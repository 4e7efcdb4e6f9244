//! How fast the collector can run the rule contracts themselves:
//! `RuleManager.check` over a batch of readings, executed by the embedded
//! node's EVM (no RPC), per batch size.
//!
//!     cargo bench -p medledger-contracts --bench rules

#![allow(clippy::unwrap_used, missing_docs)]

use alloy::primitives::{B256, U256};
use alloy::providers::Provider;
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use medledger_chain::executor::CallRequest;
use medledger_chain::rpc::Rpc;
use medledger_chain::rpc::transport::InProcess;
use medledger_chain::{Node, NodeConfig, Sealing};
use medledger_contracts::bindings::RuleManager::{self, RuleInput};
use medledger_contracts::{
    Contracts, code_key, epc_bytes, milli, send, short_text, signing_provider,
};
use medledger_pki::Epc;
use std::time::Duration;

fn rules(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let admin = PrivateKeySigner::random();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = runtime.enter();
    let node = Node::start(&NodeConfig {
        data_dir: dir.path().to_owned(),
        chain_id: 1337,
        allow: vec![admin.address()],
        sealing: Sealing::OnDemand {
            min_interval: Duration::from_millis(1),
        },
    })
    .unwrap();
    let epc = Epc::new(3, "0614141", "812345", 1).unwrap();
    let manager = runtime.block_on(async {
        let client = RpcClient::new(InProcess::new(Rpc::new(node.clone())), true);
        let provider = signing_provider(admin.clone(), client);
        let a = Contracts::deploy(provider).await.unwrap();
        let group = short_text("icu-hr-monitor").unwrap();
        let reg = a.registry();
        let default = short_text("default").unwrap();
        send(reg.registerDevice(epc_bytes(&epc), group, default, B256::ZERO))
            .await
            .unwrap();
        let types = vec![code_key("8867-4"), code_key("59408-5")];
        send(a.allowed_types().setAllowed(group, types, true))
            .await
            .unwrap();
        assert!(a.provider().get_block_number().await.unwrap() > 0);
        a.addresses().rule_manager
    });

    let mut group = c.benchmark_group("RuleManager.check");
    for n in [1usize, 100, 1000] {
        let input = RuleInput {
            epc: epc_bytes(&epc),
            code: code_key("8867-4"),
            min: milli(72.0),
            max: milli(72.0),
        };
        let req = CallRequest {
            from: alloy::primitives::Address::ZERO,
            to: Some(manager),
            gas: None,
            value: U256::ZERO,
            data: RuleManager::checkCall {
                readings: vec![input; n],
            }
            .abi_encode()
            .into(),
        };
        // The answer is right before it is timed.
        let out = RuleManager::checkCall::abi_decode_returns(&node.call(&req).unwrap()).unwrap();
        assert!(out.reasons.iter().all(|r| *r == 0) && out.reasons.len() == n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &req, |b, req| {
            b.iter(|| node.call(req).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, rules);
criterion_main!(benches);

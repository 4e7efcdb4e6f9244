//! Standard tools against our node, and our client code against anvil:
//! neither side is tied to the other.
//!
//! The binaries come from npm (`cd contracts && npm ci`, which `.ci/run`
//! does); `MEDLEDGER_ANVIL` and `MEDLEDGER_CAST` override their paths.

use crate::common::{config, serve};
use alloy::network::EthereumWallet;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::Node;
use medledger_chain::test_utils::{Anvil, tool};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// anvil's first development key.
const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

fn cast(cast: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(cast).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cast {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cast_sends_and_reads_blocks_and_receipts() {
    let Some(cast_bin) = tool("cast") else { return };
    let dev: PrivateKeySigner = DEV_KEY.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&config(dir.path(), vec![dev.address()])).unwrap();
    let url = serve(&node).await;
    let sent = tokio::task::spawn_blocking({
        let (cast_bin, url) = (cast_bin.clone(), url.clone());
        move || {
            cast(
                &cast_bin,
                &[
                    "send",
                    "--json",
                    "--private-key",
                    DEV_KEY,
                    "--rpc-url",
                    &url,
                    "0x0000000000000000000000000000000000000042",
                ],
            )
        }
    })
    .await
    .unwrap();
    let sent: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["status"], "0x1");
    let hash = sent["transactionHash"].as_str().unwrap().to_owned();
    let (receipt, block) = tokio::task::spawn_blocking(move || {
        (
            cast(&cast_bin, &["receipt", "--json", "--rpc-url", &url, &hash]),
            cast(&cast_bin, &["block", "1", "--json", "--rpc-url", &url]),
        )
    })
    .await
    .unwrap();
    let receipt: Value = serde_json::from_str(&receipt).unwrap();
    let block: Value = serde_json::from_str(&block).unwrap();
    assert_eq!(receipt["blockNumber"], "0x1");
    assert_eq!(
        receipt["from"].as_str().unwrap().to_lowercase(),
        dev.address().to_string().to_lowercase()
    );
    assert_eq!(block["hash"], receipt["blockHash"]);
    assert_eq!(block["transactions"][0], sent["transactionHash"]);
    let header = node.store().header(1).unwrap().unwrap();
    assert_eq!(
        block["hash"].as_str().unwrap(),
        header.hash_slow().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_code_runs_against_anvil() {
    let Some(anvil_bin) = tool("anvil") else {
        return;
    };
    let anvil = Anvil::start(&anvil_bin, &[]);
    // HTTP clients (reqwest, with rustls when the S3 client turns it on)
    // take the process's crypto provider: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let dev: PrivateKeySigner = DEV_KEY.parse().unwrap();
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(dev.clone()))
        .connect_http(anvil.url.parse().unwrap())
        .erased();
    crate::contract::exercise(provider, dev.address()).await;
}

/// anvil from an empty genesis (chain 31337, Prague, base fee 0), so that
/// its state matches ours transaction for transaction.
async fn empty_anvil(anvil_bin: &std::path::Path, dir: &std::path::Path) -> Anvil {
    let genesis = serde_json::json!({
        "config": {
            "chainId": 31337, "homesteadBlock": 0, "eip150Block": 0, "eip155Block": 0, "eip158Block": 0,
            "byzantiumBlock": 0, "constantinopleBlock": 0, "petersburgBlock": 0, "istanbulBlock": 0,
            "berlinBlock": 0, "londonBlock": 0, "shanghaiTime": 0, "cancunTime": 0, "pragueTime": 0,
            "terminalTotalDifficulty": 0, "terminalTotalDifficultyPassed": true
        },
        "nonce": "0x0", "timestamp": "0x0", "extraData": "0x", "gasLimit": "0x5f5e100", "difficulty": "0x0",
        "mixHash": format!("0x{}", "0".repeat(64)), "coinbase": format!("0x{}", "0".repeat(40)),
        "alloc": {}, "baseFeePerGas": "0x0"
    });
    let path = dir.join("anvil-genesis.json");
    std::fs::write(&path, genesis.to_string()).unwrap();
    // anvil funds its development accounts even with --init; ours are not.
    let args = [
        "--base-fee",
        "0",
        "--gas-price",
        "0",
        "--balance",
        "0",
        "--init",
    ]
    .map(std::ffi::OsStr::new);
    let mut args = args.to_vec();
    args.push(path.as_os_str());
    let _ = rustls::crypto::ring::default_provider().install_default();
    Anvil::start(anvil_bin, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_roots_match_anvil_for_the_same_transactions() {
    use crate::common::Counter;
    use crate::rejections::sign_1559;
    use alloy::consensus::TxEip1559;
    use alloy::primitives::{Bytes, TxKind, U256};
    use alloy::sol_types::{SolCall, SolConstructor};

    let Some(anvil_bin) = tool("anvil") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let anvil_node = empty_anvil(&anvil_bin, dir.path()).await;
    let anvil = ProviderBuilder::new().connect_http(anvil_node.url.parse().unwrap());

    let dev: PrivateKeySigner = DEV_KEY.parse().unwrap();
    let node = Node::start(&config(&dir.path().join("chain"), vec![dev.address()])).unwrap();

    // The same signed transactions for both: a deployment and calls that
    // write storage and emit events.
    let counter = dev.address().create(0);
    let tx = |nonce: u64, to: TxKind, input: Vec<u8>, gas_limit: u64| TxEip1559 {
        chain_id: 31337,
        nonce,
        gas_limit,
        max_fee_per_gas: 0,
        max_priority_fee_per_gas: 0,
        to,
        value: U256::ZERO,
        input: Bytes::from(input),
        access_list: Default::default(),
    };
    let mut deploy = Counter::BYTECODE.to_vec();
    deploy.extend(
        Counter::constructorCall {
            start: U256::from(5),
        }
        .abi_encode(),
    );
    let calls = [
        Counter::incrementCall {}.abi_encode(),
        Counter::addCall { n: U256::from(7) }.abi_encode(),
        Counter::resetCall {}.abi_encode(),
        Counter::incrementCall {}.abi_encode(),
    ];
    let mut txs = vec![sign_1559(&dev, tx(0, TxKind::Create, deploy, 1_000_000))];
    for (nonce, input) in (1..).zip(calls) {
        txs.push(sign_1559(
            &dev,
            tx(nonce, TxKind::Call(counter), input, 100_000),
        ));
    }
    let mut last = None;
    for raw in &txs {
        anvil
            .send_raw_transaction(raw)
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        last = Some(node.send_raw_transaction(raw).unwrap());
    }
    let mut blocks = node.subscribe_blocks();
    let last = last.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while node.store().tx_location(&last).unwrap().is_none() {
            blocks.changed().await.unwrap();
        }
    })
    .await
    .unwrap();

    // anvil's Prague state also holds its system contracts (whose storage
    // changes with block timestamps), so rebuild the root from anvil's view
    // of the accounts these transactions made: nonce, balance, storage
    // root and code hash, each computed by anvil.
    let mut accounts = Vec::new();
    for address in [dev.address(), counter] {
        let proof = anvil.get_proof(address, Vec::new()).await.unwrap();
        accounts.push((
            address,
            alloy::trie::TrieAccount::new(
                proof.nonce,
                proof.balance,
                proof.storage_hash,
                proof.code_hash,
            ),
        ));
    }
    let expected = alloy::trie::root::state_root_unhashed(accounts);
    let ours = node.store().header(node.block_number()).unwrap().unwrap();
    assert_eq!(
        ours.state_root, expected,
        "our state root differs from anvil's accounts"
    );
    assert_eq!(
        Counter::new(counter, anvil.clone())
            .count()
            .call()
            .await
            .unwrap(),
        U256::from(1),
        "anvil ran the same transactions"
    );
}

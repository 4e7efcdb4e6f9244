//! `medledger chain` as a process: `kill -9` at any moment loses no block
//! whose receipt was returned, and the node resumes.

use alloy::consensus::{SignableTransaction, TxEnvelope, TxLegacy};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) struct Chain {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `medledger chain` and reads the RPC address it prints.
fn start(dir: &Path, allow: Address) -> Chain {
    start_with(dir, allow, &[])
}

/// [`start`] with more arguments.
pub(crate) fn start_with(dir: &Path, allow: Address, extra: &[&str]) -> Chain {
    let child = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args([
            "chain",
            "--data",
            dir.to_str().unwrap(),
            "--rpc",
            "127.0.0.1:0",
        ])
        .args([
            "--chain-id",
            "1337",
            "--min-block-interval-ms",
            "2",
            "--allow",
            &allow.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Owned by `Chain` from here on, so that it is killed and reaped on
    // every path.
    let mut chain = Chain {
        child,
        url: String::new(),
    };
    let stdout = BufReader::new(chain.child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("JSON-RPC") {
            chain.url = url.trim().to_owned();
            return chain;
        }
    }
    panic!("medledger chain exited before serving");
}

fn transfer(signer: &PrivateKeySigner, nonce: u64) -> Bytes {
    let mut tx = TxLegacy {
        chain_id: Some(1337),
        nonce,
        gas_price: 0,
        gas_limit: 21_000,
        to: TxKind::Call(Address::repeat_byte(0x42)),
        value: U256::ZERO,
        input: Bytes::new(),
    };
    let sig = signer.sign_transaction_sync(&mut tx).unwrap();
    TxEnvelope::from(tx.into_signed(sig)).encoded_2718().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_block_whose_receipt_was_returned() {
    let dir = tempfile::tempdir().unwrap();
    let signer = PrivateKeySigner::random();
    // (tx hash, block number, block hash) of every receipt returned.
    let mut confirmed: Vec<(B256, u64, B256)> = Vec::new();
    let mut nonce = 0u64;
    for round in 0..4u64 {
        let chain = start(dir.path(), signer.address());
        let provider = ProviderBuilder::new().connect_http(chain.url.parse().unwrap());
        // Everything confirmed before is still there, in the same block.
        for (hash, number, block) in &confirmed {
            let receipt = provider.get_transaction_receipt(*hash).await.unwrap();
            let receipt =
                receipt.unwrap_or_else(|| panic!("round {round}: receipt of {hash} lost"));
            assert_eq!(
                (receipt.block_number, receipt.block_hash),
                (Some(*number), Some(*block))
            );
        }
        nonce = provider
            .get_transaction_count(signer.address())
            .await
            .unwrap()
            .max(nonce);
        // Send and confirm some, then kill while more are in flight.
        for i in 0..12u64 {
            let hash = match provider
                .send_raw_transaction(&transfer(&signer, nonce))
                .await
            {
                Ok(pending) => *pending.tx_hash(),
                Err(e) => panic!("round {round}: {e}"),
            };
            nonce += 1;
            if i >= 8 {
                continue; // in flight when killed
            }
            let receipt = loop {
                if let Some(r) = provider.get_transaction_receipt(hash).await.unwrap() {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            confirmed.push((
                hash,
                receipt.block_number.unwrap(),
                receipt.block_hash.unwrap(),
            ));
        }
        // SIGKILL: no chance to flush anything.
        drop(chain);
        // Unconfirmed transactions may or may not have made it; the next
        // round asks the node for the nonce to use.
        nonce = 0;
    }
    assert!(confirmed.len() >= 32);
}

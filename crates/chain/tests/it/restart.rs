//! Blocks and state survive a restart; a tampered store is refused, naming
//! the first bad block.

use crate::common::{Counter, config, serve};
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::{ChainError, Node};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const HEADERS: TableDefinition<u64, &[u8]> = TableDefinition::new("headers");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const ACCOUNTS: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("accounts");

/// Runs a node on `dir` in its own runtime: deploys a counter and
/// increments it once. Returns the counter and the increment's tx hash.
pub(crate) fn first_life(dir: &Path, signer: &PrivateKeySigner) -> (Address, B256) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&config(dir, vec![signer.address()])).unwrap();
        let url = serve(&node).await;
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(url.parse().unwrap());
        let counter = Counter::deploy(provider, U256::from(5)).await.unwrap();
        let receipt = counter
            .increment()
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        (*counter.address(), receipt.transaction_hash)
    })
    // Dropping the runtime stops the node and closes its store.
}

/// Starts a node on `dir` and returns its head block number.
pub(crate) fn restart(dir: &Path, signer: &PrivateKeySigner) -> Result<u64, ChainError> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        Node::start(&config(dir, vec![signer.address()])).map(|n| n.block_number())
    })
}

#[test]
fn blocks_receipts_and_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let signer = PrivateKeySigner::random();
    let (counter, tx) = first_life(dir.path(), &signer);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&config(dir.path(), vec![signer.address()])).unwrap();
        assert_eq!(node.block_number(), 2);
        let url = serve(&node).await;
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(url.parse().unwrap());
        let receipt = provider.get_transaction_receipt(tx).await.unwrap().unwrap();
        assert!(receipt.status());
        let counter = Counter::new(counter, provider.clone());
        assert_eq!(counter.count().call().await.unwrap(), U256::from(6));
        // The chain goes on where it stopped: nonce 2, block 3.
        let receipt = counter
            .increment()
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert_eq!(receipt.block_number, Some(3));
        assert_eq!(counter.count().call().await.unwrap(), U256::from(7));
    });
}

/// Empties block `number`'s transactions.
fn empty_body(dir: &Path, number: u64) {
    tamper(dir, |tx| {
        let mut bodies = tx.open_table(BODIES).unwrap();
        let empty = alloy::rlp::encode(Vec::<alloy::primitives::Bytes>::new());
        bodies.insert(number, empty.as_slice()).unwrap();
    });
}

pub(crate) fn tamper(dir: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(dir.join("chain.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    f(&tx);
    tx.commit().unwrap();
}

pub(crate) fn expect_tampered(result: Result<u64, ChainError>, block: u64, what: &str) {
    match result {
        Err(ChainError::Tampered { block: b, what: w }) => {
            assert_eq!(b, block, "{w}");
            assert!(w.contains(what), "expected `{what}` in `{w}`");
        }
        other => panic!("expected tampering at block {block}, got {other:?}"),
    }
}

#[test]
fn a_tampered_store_is_refused_naming_the_first_bad_block() {
    let signer = PrivateKeySigner::random();

    // A block's transactions replaced (blocks 1 and 2 come after the
    // checkpoint of the first start, at block 0).
    let dir = tempfile::tempdir().unwrap();
    first_life(dir.path(), &signer);
    empty_body(dir.path(), 1);
    expect_tampered(restart(dir.path(), &signer), 1, "transactions root");

    // genesis.json edited to allow another account.
    let dir = tempfile::tempdir().unwrap();
    first_life(dir.path(), &signer);
    let path = dir.path().join("genesis.json");
    let mut genesis: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    genesis["allow"]
        .as_array_mut()
        .unwrap()
        .push(Address::repeat_byte(7).to_string().into());
    std::fs::write(&path, serde_json::to_vec(&genesis).unwrap()).unwrap();
    expect_tampered(restart(dir.path(), &signer), 0, "genesis.json");

    // A header changed (its seal no longer matches).
    let dir = tempfile::tempdir().unwrap();
    first_life(dir.path(), &signer);
    tamper(dir.path(), |tx| {
        let mut headers = tx.open_table(HEADERS).unwrap();
        let raw = headers.get(1u64).unwrap().unwrap().value().to_vec();
        let mut header: alloy::consensus::Header =
            alloy::rlp::Decodable::decode(&mut raw.as_slice()).unwrap();
        header.gas_used += 1;
        headers
            .insert(1u64, alloy::rlp::encode(&header).as_slice())
            .unwrap();
    });
    expect_tampered(restart(dir.path(), &signer), 1, "seal");

    // The state changed behind the chain's back.
    let dir = tempfile::tempdir().unwrap();
    let (counter, _) = first_life(dir.path(), &signer);
    tamper(dir.path(), |tx| {
        let mut accounts = tx.open_table(ACCOUNTS).unwrap();
        let raw = accounts
            .get(&counter.0.0)
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        let mut forged = raw.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        accounts.insert(&counter.0.0, forged.as_slice()).unwrap();
    });
    expect_tampered(restart(dir.path(), &signer), 2, "state");
}

const CHECKPOINT: TableDefinition<u8, &[u8]> = TableDefinition::new("checkpoint");

/// A start walks only the blocks after the latest signed checkpoint (each
/// start writes one at its head); `verify_chain` walks them all; a
/// checkpoint not signed by the authority it names is ignored.
#[test]
fn a_start_walks_from_the_signed_checkpoint_and_a_forged_one_is_ignored() {
    let signer = PrivateKeySigner::random();
    let dir = tempfile::tempdir().unwrap();
    first_life(dir.path(), &signer);
    assert_eq!(restart(dir.path(), &signer).unwrap(), 2, "untouched");
    // Block 1 changed below the checkpoint now at block 2: a start does
    // not walk it (the authority's signature covers it); the full check
    // finds it.
    empty_body(dir.path(), 1);
    assert_eq!(restart(dir.path(), &signer).unwrap(), 2);
    expect_tampered(
        medledger_chain::verify_chain(dir.path()),
        1,
        "transactions root",
    );

    // A checkpoint signed by a key that is not the authority's: ignored,
    // the whole chain walked, the change found.
    let genesis = medledger_chain::Genesis::load(dir.path()).unwrap();
    let head = {
        let db = redb::Database::create(dir.path().join("chain.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let raw = tx
            .open_table(HEADERS)
            .unwrap()
            .get(2u64)
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        let header: alloy::consensus::Header =
            alloy::rlp::Decodable::decode(&mut raw.as_slice()).unwrap();
        header.hash_slow()
    };
    let stranger = medledger_pki::EthAccount::generate();
    let forged = medledger_chain::checkpoint::Checkpoint {
        number: 2,
        hash: head,
        authorities: medledger_chain::authority::Authorities::new(&genesis),
    }
    .sign(stranger.signing_key(), genesis.hash());
    tamper(dir.path(), |tx| {
        tx.open_table(CHECKPOINT)
            .unwrap()
            .insert(0u8, forged.as_slice())
            .unwrap();
    });
    expect_tampered(restart(dir.path(), &signer), 1, "transactions root");

    // A block past the checkpoint is walked at every start.
    let dir = tempfile::tempdir().unwrap();
    first_life(dir.path(), &signer);
    assert_eq!(restart(dir.path(), &signer).unwrap(), 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&config(dir.path(), vec![signer.address()])).unwrap();
        let url = serve(&node).await;
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(url.parse().unwrap());
        let tx = alloy::rpc::types::TransactionRequest::default()
            .to(Address::repeat_byte(1))
            .value(U256::ZERO);
        let receipt = provider
            .send_transaction(tx)
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert_eq!(receipt.block_number, Some(3));
    });
    drop(rt);
    empty_body(dir.path(), 3);
    expect_tampered(restart(dir.path(), &signer), 3, "transactions root");
}

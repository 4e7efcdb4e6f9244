//! Rotating the authority key: the chain survives whole, the successor
//! seals, the retired key is refused for good, and a rotation cut short
//! at any step is finished or rolled back at the next start.

use crate::common::{Counter, config, serve};
use crate::rejections::{sign_1559, transfer};
use crate::restart::{expect_tampered, first_life, restart, tamper};
use alloy::consensus::Header;
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B64, Bytes, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::authority::{HANDOVER_NONCE, ORDINARY_NONCE};
use medledger_chain::genesis::layout;
use medledger_chain::rotation::{self, Rotation};
use medledger_chain::{ChainError, Node, TxError, seal};
use medledger_pki::EthAccount;
use redb::TableDefinition;
use std::path::Path;
use std::time::Duration;

const HEADERS: TableDefinition<u64, &[u8]> = TableDefinition::new("headers");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipts");
const HASHES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("hashes");

fn key_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(layout::AUTHORITY_KEY)).unwrap()
}

fn header(dir: &Path, number: u64) -> Header {
    let store = medledger_chain::store::Store::open(&dir.join(layout::STORE)).unwrap();
    store.header(number).unwrap().unwrap()
}

/// No file in `dir` holds `key` (the hex form written to key files).
fn assert_no_copy_of(dir: &Path, key: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let found = bytes.windows(key.len()).any(|w| w == key.trim().as_bytes());
        assert!(!found, "{} still holds the retired key", path.display());
    }
}

#[test]
fn after_a_rotation_the_chain_goes_on_sealed_by_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = PrivateKeySigner::random();
    let (counter, tx) = first_life(d, &signer);
    let genesis_authority = medledger_chain::Genesis::load(d).unwrap().authority;
    let old_key = key_text(d);

    let rotation = rotation::rotate(d).unwrap();
    assert_eq!(rotation.retired, genesis_authority);
    assert_ne!(rotation.authority, genesis_authority);
    assert_eq!(rotation.handover, 3, "blocks 1 and 2 held the counter");
    // The handover block: sealed by the old key, naming the new one.
    let handover = header(d, 3);
    assert_eq!(handover.nonce, HANDOVER_NONCE);
    assert_eq!(handover.beneficiary, rotation.authority);
    assert_eq!(seal::signer(&handover).unwrap(), genesis_authority);
    assert_eq!(handover.parent_hash, header(d, 2).hash_slow());
    // Only the new key is left, 0600; no copy of the old one.
    assert!(!d.join(layout::NEXT_AUTHORITY_KEY).exists());
    let new_key = EthAccount::from_hex(&key_text(d)).unwrap();
    assert_eq!(new_key.address(), rotation.authority);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(layout::AUTHORITY_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_no_copy_of(d, &old_key);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&config(d, vec![signer.address()])).unwrap();
        assert_eq!(node.authority(), rotation.authority);
        assert_eq!(node.block_number(), 3);
        let url = serve(&node).await;
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(url.parse().unwrap());
        // Old blocks, receipts and state are all there.
        let receipt = provider.get_transaction_receipt(tx).await.unwrap().unwrap();
        assert!(receipt.status());
        assert_eq!(receipt.block_number, Some(2));
        let counter = Counter::new(counter, provider.clone());
        assert_eq!(counter.count().call().await.unwrap(), U256::from(6));
        let receipt = counter
            .increment()
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert_eq!(receipt.block_number, Some(4));
        assert_eq!(counter.count().call().await.unwrap(), U256::from(7));
        let block = provider
            .get_block_by_number(4.into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(block.header.beneficiary, rotation.authority);
    });
    drop(rt);
    // The new key sealed block 4, and the whole chain verifies again.
    let sealed = header(d, 4);
    assert_eq!(seal::signer(&sealed).unwrap(), rotation.authority);
    assert_eq!(sealed.nonce, ORDINARY_NONCE);
    assert_eq!(restart(d, &signer).unwrap(), 4);
}

#[test]
fn two_rotations_in_a_row_hand_over_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = PrivateKeySigner::random();
    first_life(d, &signer);
    let first = rotation::rotate(d).unwrap();
    let second = rotation::rotate(d).unwrap();
    assert_eq!(second.retired, first.authority);
    assert_eq!((first.handover, second.handover), (3, 4));
    assert_eq!(seal::signer(&header(d, 4)).unwrap(), first.authority);
    assert_eq!(header(d, 4).beneficiary, second.authority);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&config(d, vec![signer.address()])).unwrap();
        assert_eq!(node.authority(), second.authority);
        node.send_raw_transaction(&sign_1559(&signer, transfer(31337, 2, 21_000)))
            .unwrap();
        node.wait_for_block(5, Duration::from_secs(10))
            .await
            .unwrap();
    });
    drop(rt);
    assert_eq!(seal::signer(&header(d, 5)).unwrap(), second.authority);
    assert_eq!(restart(d, &signer).unwrap(), 5);
}

/// A block sealed by `key` on top of the stored head, written into the
/// store directly (as someone holding a retired key would).
fn append_forged_block(dir: &Path, key: &EthAccount, beneficiary: Address, nonce: B64) -> u64 {
    let head = {
        let store = medledger_chain::store::Store::open(&dir.join(layout::STORE)).unwrap();
        let number = store.head().unwrap().unwrap();
        store.header(number).unwrap().unwrap()
    };
    let mut forged = Header {
        parent_hash: head.hash_slow(),
        number: head.number + 1,
        timestamp: head.timestamp + 1,
        mix_hash: head.hash_slow(),
        beneficiary,
        nonce,
        ..head.clone()
    };
    forged.transactions_root = alloy::trie::EMPTY_ROOT_HASH;
    forged.receipts_root = alloy::trie::EMPTY_ROOT_HASH;
    forged.gas_used = 0;
    forged.logs_bloom = Default::default();
    seal::seal(&mut forged, key.signing_key());
    let number = forged.number;
    let empty = alloy::rlp::encode(Vec::<Bytes>::new());
    tamper(dir, |tx| {
        tx.open_table(HEADERS)
            .unwrap()
            .insert(number, alloy::rlp::encode(&forged).as_slice())
            .unwrap();
        tx.open_table(BODIES)
            .unwrap()
            .insert(number, empty.as_slice())
            .unwrap();
        tx.open_table(RECEIPTS)
            .unwrap()
            .insert(number, empty.as_slice())
            .unwrap();
        tx.open_table(HASHES)
            .unwrap()
            .insert(&forged.hash_slow().0, number)
            .unwrap();
    });
    number
}

#[test]
fn a_block_sealed_by_the_retired_key_after_its_handover_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = PrivateKeySigner::random();
    first_life(d, &signer);
    let old = EthAccount::from_hex(&key_text(d)).unwrap();
    // Before the rotation, the same forgery is an ordinary valid block.
    let control = tempfile::tempdir().unwrap();
    for name in [layout::AUTHORITY_KEY, layout::GENESIS, layout::STORE] {
        std::fs::copy(d.join(name), control.path().join(name)).unwrap();
    }
    append_forged_block(control.path(), &old, old.address(), ORDINARY_NONCE);
    assert_eq!(restart(control.path(), &signer).unwrap(), 3);

    let Rotation {
        retired, authority, ..
    } = rotation::rotate(d).unwrap();
    let forged = append_forged_block(d, &old, old.address(), ORDINARY_NONCE);
    assert_eq!(forged, 4);
    let result = restart(d, &signer);
    expect_tampered(result, 4, "retired authority");
    let Err(e) = restart(d, &signer) else {
        unreachable!()
    };
    let message = e.to_string();
    assert!(message.contains(&retired.to_string()), "{message}");
    assert!(message.contains(&authority.to_string()), "{message}");
    assert!(message.contains("block 3"), "{message}");
    // Nor can the retired key hand over to a key of its own.
    let dir = tempfile::tempdir().unwrap();
    first_life(dir.path(), &signer);
    let old = EthAccount::from_hex(&key_text(dir.path())).unwrap();
    rotation::rotate(dir.path()).unwrap();
    let own = EthAccount::generate();
    append_forged_block(dir.path(), &old, own.address(), HANDOVER_NONCE);
    expect_tampered(restart(dir.path(), &signer), 4, "retired authority");
}

#[test]
fn a_rotation_cut_short_before_its_handover_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = PrivateKeySigner::random();
    first_life(d, &signer);
    let old_key = key_text(d);
    let next = EthAccount::generate();
    std::fs::write(
        d.join(layout::NEXT_AUTHORITY_KEY),
        format!("{}\n", next.to_hex()),
    )
    .unwrap();
    assert_eq!(restart(d, &signer).unwrap(), 2, "no block was added");
    assert!(!d.join(layout::NEXT_AUTHORITY_KEY).exists());
    assert_eq!(key_text(d), old_key);
    // A successor key cut short mid-write is rolled back too.
    std::fs::write(d.join(layout::NEXT_AUTHORITY_KEY), "0x12").unwrap();
    assert_eq!(restart(d, &signer).unwrap(), 2);
    assert!(!d.join(layout::NEXT_AUTHORITY_KEY).exists());
    // And a rotation after that works.
    assert_eq!(rotation::rotate(d).unwrap().handover, 3);
}

#[test]
fn a_rotation_cut_short_after_its_handover_is_finished() {
    // The old key as it was, or already zeroed (the step before the rename).
    for zeroed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let signer = PrivateKeySigner::random();
        first_life(d, &signer);
        let old_key = key_text(d);
        let rotation = rotation::rotate(d).unwrap();
        // Put the files back as they were between the handover's commit
        // and the rename.
        std::fs::rename(
            d.join(layout::AUTHORITY_KEY),
            d.join(layout::NEXT_AUTHORITY_KEY),
        )
        .unwrap();
        let old = if zeroed {
            vec![0; old_key.len()]
        } else {
            old_key.clone().into_bytes()
        };
        std::fs::write(d.join(layout::AUTHORITY_KEY), old).unwrap();

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let node = Node::start(&config(d, vec![signer.address()])).unwrap();
            assert_eq!(node.authority(), rotation.authority);
            node.send_raw_transaction(&sign_1559(&signer, transfer(31337, 2, 21_000)))
                .unwrap();
            node.wait_for_block(4, Duration::from_secs(10))
                .await
                .unwrap();
        });
        drop(rt);
        assert!(!d.join(layout::NEXT_AUTHORITY_KEY).exists());
        let key = EthAccount::from_hex(&key_text(d)).unwrap();
        assert_eq!(key.address(), rotation.authority);
        assert_no_copy_of(d, &old_key);
        assert_eq!(seal::signer(&header(d, 4)).unwrap(), rotation.authority);
    }
}

#[test]
fn the_retired_authority_may_no_longer_send_and_the_new_one_may() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = PrivateKeySigner::random();
    first_life(d, &signer);
    let old: PrivateKeySigner = key_text(d).trim().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&config(d, vec![signer.address()])).unwrap();
        // The authority of the day may send: here the genesis one.
        node.send_raw_transaction(&sign_1559(&old, transfer(31337, 0, 21_000)))
            .unwrap();
        node.wait_for_block(3, Duration::from_secs(10))
            .await
            .unwrap();
    });
    drop(rt);
    let rotation = rotation::rotate(d).unwrap();
    let new: PrivateKeySigner = key_text(d).trim().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&config(d, vec![signer.address()])).unwrap();
        assert_eq!(
            node.send_raw_transaction(&sign_1559(&old, transfer(31337, 1, 21_000))),
            Err(TxError::NotPermitted(rotation.retired))
        );
        node.send_raw_transaction(&sign_1559(&new, transfer(31337, 0, 21_000)))
            .unwrap();
        node.wait_for_block(5, Duration::from_secs(10))
            .await
            .unwrap();
    });
}

#[test]
fn rotation_refuses_a_directory_without_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let e = rotation::rotate(dir.path()).unwrap_err();
    assert!(e.to_string().contains("genesis.json is missing"), "{e}");
    assert!(matches!(e, ChainError::Store { .. }));
}

#[test]
fn rotation_refuses_while_the_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&config(d, Vec::new())).unwrap();
        let e = rotation::rotate(d).unwrap_err();
        assert!(matches!(e, ChainError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("stop it first"), "{e}");
        assert!(!d.join(layout::NEXT_AUTHORITY_KEY).exists());
        assert_eq!(node.block_number(), 0);
    });
}

//! The offline rotation of the authority's key.
//!
//! [`rotate`] hands over (see [`crate::authority`] for handovers) with the node stopped, crash-safe at every step:
//!
//! ```text
//!  1. authority.next.key  <- new key (0600, fsync file and directory)
//!  2. chain.redb          <- handover block sealed by the old key (commit)
//!  3. authority.key       <- zeroed, then replaced by authority.next.key
//!                            (rename, fsync directory)
//! ```
//!
//! Every start of the node (and every [`rotate`]) finishes a rotation cut
//! short after step 2 (the chain hands over to the key in
//! `authority.next.key`: step 3 is redone) and rolls back one cut short
//! before it (`authority.next.key` is deleted).

use crate::authority::{Authorities, HANDOVER_NONCE};
use crate::genesis::{Genesis, layout, now_secs};
use crate::head::Head;
use crate::seal;
use crate::store::{BlockData, Store};
use crate::{ChainError, Result, checkpoint};
use alloy_consensus::proofs::{calculate_receipt_root, calculate_transaction_root};
use alloy_consensus::{Header, ReceiptEnvelope, TxEnvelope};
use alloy_primitives::{Address, Bloom};
use medledger_pki::{EthAccount, files};
use std::io::Write;
use std::path::Path;

/// What [`rotate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The authority that handed over; its key is gone from the directory.
    pub retired: Address,
    /// The new authority, whose key is now `authority.key`.
    pub authority: Address,
    /// The handover block (the retired key's last).
    pub handover: u64,
}

/// Rotates the authority key of the chain in `dir`, whose node must be
/// stopped: a new key, a handover block to it sealed by the current one,
/// and the new key in `authority.key` (the old one overwritten and
/// removed). Verifies the whole stored chain first.
pub fn rotate(dir: &Path) -> Result<Rotation> {
    let genesis = Genesis::load(dir)?;
    let store_path = dir.join(layout::STORE);
    if !store_path.exists() {
        return Err(ChainError::Store {
            what: format!("{} has no block store: {}", dir.display(), layout::STORE),
        });
    }
    let store = Store::open(&store_path)?;
    let (head, mut authorities) =
        crate::verify::verify_store(&store, &genesis, crate::verify::Start::AfterCheckpoint)?;
    let old = settle(dir, &authorities)?;
    let new = EthAccount::generate();

    // 1. The successor's key, durable before any block names it.
    let next_path = dir.join(layout::NEXT_AUTHORITY_KEY);
    files::write_secret(&next_path, format!("{}\n", new.to_hex()).as_bytes())?;
    sync_dir(dir)?;

    // 2. The handover block.
    let block = handover_block(&head, &genesis, &old, new.address());
    authorities
        .check(&block.header)
        .expect("a handover sealed by the current authority to a fresh key verifies");
    store.commit_block(&block, &Default::default())?;
    checkpoint::write(
        &store,
        &genesis,
        &new,
        &authorities,
        block.header.number,
        block.hash,
    );
    drop(store);

    // 3. The successor's key takes the old one's place.
    finish(dir)?;
    Ok(Rotation {
        retired: old.address(),
        authority: new.address(),
        handover: block.header.number,
    })
}

/// An empty block on `head`, sealed by `outgoing`, handing over to
/// `successor`.
fn handover_block(
    head: &Head,
    genesis: &Genesis,
    outgoing: &EthAccount,
    successor: Address,
) -> BlockData {
    let mut header = Header {
        parent_hash: head.hash,
        beneficiary: successor,
        state_root: head.header.state_root,
        transactions_root: calculate_transaction_root::<TxEnvelope>(&[]),
        receipts_root: calculate_receipt_root::<ReceiptEnvelope>(&[]),
        logs_bloom: Bloom::ZERO,
        number: head.header.number + 1,
        gas_limit: genesis.gas_limit,
        gas_used: 0,
        timestamp: now_secs().max(head.header.timestamp),
        mix_hash: head.hash,
        nonce: HANDOVER_NONCE,
        base_fee_per_gas: Some(0),
        ..Header::default()
    };
    seal::seal(&mut header, outgoing.signing_key());
    BlockData {
        hash: header.hash_slow(),
        header,
        txs: Vec::new(),
        tx_hashes: Vec::new(),
        receipts: Vec::new(),
    }
}

/// Loads the current authority's key from `dir`, first finishing or
/// rolling back a rotation that was cut short.
pub(crate) fn settle(dir: &Path, authorities: &Authorities) -> Result<EthAccount> {
    let key_path = dir.join(layout::AUTHORITY_KEY);
    let next_path = dir.join(layout::NEXT_AUTHORITY_KEY);
    let want = authorities.current();
    if next_path.exists() {
        match read_key(&next_path) {
            Ok(next) if next.address() == want => {
                // The handover block is committed: finish step 3.
                finish(dir)?;
                tracing::warn!(
                    "medledger chain: finished the interrupted rotation: the authority is {want} since block {}",
                    authorities.since()
                );
            }
            next => {
                // No block names it: the rotation never took effect.
                let current = read_key(&key_path)?;
                if current.address() != want {
                    return Err(ChainError::Store {
                        what: format!(
                            "neither {} ({}) nor {} ({}) holds the key of the chain's authority {want}",
                            key_path.display(),
                            current.address(),
                            next_path.display(),
                            next.map_or_else(|e| e.to_string(), |k| k.address().to_string()),
                        ),
                    });
                }
                std::fs::remove_file(&next_path).map_err(|e| ChainError::io(&next_path, e))?;
                sync_dir(dir)?;
                tracing::warn!(
                    "medledger chain: rolled back an interrupted rotation: the authority is still {want}"
                );
            }
        }
    }
    let key = read_key(&key_path)?;
    if key.address() != want {
        return Err(ChainError::Store {
            what: format!(
                "{} belongs to {}, but the chain's authority since block {} is {want}",
                key_path.display(),
                key.address(),
                authorities.since()
            ),
        });
    }
    Ok(key)
}

/// Step 3 of a rotation: overwrite the old key where it lies, then rename
/// the successor's key over it and make the rename durable.
fn finish(dir: &Path) -> Result<()> {
    let key_path = dir.join(layout::AUTHORITY_KEY);
    let next_path = dir.join(layout::NEXT_AUTHORITY_KEY);
    if key_path.exists() {
        // Best effort against recovery from the disk: on a filesystem that
        // writes in place (ext4, xfs) the old key's blocks are zeroed; a
        // copy-on-write one may keep them until reused.
        let io = |e| ChainError::io(&key_path, e);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&key_path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).expect("a key file fits in memory");
        file.write_all(&vec![0u8; len]).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&next_path, &key_path).map_err(|e| ChainError::io(&next_path, e))?;
    sync_dir(dir)
}

/// Reads an authority key file.
pub(crate) fn read_key(path: &Path) -> Result<EthAccount> {
    let text = String::from_utf8(files::read(path)?).unwrap_or_default();
    EthAccount::from_hex(&text).map_err(|e| ChainError::Store {
        what: format!("{}: {e}", path.display()),
    })
}

/// Makes the directory entries of `dir` (created, renamed, removed files)
/// durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ChainError::io(dir, e))
}

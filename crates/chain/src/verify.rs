//! Start-up verification of the stored chain: every block's parent link,
//! seal (by the authority of its time, tracked across handovers),
//! transactions root and receipts root, and the head's state root against
//! the stored state. The walk starts after the latest signed checkpoint
//! ([`crate::checkpoint`]), or at block 0 when there is none that verifies.

use crate::authority::Authorities;
use crate::checkpoint::Checkpoint;
use crate::genesis::Genesis;
use crate::head::Head;
use crate::store::Store;
use crate::{ChainError, Result};
use alloy_consensus::TxEnvelope;
use alloy_consensus::proofs::{calculate_receipt_root, calculate_transaction_root};
use alloy_eips::eip2718::Decodable2718;

fn tampered(block: u64, what: impl Into<String>) -> ChainError {
    ChainError::Tampered {
        block,
        what: what.into(),
    }
}

/// Where a verification starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// After the latest checkpoint that verifies (every start).
    AfterCheckpoint,
    /// At block 0 ([`crate::verify_chain`]).
    AtGenesis,
}

/// Checks the stored chain from `start` and returns the head with its
/// state, and who seals the next block.
pub(crate) fn verify_store(
    store: &Store,
    genesis: &Genesis,
    start: Start,
) -> Result<(Head, Authorities)> {
    let head_number = store.head()?.ok_or_else(|| ChainError::Store {
        what: "the store has no genesis block".into(),
    })?;
    let stored = match start {
        Start::AfterCheckpoint => store.checkpoint()?,
        Start::AtGenesis => None,
    };
    let checkpoint = match stored {
        Some(bytes) => match Checkpoint::verify(&bytes, genesis.hash(), store) {
            Ok(c) if c.number <= head_number => Some(c),
            Ok(c) => {
                tracing::warn!(
                    "medledger chain: the checkpoint names block {}, past the head {head_number}: walking the whole chain",
                    c.number
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    "medledger chain: the stored checkpoint is not used ({e}): walking the whole chain"
                );
                None
            }
        },
        None => None,
    };
    let (first, mut parent, mut authorities, mut last) = match checkpoint {
        Some(c) => {
            let header = store
                .header(c.number)?
                .expect("a checkpoint verifies only against a stored header");
            (c.number + 1, Some(c.hash), c.authorities, Some(header))
        }
        None => (0, None, Authorities::new(genesis), None),
    };
    if first > head_number {
        tracing::info!("medledger chain: the head, block {head_number}, is the signed checkpoint");
    } else if first > 0 {
        tracing::info!(
            "medledger chain: verifying blocks {first} to {head_number}, after the signed checkpoint at block {}",
            first - 1
        );
    }
    for number in first..=head_number {
        let header = store
            .header(number)
            .map_err(|e| tampered(number, e.to_string()))?
            .ok_or_else(|| tampered(number, "header is missing"))?;
        if header.number != number {
            return Err(tampered(
                number,
                format!("header says it is block {}", header.number),
            ));
        }
        if parent.is_some_and(|parent| header.parent_hash != parent) {
            return Err(tampered(
                number,
                "parent hash does not match the previous block",
            ));
        }
        if number == 0 && header.mix_hash != genesis.hash() {
            return Err(tampered(0, "block 0 does not match genesis.json"));
        }
        authorities
            .check(&header)
            .map_err(|e| tampered(number, format!("seal: {e}")))?;
        let hash = header.hash_slow();
        if store.block_number(&hash)? != Some(number) {
            return Err(tampered(
                number,
                "block hash index does not match the header",
            ));
        }
        let body = store
            .body(number)
            .map_err(|e| tampered(number, e.to_string()))?
            .ok_or_else(|| tampered(number, "body is missing"))?;
        let txs = body
            .iter()
            .map(|t| TxEnvelope::decode_2718_exact(&t.raw))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tampered(number, format!("transaction: {e}")))?;
        if calculate_transaction_root(&txs) != header.transactions_root {
            return Err(tampered(
                number,
                "transactions root does not match the body",
            ));
        }
        let receipts = store
            .receipts(number)
            .map_err(|e| tampered(number, e.to_string()))?
            .ok_or_else(|| tampered(number, "receipts are missing"))?;
        if calculate_receipt_root(&receipts) != header.receipts_root {
            return Err(tampered(
                number,
                "receipts root does not match the receipts",
            ));
        }
        parent = Some(hash);
        last = Some(header);
    }
    let header = last.expect("the walk starts at block 0 or after a stored checkpoint");
    let mut state = store.load_state()?;
    if state.state_root() != header.state_root {
        return Err(tampered(
            head_number,
            "stored state does not match the head's state root",
        ));
    }
    for number in head_number.saturating_sub(255)..=head_number {
        if let Some(h) = store.header(number)? {
            state.push_block_hash(number, h.hash_slow());
        }
    }
    Ok((Head::new(state, header), authorities))
}

/// Checks every block of the chain in `dir` from block 0, whatever its
/// checkpoint says (`medledger chain verify`), with its node stopped;
/// returns the head block number.
pub fn verify_chain(dir: &std::path::Path) -> Result<u64> {
    let genesis = Genesis::load(dir)?;
    let path = dir.join(crate::genesis::layout::STORE);
    if !path.exists() {
        return Err(ChainError::Store {
            what: format!("{} has no block store", dir.display()),
        });
    }
    let store = Store::open(&path)?;
    let (head, _) = verify_store(&store, &genesis, Start::AtGenesis)?;
    Ok(head.header.number)
}

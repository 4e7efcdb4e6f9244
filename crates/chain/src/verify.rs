//! Start-up verification of the stored chain: every block's parent link,
//! seal (by the authority of its time, tracked across handovers),
//! transactions root and receipts root, and the head's state root against
//! the stored state.

use crate::authority::Authorities;
use crate::genesis::Genesis;
use crate::node::{Head, head_from};
use crate::store::Store;
use crate::{ChainError, Result};
use alloy_consensus::TxEnvelope;
use alloy_consensus::proofs::{calculate_receipt_root, calculate_transaction_root};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::B256;

fn tampered(block: u64, what: impl Into<String>) -> ChainError {
    ChainError::Tampered {
        block,
        what: what.into(),
    }
}

/// Checks the whole stored chain and returns the head with its state, and
/// who seals the next block.
pub(crate) fn verify_store(store: &Store, genesis: &Genesis) -> Result<(Head, Authorities)> {
    let head_number = store.head()?.ok_or_else(|| ChainError::Store {
        what: "the store has no genesis block".into(),
    })?;
    let mut parent: Option<B256> = None;
    let mut last = None;
    let mut authorities = Authorities::new(genesis);
    for number in 0..=head_number {
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
    let header = last.expect("the loop ran at least for block 0");
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
    Ok((head_from(state, header), authorities))
}

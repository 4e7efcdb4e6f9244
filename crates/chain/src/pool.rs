//! The transaction pool: validated transactions waiting for a block.
//!
//! Per sender, transactions are kept by nonce; a block takes each sender's
//! run of consecutive nonces from its account nonce, in arrival order
//! across senders. A nonce at most [`MAX_NONCE_GAP`] ahead waits for the
//! gap to fill.

use crate::TxError;
use alloy_consensus::TxEnvelope;
use alloy_primitives::{Address, B256, Bytes};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How far past the next nonce a transaction may be and still wait.
pub const MAX_NONCE_GAP: u64 = 64;
/// The most transactions one sender may have waiting.
pub const MAX_PER_SENDER: usize = 4096;
/// The most transactions waiting in all.
pub const MAX_POOLED: usize = 65_536;

/// A validated transaction with its recovered sender.
#[derive(Debug, Clone)]
pub struct PooledTx {
    /// Transaction hash.
    pub hash: B256,
    /// Recovered sender.
    pub sender: Address,
    /// Its nonce.
    pub nonce: u64,
    /// Its gas limit.
    pub gas_limit: u64,
    /// The decoded transaction.
    pub envelope: TxEnvelope,
    /// Its EIP-2718 bytes.
    pub raw: Bytes,
    /// Arrival order.
    seq: u64,
}

impl PooledTx {
    /// Wraps a validated transaction.
    pub fn new(hash: B256, sender: Address, envelope: TxEnvelope, raw: Bytes) -> Self {
        use alloy_consensus::Transaction;
        PooledTx {
            hash,
            sender,
            nonce: envelope.nonce(),
            gas_limit: envelope.gas_limit(),
            envelope,
            raw,
            seq: 0,
        }
    }
}

/// Transactions waiting for a block.
#[derive(Debug, Default)]
pub struct Pool {
    by_sender: HashMap<Address, BTreeMap<u64, PooledTx>>,
    known: HashSet<B256>,
    next_seq: u64,
}

impl Pool {
    /// The nonce `sender`'s next transaction should carry, counting the
    /// consecutive ones waiting here.
    pub fn pending_nonce(&self, sender: &Address, account_nonce: u64) -> u64 {
        let mut next = account_nonce;
        if let Some(txs) = self.by_sender.get(sender) {
            while txs.contains_key(&next) {
                next += 1;
            }
        }
        next
    }

    /// Adds a transaction whose sender's account nonce is `account_nonce`.
    pub fn insert(&mut self, mut tx: PooledTx, account_nonce: u64) -> Result<(), TxError> {
        if self.known.contains(&tx.hash) {
            return Err(TxError::AlreadyKnown);
        }
        let next = self.pending_nonce(&tx.sender, account_nonce);
        if tx.nonce < account_nonce {
            return Err(TxError::NonceTooLow {
                next,
                nonce: tx.nonce,
            });
        }
        if tx.nonce > next + MAX_NONCE_GAP {
            return Err(TxError::NonceTooHigh {
                next,
                nonce: tx.nonce,
            });
        }
        if self.known.len() >= MAX_POOLED {
            return Err(TxError::PoolFull);
        }
        let slot = self.by_sender.entry(tx.sender).or_default();
        if slot.contains_key(&tx.nonce) {
            // Another transaction with this nonce waits: no replacement on a
            // zero-fee chain, the first one stands.
            return Err(TxError::Replacement);
        }
        if slot.len() >= MAX_PER_SENDER {
            return Err(TxError::PoolFull);
        }
        tx.seq = self.next_seq;
        self.next_seq += 1;
        self.known.insert(tx.hash);
        slot.insert(tx.nonce, tx);
        Ok(())
    }

    /// The transactions that can run now, in arrival order, up to
    /// `gas_limit` in total gas limits. They stay in the pool (and count
    /// for [`Pool::pending_nonce`]) until [`Pool::prune`] or
    /// [`Pool::remove`] after their block.
    pub fn ready(&self, account_nonce: impl Fn(&Address) -> u64, gas_limit: u64) -> Vec<PooledTx> {
        // Each sender's run of consecutive nonces, keyed so that a
        // transaction never sorts before an earlier nonce of its sender: its
        // key is the latest arrival among it and the nonces before it.
        let mut ready: Vec<(u64, &PooledTx)> = Vec::new();
        for (sender, txs) in &self.by_sender {
            let mut nonce = account_nonce(sender);
            let mut key = 0;
            while let Some(tx) = txs.get(&nonce) {
                key = key.max(tx.seq);
                ready.push((key, tx));
                nonce += 1;
            }
        }
        ready.sort_unstable_by_key(|(key, tx)| (*key, tx.sender, tx.nonce));
        let ready = ready.into_iter().map(|(_, tx)| tx);
        let mut taken = Vec::new();
        let mut gas = 0u64;
        let mut blocked: HashSet<Address> = HashSet::new();
        for tx in ready {
            if blocked.contains(&tx.sender) {
                continue;
            }
            if gas.saturating_add(tx.gas_limit) > gas_limit {
                // Keep this sender's later nonces for the next block too.
                blocked.insert(tx.sender);
                continue;
            }
            gas += tx.gas_limit;
            taken.push(tx.clone());
        }
        taken
    }

    /// Removes transactions, by sender and nonce (those the EVM refused).
    pub fn remove(&mut self, txs: &[(Address, u64)]) {
        for (sender, nonce) in txs {
            if let Some(tx) = self
                .by_sender
                .get_mut(sender)
                .and_then(|txs| txs.remove(nonce))
            {
                self.known.remove(&tx.hash);
            }
        }
        self.by_sender.retain(|_, txs| !txs.is_empty());
    }

    /// Drops transactions whose nonces are used up (after a block).
    pub fn prune(&mut self, account_nonce: impl Fn(&Address) -> u64) {
        for (sender, txs) in &mut self.by_sender {
            let next = account_nonce(sender);
            let stale: Vec<u64> = txs.range(..next).map(|(n, _)| *n).collect();
            for n in stale {
                if let Some(tx) = txs.remove(&n) {
                    self.known.remove(&tx.hash);
                }
            }
        }
        self.by_sender.retain(|_, txs| !txs.is_empty());
    }
}

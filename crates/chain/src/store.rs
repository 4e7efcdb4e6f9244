//! The block store: blocks, receipts, the transaction index and the world
//! state, in one redb file, committed atomically (and fsynced) per block.
//!
//! ```text
//! headers   number -> RLP header (sealed)
//! bodies    number -> RLP [ [sender, raw EIP-2718 tx], ... ]
//! receipts  number -> RLP [ EIP-2718 receipt, ... ]
//! hashes    block hash -> number
//! txs       tx hash -> (number, index)
//! accounts  address -> RLP (nonce, balance, code hash)
//! storage   address || slot -> value (absent = zero)
//! code      code hash -> bytecode
//! ```

use crate::state::{AccountRecord, StateDiff, WorldState};
use crate::{ChainError, Result};
use alloy_consensus::{Header, ReceiptEnvelope};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_rlp::{Decodable, Encodable, RlpDecodable, RlpEncodable};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const HEADERS: TableDefinition<u64, &[u8]> = TableDefinition::new("headers");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipts");
const HASHES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("hashes");
const TXS: TableDefinition<&[u8; 32], (u64, u32)> = TableDefinition::new("txs");
const ACCOUNTS: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("accounts");
const STORAGE: TableDefinition<&[u8; 52], &[u8; 32]> = TableDefinition::new("storage");
const CODE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("code");
/// The latest signed checkpoint (crate::checkpoint), under key 0.
const CHECKPOINT: TableDefinition<u8, &[u8]> = TableDefinition::new("checkpoint");

/// A transaction as stored: its recovered sender and its EIP-2718 bytes.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct StoredTx {
    /// The recovered sender.
    pub sender: Address,
    /// The signed transaction, EIP-2718 encoded.
    pub raw: Bytes,
}

/// A block ready to be committed.
#[derive(Debug, Clone)]
pub struct BlockData {
    /// The sealed header.
    pub header: Header,
    /// Its hash.
    pub hash: B256,
    /// The transactions, in order.
    pub txs: Vec<StoredTx>,
    /// Their hashes.
    pub tx_hashes: Vec<B256>,
    /// One receipt per transaction.
    pub receipts: Vec<ReceiptEnvelope>,
}

fn storage_key(address: &Address, slot: &U256) -> [u8; 52] {
    let mut key = [0u8; 52];
    key[..20].copy_from_slice(address.as_slice());
    key[20..].copy_from_slice(&slot.to_be_bytes::<32>());
    key
}

fn corrupt(what: impl Into<String>) -> ChainError {
    ChainError::Store { what: what.into() }
}

/// The persistent store.
pub struct Store {
    db: Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store file, refusing with
    /// [`ChainError::InUse`] while another process has it open.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => ChainError::InUse {
                path: path.to_owned(),
            },
            e => corrupt(format!("{}: {e}", path.display())),
        })?;
        let tx = db.begin_write()?;
        // Create every table so that readers never meet a missing one.
        tx.open_table(HEADERS)?;
        tx.open_table(BODIES)?;
        tx.open_table(RECEIPTS)?;
        tx.open_table(HASHES)?;
        tx.open_table(TXS)?;
        tx.open_table(ACCOUNTS)?;
        tx.open_table(STORAGE)?;
        tx.open_table(CODE)?;
        tx.open_table(CHECKPOINT)?;
        tx.commit()?;
        Ok(Store { db })
    }

    /// The number of the newest block, if any.
    pub fn head(&self) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(HEADERS)?;
        Ok(table.last()?.map(|(k, _)| k.value()))
    }

    /// A header by number.
    pub fn header(&self, number: u64) -> Result<Option<Header>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(HEADERS)?;
        table
            .get(number)?
            .map(|v| {
                Header::decode(&mut v.value()).map_err(|e| corrupt(format!("header {number}: {e}")))
            })
            .transpose()
    }

    /// A block number by hash.
    pub fn block_number(&self, hash: &B256) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(HASHES)?.get(&hash.0)?.map(|v| v.value()))
    }

    /// The transactions of a block.
    pub fn body(&self, number: u64) -> Result<Option<Vec<StoredTx>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BODIES)?;
        table
            .get(number)?
            .map(|v| {
                Vec::<StoredTx>::decode(&mut v.value())
                    .map_err(|e| corrupt(format!("body {number}: {e}")))
            })
            .transpose()
    }

    /// The receipts of a block.
    pub fn receipts(&self, number: u64) -> Result<Option<Vec<ReceiptEnvelope>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RECEIPTS)?;
        let Some(v) = table.get(number)? else {
            return Ok(None);
        };
        let raw = Vec::<Bytes>::decode(&mut v.value())
            .map_err(|e| corrupt(format!("receipts {number}: {e}")))?;
        raw.iter()
            .map(|r| {
                ReceiptEnvelope::decode_2718(&mut r.as_ref())
                    .map_err(|e| corrupt(format!("receipt in {number}: {e}")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Where a transaction is: block number and index.
    pub fn tx_location(&self, hash: &B256) -> Result<Option<(u64, u32)>> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(TXS)?.get(&hash.0)?.map(|v| v.value()))
    }

    /// The latest signed checkpoint, as stored (crate::checkpoint).
    pub fn checkpoint(&self) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        Ok(tx
            .open_table(CHECKPOINT)?
            .get(0)?
            .map(|v| v.value().to_vec()))
    }

    /// Replaces the stored checkpoint, durably.
    pub fn set_checkpoint(&self, signed: &[u8]) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(CHECKPOINT)?.insert(0, signed)?;
        tx.commit()?;
        Ok(())
    }

    /// Loads the whole world state into memory.
    pub fn load_state(&self) -> Result<WorldState> {
        let tx = self.db.begin_read()?;
        let mut state = WorldState::default();
        for entry in tx.open_table(ACCOUNTS)?.iter()? {
            let (k, v) = entry?;
            let record = AccountRecord::decode(&mut v.value())
                .map_err(|e| corrupt(format!("account: {e}")))?;
            state.insert_account(Address::from(*k.value()), record);
        }
        for entry in tx.open_table(STORAGE)?.iter()? {
            let (k, v) = entry?;
            let key = k.value();
            let address = Address::from_slice(&key[..20]);
            let slot = U256::from_be_slice(&key[20..]);
            state.insert_storage(address, slot, U256::from_be_bytes(*v.value()));
        }
        for entry in tx.open_table(CODE)?.iter()? {
            let (k, v) = entry?;
            state.insert_code(B256::from(*k.value()), Bytes::copy_from_slice(v.value()));
        }
        Ok(state)
    }

    /// Commits a block and the state changes it made, atomically and
    /// durably: after this returns, a crash cannot lose the block.
    pub fn commit_block(&self, block: &BlockData, diff: &StateDiff) -> Result<()> {
        let tx = self.db.begin_write()?;
        Self::write_block(&tx, block)?;
        {
            let mut accounts = tx.open_table(ACCOUNTS)?;
            let mut storage = tx.open_table(STORAGE)?;
            for address in &diff.wiped_storage {
                let start = storage_key(address, &U256::ZERO);
                let end = storage_key(address, &U256::MAX);
                storage.retain_in::<&[u8; 52], _>(&start..=&end, |_, _| false)?;
            }
            for (address, record) in &diff.accounts {
                match record {
                    Some(r) => {
                        let mut buf = Vec::new();
                        r.encode(&mut buf);
                        accounts.insert(&address.0.0, buf.as_slice())?;
                    }
                    None => {
                        accounts.remove(&address.0.0)?;
                    }
                }
            }
            for (address, slot, value) in &diff.storage {
                let key = storage_key(address, slot);
                if value.is_zero() {
                    storage.remove(&key)?;
                } else {
                    storage.insert(&key, &value.to_be_bytes::<32>())?;
                }
            }
            let mut code = tx.open_table(CODE)?;
            for (hash, bytes) in &diff.code {
                code.insert(&hash.0, bytes.as_ref())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits blocks that change no state (empty blocks: a handover, or a
    /// long chain made for a benchmark), in one transaction.
    pub fn commit_empty_blocks(&self, blocks: &[BlockData]) -> Result<()> {
        let tx = self.db.begin_write()?;
        for block in blocks {
            Self::write_block(&tx, block)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes a block's header, body, receipts and indexes.
    fn write_block(tx: &redb::WriteTransaction, block: &BlockData) -> Result<()> {
        let number = block.header.number;
        tx.open_table(HEADERS)?
            .insert(number, alloy_rlp::encode(&block.header).as_slice())?;
        tx.open_table(BODIES)?
            .insert(number, alloy_rlp::encode(&block.txs).as_slice())?;
        let receipts: Vec<Bytes> = block
            .receipts
            .iter()
            .map(|r| Bytes::from(r.encoded_2718()))
            .collect();
        tx.open_table(RECEIPTS)?
            .insert(number, alloy_rlp::encode(&receipts).as_slice())?;
        tx.open_table(HASHES)?.insert(&block.hash.0, number)?;
        let mut txs = tx.open_table(TXS)?;
        for (i, hash) in block.tx_hashes.iter().enumerate() {
            let index = u32::try_from(i).expect("a block holds fewer than 2^32 transactions");
            txs.insert(&hash.0, (number, index))?;
        }
        Ok(())
    }
}

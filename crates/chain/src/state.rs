//! The world state: accounts, storage and code, held in memory (loaded from
//! the store at start-up) and read by revm through [`DatabaseRef`].

use crate::trie::StorageTrie;
use alloy_primitives::map::HashMap;
use alloy_primitives::{Address, B256, Bytes, KECCAK256_EMPTY, U256};
use alloy_rlp::{RlpDecodable, RlpEncodable};
use alloy_trie::root::state_root_unhashed;
use alloy_trie::{EMPTY_ROOT_HASH, TrieAccount};
use revm::DatabaseRef;
use revm::database::{AccountState, CacheDB};
use revm::state::{AccountInfo, Bytecode};
use std::collections::BTreeMap;
use std::convert::Infallible;

/// An account as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct AccountRecord {
    /// Nonce.
    pub nonce: u64,
    /// Balance in wei.
    pub balance: U256,
    /// Hash of the code (`KECCAK256_EMPTY` for none).
    pub code_hash: B256,
}

impl AccountRecord {
    fn is_empty(&self) -> bool {
        self.nonce == 0 && self.balance.is_zero() && self.code_hash == KECCAK256_EMPTY
    }
}

/// What a block changed.
#[derive(Debug, Clone, Default)]
pub struct StateDiff {
    /// Accounts written (`None`: deleted).
    pub accounts: Vec<(Address, Option<AccountRecord>)>,
    /// Accounts whose storage was wiped before the writes below.
    pub wiped_storage: Vec<Address>,
    /// Storage writes (zero deletes).
    pub storage: Vec<(Address, U256, U256)>,
    /// New code.
    pub code: Vec<(B256, Bytes)>,
}

/// The current world state.
#[derive(Debug, Default, Clone)]
pub struct WorldState {
    accounts: HashMap<Address, AccountRecord>,
    storage: HashMap<Address, HashMap<U256, U256>>,
    code: HashMap<B256, Bytecode>,
    /// Hashes of recent blocks, for the BLOCKHASH opcode.
    block_hashes: BTreeMap<u64, B256>,
    /// Storage tries of accounts, kept between blocks and updated in
    /// place (built on first use).
    tries: HashMap<Address, StorageTrie>,
}

/// BLOCKHASH sees this many blocks back.
const BLOCK_HASH_WINDOW: u64 = 256;

impl WorldState {
    pub(crate) fn insert_account(&mut self, address: Address, record: AccountRecord) {
        self.accounts.insert(address, record);
    }

    pub(crate) fn insert_storage(&mut self, address: Address, slot: U256, value: U256) {
        self.storage.entry(address).or_default().insert(slot, value);
    }

    pub(crate) fn insert_code(&mut self, hash: B256, bytes: Bytes) {
        self.code.insert(hash, Bytecode::new_raw(bytes));
    }

    /// Records a block hash for BLOCKHASH.
    pub fn push_block_hash(&mut self, number: u64, hash: B256) {
        self.block_hashes.insert(number, hash);
        while self.block_hashes.len() as u64 > BLOCK_HASH_WINDOW {
            self.block_hashes.pop_first();
        }
    }

    /// An account, if it exists.
    pub fn account(&self, address: &Address) -> Option<&AccountRecord> {
        self.accounts.get(address)
    }

    /// An account's nonce (0 if it does not exist).
    pub fn nonce(&self, address: &Address) -> u64 {
        self.accounts.get(address).map_or(0, |a| a.nonce)
    }

    /// A storage value.
    pub fn storage_at(&self, address: &Address, slot: &U256) -> U256 {
        self.storage
            .get(address)
            .and_then(|s| s.get(slot))
            .copied()
            .unwrap_or_default()
    }

    /// An account's code.
    pub fn code(&self, address: &Address) -> Bytes {
        self.accounts
            .get(address)
            .and_then(|a| self.code.get(&a.code_hash))
            .map(|c| c.original_bytes())
            .unwrap_or_default()
    }

    /// Turns what a block's execution cached into the diff to persist.
    pub fn diff_of(cache: &CacheDB<&WorldState>) -> StateDiff {
        let mut diff = StateDiff::default();
        for (address, account) in &cache.cache.accounts {
            match account.account_state {
                AccountState::None => continue,
                AccountState::NotExisting => {
                    diff.accounts.push((*address, None));
                    diff.wiped_storage.push(*address);
                    continue;
                }
                AccountState::StorageCleared => diff.wiped_storage.push(*address),
                AccountState::Touched => {}
            }
            let info = &account.info;
            let record = AccountRecord {
                nonce: info.nonce,
                balance: info.balance,
                code_hash: info.code_hash,
            };
            if record.is_empty() {
                // EIP-161: touched empty accounts (the zero-reward block
                // beneficiary) do not exist.
                diff.accounts.push((*address, None));
                diff.wiped_storage.push(*address);
                continue;
            }
            diff.accounts.push((*address, Some(record)));
            for (slot, value) in &account.storage {
                diff.storage.push((*address, *slot, *value));
            }
        }
        for (hash, code) in &cache.cache.contracts {
            if *hash != KECCAK256_EMPTY && !code.is_empty() {
                diff.code.push((*hash, code.original_bytes()));
            }
        }
        diff
    }

    /// Applies a block's diff.
    pub fn apply(&mut self, diff: &StateDiff) {
        for address in &diff.wiped_storage {
            self.storage.remove(address);
            self.tries.remove(address);
        }
        for (address, record) in &diff.accounts {
            match record {
                Some(r) => {
                    self.accounts.insert(*address, *r);
                }
                None => {
                    self.accounts.remove(address);
                    self.storage.remove(address);
                    self.tries.remove(address);
                }
            }
        }
        for (address, slot, value) in &diff.storage {
            let slots = self.storage.entry(*address).or_default();
            if value.is_zero() {
                slots.remove(slot);
            } else {
                slots.insert(*slot, *value);
            }
            if let Some(trie) = self.tries.get_mut(address) {
                trie.set(slot, value);
            }
        }
        for (hash, bytes) in &diff.code {
            self.code.insert(*hash, Bytecode::new_raw(bytes.clone()));
        }
    }

    /// The Ethereum state root (a Merkle-Patricia trie over all accounts),
    /// reusing storage roots of accounts no block has touched since.
    pub fn state_root(&mut self) -> B256 {
        let mut accounts = Vec::with_capacity(self.accounts.len());
        for (address, record) in &self.accounts {
            let storage_root = match self.storage.get(address) {
                None => EMPTY_ROOT_HASH,
                Some(slots) => self
                    .tries
                    .entry(*address)
                    .or_insert_with(|| StorageTrie::build(slots))
                    .root(),
            };
            accounts.push((
                *address,
                TrieAccount::new(record.nonce, record.balance, storage_root, record.code_hash),
            ));
        }
        state_root_unhashed(accounts)
    }
}

impl DatabaseRef for WorldState {
    type Error = Infallible;

    fn basic_ref(&self, address: Address) -> Result<Option<AccountInfo>, Self::Error> {
        Ok(self.accounts.get(&address).map(|a| AccountInfo {
            balance: a.balance,
            nonce: a.nonce,
            code_hash: a.code_hash,
            code: self.code.get(&a.code_hash).cloned(),
            ..Default::default()
        }))
    }

    fn code_by_hash_ref(&self, code_hash: B256) -> Result<Bytecode, Self::Error> {
        Ok(self.code.get(&code_hash).cloned().unwrap_or_default())
    }

    fn storage_ref(&self, address: Address, index: U256) -> Result<U256, Self::Error> {
        Ok(self.storage_at(&address, &index))
    }

    fn block_hash_ref(&self, number: u64) -> Result<B256, Self::Error> {
        Ok(self.block_hashes.get(&number).copied().unwrap_or_default())
    }
}

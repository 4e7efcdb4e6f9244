//! The node: validates transactions into the pool, seals blocks from it
//! (the miner task), and answers queries from the head state and the store.

use crate::authority::Authorities;
use crate::checkpoint;
use crate::executor::{self, BlockInfo, CallError, CallRequest};
use crate::genesis::{Genesis, layout, now_secs};
use crate::head::Head;
use crate::permissions::{GenesisAllowlist, Permissions};
use crate::pool::{Pool, PooledTx};
use crate::state::WorldState;
use crate::store::{BlockData, Store, StoredTx};
use crate::{ChainError, Result, TxError};
use crate::{rotation, seal};
use alloy_consensus::proofs::{calculate_receipt_root, calculate_transaction_root};
use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::{Header, ReceiptEnvelope, Transaction, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, B256, Bloom, Bytes, KECCAK256_EMPTY};
use medledger_pki::EthAccount;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// The largest transaction accepted, as in geth.
pub const MAX_TX_BYTES: usize = 128 * 1024;
/// The largest contract creation code (EIP-3860).
pub const MAX_INITCODE_BYTES: usize = 49_152;

/// When blocks are sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// As soon as transactions wait, at most one block per interval.
    OnDemand {
        /// The least time between two blocks.
        min_interval: Duration,
    },
    /// Every interval, with or without transactions.
    Interval(Duration),
}

impl Default for Sealing {
    fn default() -> Self {
        Sealing::OnDemand {
            min_interval: Duration::from_millis(50),
        }
    }
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the key, genesis and store live.
    pub data_dir: PathBuf,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Accounts allowed to send from genesis (used at first start only).
    pub allow: Vec<Address>,
    /// Block sealing.
    pub sealing: Sealing,
}

impl NodeConfig {
    /// A config for `data_dir` with chain id 1337 and on-demand sealing.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            chain_id: 1337,
            allow: Vec::new(),
            sealing: Sealing::default(),
        }
    }
}

struct Shared {
    data_dir: PathBuf,
    genesis: Genesis,
    /// The current authority's key (a rotation happens with the node
    /// stopped, so it stays the same while the node runs).
    authority: EthAccount,
    /// Who seals, as of the head (the same while the node runs): for
    /// checkpoints.
    authorities: Authorities,
    sealing: Sealing,
    store: Store,
    head: RwLock<Head>,
    pool: Mutex<Pool>,
    wake: Notify,
    blocks: watch::Sender<u64>,
    permissions: RwLock<Arc<dyn Permissions>>,
    /// Why sealing stopped, once it has.
    stopped: RwLock<Option<String>>,
}

/// A running chain node. Cheap to clone; all clones are the same node.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("chain_id", &self.shared.genesis.chain_id)
            .finish_non_exhaustive()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gas a transaction costs before it runs (EIP-2028, EIP-2930, EIP-3860,
/// with the EIP-7623 calldata floor).
fn intrinsic_gas(tx: &TxEnvelope) -> u64 {
    let data = tx.input();
    let zeros = data.iter().filter(|b| **b == 0).count() as u64;
    let nonzeros = data.len() as u64 - zeros;
    let mut gas = 21_000 + zeros * 4 + nonzeros * 16;
    if tx.kind().is_create() {
        gas += 32_000 + 2 * (data.len() as u64).div_ceil(32);
    }
    if let Some(list) = tx.access_list() {
        for item in list.iter() {
            gas += 2_400 + 1_900 * item.storage_keys.len() as u64;
        }
    }
    let floor = 21_000 + 10 * (zeros + 4 * nonzeros);
    gas.max(floor)
}

impl Node {
    /// Opens the node in `config.data_dir` (creating the chain on first
    /// start), verifies the stored chain, settles an interrupted authority
    /// rotation, and starts sealing blocks with the current authority's
    /// key. Must be called inside a tokio runtime.
    pub fn start(config: &NodeConfig) -> Result<Node> {
        let dir = &config.data_dir;
        let genesis = Genesis::load_or_create(dir, config.chain_id, &config.allow)?;
        let store = Store::open(&dir.join(layout::STORE))?;
        if store.head()?.is_none() {
            let first = rotation::read_key(&dir.join(layout::AUTHORITY_KEY))?;
            if first.address() != genesis.authority {
                return Err(ChainError::Store {
                    what: format!(
                        "{} belongs to {}, but the genesis names {} as the authority",
                        dir.join(layout::AUTHORITY_KEY).display(),
                        first.address(),
                        genesis.authority
                    ),
                });
            }
            Self::write_genesis_block(&store, &genesis, &first)?;
        }
        let (head, authorities) =
            crate::verify::verify_store(&store, &genesis, crate::verify::Start::AfterCheckpoint)?;
        let authority = rotation::settle(dir, &authorities)?;
        let number = head.header.number;
        // The next start walks from here.
        checkpoint::write(
            &store,
            &genesis,
            &authority,
            &authorities,
            number,
            head.hash,
        );
        let node = Node {
            shared: Arc::new(Shared {
                data_dir: config.data_dir.clone(),
                genesis,
                authority,
                authorities,
                sealing: config.sealing,
                store,
                head: RwLock::new(head),
                pool: Mutex::new(Pool::default()),
                wake: Notify::new(),
                blocks: watch::Sender::new(number),
                permissions: RwLock::new(Arc::new(GenesisAllowlist)),
                stopped: RwLock::new(None),
            }),
        };
        let miner = node.clone();
        tokio::spawn(async move { miner.mine().await });
        Ok(node)
    }

    fn write_genesis_block(store: &Store, genesis: &Genesis, authority: &EthAccount) -> Result<()> {
        let mut state = WorldState::default();
        let mut header = Header {
            number: 0,
            timestamp: genesis.timestamp,
            gas_limit: genesis.gas_limit,
            beneficiary: genesis.authority,
            base_fee_per_gas: Some(0),
            state_root: state.state_root(),
            mix_hash: genesis.hash(),
            ..Header::default()
        };
        seal::seal(&mut header, authority.signing_key());
        let hash = header.hash_slow();
        store.commit_block(
            &BlockData {
                header,
                hash,
                txs: Vec::new(),
                tx_hashes: Vec::new(),
                receipts: Vec::new(),
            },
            &Default::default(),
        )
    }

    /// Replaces who may send transactions (the Registry hook).
    pub fn set_permissions(&self, permissions: Arc<dyn Permissions>) {
        *write(&self.shared.permissions) = permissions;
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.shared.genesis
    }

    /// The current authority: the account that seals the next block (the
    /// genesis authority until it hands over).
    pub fn authority(&self) -> Address {
        self.shared.authority.address()
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.shared.genesis.chain_id
    }

    /// The store (blocks, receipts).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Subscribes to new blocks: the value is the head number.
    pub fn subscribe_blocks(&self) -> watch::Receiver<u64> {
        self.shared.blocks.subscribe()
    }

    /// Runs `f` on the head state and header.
    pub(crate) fn with_head<T>(&self, f: impl FnOnce(&Head) -> T) -> T {
        f(&read(&self.shared.head))
    }

    /// The head block number.
    pub fn block_number(&self) -> u64 {
        self.with_head(|h| h.header.number)
    }

    /// The nonce of `address` at the head, or counting waiting
    /// transactions with `pending`.
    pub fn nonce(&self, address: &Address, pending: bool) -> u64 {
        let head = read(&self.shared.head);
        let nonce = head.state.nonce(address);
        if pending {
            lock(&self.shared.pool).pending_nonce(address, nonce)
        } else {
            nonce
        }
    }

    /// Validates a signed transaction and queues it for the next block.
    pub fn send_raw_transaction(&self, raw: &[u8]) -> Result<B256, TxError> {
        if raw.len() > MAX_TX_BYTES {
            return Err(TxError::TooLarge {
                size: raw.len(),
                max: MAX_TX_BYTES,
            });
        }
        let envelope =
            TxEnvelope::decode_2718_exact(raw).map_err(|e| TxError::Malformed(e.to_string()))?;
        if !matches!(
            envelope,
            TxEnvelope::Legacy(_) | TxEnvelope::Eip2930(_) | TxEnvelope::Eip1559(_)
        ) {
            return Err(TxError::UnsupportedType);
        }
        let want = self.chain_id();
        if envelope.chain_id() != Some(want) {
            return Err(TxError::WrongChainId {
                have: envelope.chain_id(),
                want,
            });
        }
        if envelope.gas_limit() > self.shared.genesis.gas_limit {
            return Err(TxError::GasLimitExceeded);
        }
        if envelope.gas_limit() < intrinsic_gas(&envelope) {
            return Err(TxError::IntrinsicGasTooLow);
        }
        let sender = envelope
            .recover_signer()
            .map_err(|_| TxError::InvalidSignature)?;
        let hash = *envelope.tx_hash();
        if self
            .shared
            .store
            .tx_location(&hash)
            .ok()
            .flatten()
            .is_some()
        {
            return Err(TxError::AlreadyKnown);
        }
        if envelope.kind().is_create() && envelope.input().len() > MAX_INITCODE_BYTES {
            return Err(TxError::InitcodeTooLarge {
                size: envelope.input().len(),
                max: MAX_INITCODE_BYTES,
            });
        }
        if let Some(why) = read(&self.shared.stopped).clone() {
            return Err(TxError::Stopped(why));
        }
        {
            let head = read(&self.shared.head);
            let permissions = read(&self.shared.permissions).clone();
            if sender != self.authority()
                && !permissions.is_permitted(&head.state, &self.shared.genesis, &sender)
            {
                return Err(TxError::NotPermitted(sender));
            }
            let account = head.state.account(&sender).copied();
            if account.is_some_and(|a| a.code_hash != KECCAK256_EMPTY) {
                return Err(TxError::SenderHasCode(sender));
            }
            let balance = account.map(|a| a.balance).unwrap_or_default();
            if envelope.value() > balance {
                return Err(TxError::InsufficientFunds {
                    balance,
                    value: envelope.value(),
                });
            }
            let tx = PooledTx::new(hash, sender, envelope, Bytes::copy_from_slice(raw));
            lock(&self.shared.pool).insert(tx, head.state.nonce(&sender))?;
        }
        self.shared.wake.notify_one();
        Ok(hash)
    }

    /// The block the next transaction would run in, for calls.
    fn next_block_info(&self, head: &Head) -> BlockInfo {
        BlockInfo {
            chain_id: self.chain_id(),
            number: head.header.number + 1,
            timestamp: now_secs().max(head.header.timestamp),
            beneficiary: self.authority(),
            gas_limit: self.shared.genesis.gas_limit,
            prevrandao: head.hash,
        }
    }

    /// `eth_call` on the head state.
    pub fn call(&self, req: &CallRequest) -> Result<Bytes, CallError> {
        let head = read(&self.shared.head);
        executor::call(&head.state, &self.next_block_info(&head), req)
    }

    /// `eth_estimateGas` on the head state.
    pub fn estimate_gas(&self, req: &CallRequest) -> Result<u64, CallError> {
        let head = read(&self.shared.head);
        executor::estimate_gas(&head.state, &self.next_block_info(&head), req)
    }

    async fn mine(self) {
        let mut last_block = Instant::now();
        loop {
            match self.shared.sealing {
                Sealing::OnDemand { min_interval } => {
                    loop {
                        let woken = self.shared.wake.notified();
                        if self.has_ready() {
                            break;
                        }
                        woken.await;
                    }
                    let since = last_block.elapsed();
                    if since < min_interval {
                        tokio::time::sleep(min_interval - since).await;
                    }
                }
                Sealing::Interval(every) => {
                    tokio::time::sleep_until((last_block + every).into()).await;
                }
            }
            last_block = Instant::now();
            let node = self.clone();
            let sealed = tokio::task::spawn_blocking(move || node.seal_block()).await;
            let failure = match sealed {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("sealing task failed: {e}"),
            };
            // The store refused a commit: stop sealing and refuse new
            // transactions rather than promise what the disk does not have.
            tracing::error!("medledger chain: sealing stopped: {failure}");
            *write(&self.shared.stopped) = Some(failure);
            return;
        }
    }

    /// Whether a transaction in the pool can run now (a nonce gap cannot).
    fn has_ready(&self) -> bool {
        let head = read(&self.shared.head);
        !lock(&self.shared.pool)
            .ready(|a| head.state.nonce(a), self.shared.genesis.gas_limit)
            .is_empty()
    }

    /// Runs the waiting transactions into a sealed, committed block. On
    /// demand, nothing runnable means no block.
    fn seal_block(&self) -> Result<()> {
        let shared = &self.shared;
        let (info, parent_hash, outcome) = {
            let head = read(&shared.head);
            let txs = lock(&shared.pool).ready(|a| head.state.nonce(a), shared.genesis.gas_limit);
            if txs.is_empty() && matches!(shared.sealing, Sealing::OnDemand { .. }) {
                return Ok(());
            }
            let info = self.next_block_info(&head);
            let outcome = executor::execute_block(&head.state, &info, txs);
            (info, head.hash, outcome)
        };
        for (tx, why) in &outcome.refused {
            tracing::warn!("medledger chain: dropped transaction {}: {why}", tx.hash);
        }
        let txs: Vec<&TxEnvelope> = outcome.executed.iter().map(|e| &e.tx.envelope).collect();
        let receipts: Vec<ReceiptEnvelope> =
            outcome.executed.iter().map(|e| e.receipt.clone()).collect();
        let mut bloom = Bloom::ZERO;
        for r in &receipts {
            bloom.accrue_bloom(r.logs_bloom());
        }
        let mut head = write(&shared.head);
        head.state.apply(&outcome.diff);
        let mut header = Header {
            parent_hash,
            beneficiary: info.beneficiary,
            state_root: head.state.state_root(),
            transactions_root: calculate_transaction_root(&txs),
            receipts_root: calculate_receipt_root(&receipts),
            logs_bloom: bloom,
            number: info.number,
            gas_limit: info.gas_limit,
            gas_used: outcome.gas_used,
            timestamp: info.timestamp,
            mix_hash: info.prevrandao,
            base_fee_per_gas: Some(0),
            ..Header::default()
        };
        seal::seal(&mut header, shared.authority.signing_key());
        let hash = header.hash_slow();
        let block = BlockData {
            header: header.clone(),
            hash,
            txs: outcome
                .executed
                .iter()
                .map(|e| StoredTx {
                    sender: e.tx.sender,
                    raw: e.tx.raw.clone(),
                })
                .collect(),
            tx_hashes: outcome.executed.iter().map(|e| e.tx.hash).collect(),
            receipts,
        };
        if let Err(e) = shared.store.commit_block(&block, &outcome.diff) {
            // Memory already holds the new state: put back what the disk has.
            head.state = shared.store.load_state()?;
            return Err(e);
        }
        head.state.push_block_hash(info.number, hash);
        head.header = header;
        head.hash = hash;
        if info.number % checkpoint::EVERY == 0 {
            checkpoint::write(
                &shared.store,
                &shared.genesis,
                &shared.authority,
                &shared.authorities,
                info.number,
                hash,
            );
        }
        {
            let mut pool = lock(&shared.pool);
            pool.prune(|a| head.state.nonce(a));
            let refused: Vec<(Address, u64)> = outcome
                .refused
                .iter()
                .map(|(tx, _)| (tx.sender, tx.nonce))
                .collect();
            pool.remove(&refused);
        }
        drop(head);
        shared.blocks.send_replace(info.number);
        Ok(())
    }

    /// Copies the chain's files (authority key, genesis, block store) into
    /// `out` while no block commits: a consistent copy of a running node,
    /// which [`Node::start`] opens like the original. Returns the head
    /// block number it holds.
    pub fn backup(&self, out: &Path) -> Result<u64> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ChainError::Io { path, source }
        };
        let head = read(&self.shared.head);
        std::fs::create_dir_all(out).map_err(io(out))?;
        for name in [layout::AUTHORITY_KEY, layout::GENESIS, layout::STORE] {
            let to = out.join(name);
            std::fs::copy(self.shared.data_dir.join(name), &to).map_err(io(&to))?;
        }
        Ok(head.header.number)
    }

    /// Waits until block `number` exists, or `timeout` passes.
    pub async fn wait_for_block(&self, number: u64, timeout: Duration) -> Result<()> {
        let mut blocks = self.subscribe_blocks();
        tokio::time::timeout(timeout, blocks.wait_for(|n| *n >= number))
            .await
            .map_err(|_| ChainError::Stopped)?
            .map_err(|_| ChainError::Stopped)?;
        Ok(())
    }
}

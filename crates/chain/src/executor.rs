//! Runs transactions with revm: whole blocks, and calls that change nothing.

use crate::pool::PooledTx;
use crate::state::{StateDiff, WorldState};
use alloy_consensus::{
    Eip658Value, Receipt, ReceiptEnvelope, ReceiptWithBloom, Transaction, TxEnvelope,
};
use alloy_eips::Typed2718;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use revm::context::result::{EVMError, ExecutionResult, InvalidTransaction};
use revm::context::{BlockEnv, CfgEnv, Context, TxEnv};
use revm::context_interface::either::Either;
use revm::database::CacheDB;
use revm::primitives::hardfork::SpecId;
use revm::{ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};
use std::convert::Infallible;

/// The EVM rules the chain runs (Solidity's default target).
pub const SPEC: SpecId = SpecId::PRAGUE;

/// The block a transaction runs in.
#[derive(Debug, Clone, Copy)]
pub struct BlockInfo {
    /// Chain id.
    pub chain_id: u64,
    /// Block number.
    pub number: u64,
    /// Unix seconds.
    pub timestamp: u64,
    /// The sealer.
    pub beneficiary: Address,
    /// Block gas limit.
    pub gas_limit: u64,
    /// PREVRANDAO (the header's mix hash).
    pub prevrandao: B256,
}

impl BlockInfo {
    fn cfg(&self) -> CfgEnv {
        let mut cfg = CfgEnv::new_with_spec(SPEC);
        cfg.chain_id = self.chain_id;
        // Our limit is the block's, not Osaka's per-transaction cap.
        cfg.tx_gas_limit_cap = Some(self.gas_limit);
        cfg
    }

    fn block(&self) -> BlockEnv {
        BlockEnv {
            number: U256::from(self.number),
            timestamp: U256::from(self.timestamp),
            beneficiary: self.beneficiary,
            gas_limit: self.gas_limit,
            basefee: 0,
            difficulty: U256::ZERO,
            prevrandao: Some(self.prevrandao),
            ..Default::default()
        }
    }
}

/// A signed transaction as revm's input. The chain charges no fees: the
/// fee a client offers (alloy's fillers offer at least 1 wei) is ignored,
/// and the transaction runs at gas price 0.
pub fn tx_env(tx: &TxEnvelope, sender: Address) -> TxEnv {
    TxEnv {
        tx_type: tx.ty(),
        caller: sender,
        gas_limit: tx.gas_limit(),
        gas_price: 0,
        kind: tx.kind(),
        value: tx.value(),
        data: tx.input().clone(),
        nonce: tx.nonce(),
        chain_id: tx.chain_id(),
        access_list: tx.access_list().cloned().unwrap_or_default(),
        gas_priority_fee: tx.max_priority_fee_per_gas().map(|_| 0),
        blob_hashes: Vec::new(),
        max_fee_per_blob_gas: 0,
        authorization_list: tx
            .authorization_list()
            .map(|l| l.iter().cloned().map(Either::Left).collect())
            .unwrap_or_default(),
    }
}

/// The outcome of one transaction in a block.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The transaction.
    pub tx: PooledTx,
    /// Its receipt.
    pub receipt: ReceiptEnvelope,
    /// Gas it used.
    pub gas_used: u64,
    /// The address a creation made.
    pub contract_address: Option<Address>,
}

/// A block's transactions, run.
#[derive(Debug, Default)]
pub struct BlockOutcome {
    /// Transactions that made it into the block, in order.
    pub executed: Vec<Executed>,
    /// Transactions revm refused (they stay out of the block), with why.
    pub refused: Vec<(PooledTx, String)>,
    /// State changes.
    pub diff: StateDiff,
    /// Total gas used.
    pub gas_used: u64,
}

/// Runs `txs` in order on `state` as block `info`.
pub fn execute_block(state: &WorldState, info: &BlockInfo, txs: Vec<PooledTx>) -> BlockOutcome {
    let mut db = CacheDB::new(state);
    let mut outcome = BlockOutcome::default();
    {
        let mut evm = Context::mainnet()
            .with_db(&mut db)
            .with_cfg(info.cfg())
            .with_block(info.block())
            .build_mainnet();
        for tx in txs {
            if outcome.gas_used.saturating_add(tx.gas_limit) > info.gas_limit {
                outcome
                    .refused
                    .push((tx, "exceeds the gas left in the block".into()));
                continue;
            }
            match evm.transact_commit(tx_env(&tx.envelope, tx.sender)) {
                Ok(result) => {
                    let gas_used = result.tx_gas_used();
                    outcome.gas_used += gas_used;
                    let contract_address = result.created_address();
                    let receipt: ReceiptWithBloom = Receipt {
                        status: Eip658Value::Eip658(result.is_success()),
                        cumulative_gas_used: outcome.gas_used,
                        logs: result.into_logs(),
                    }
                    .into();
                    outcome.executed.push(Executed {
                        receipt: ReceiptEnvelope::from_typed(tx.envelope.tx_type(), receipt),
                        tx,
                        gas_used,
                        contract_address,
                    });
                }
                Err(e) => outcome.refused.push((tx, e.to_string())),
            }
        }
    }
    outcome.diff = WorldState::diff_of(&db);
    outcome
}

/// A call that changes nothing: `eth_call` and `eth_estimateGas`.
#[derive(Debug, Clone, Default)]
pub struct CallRequest {
    /// The caller (zero address if not given).
    pub from: Address,
    /// The callee; `None` simulates a creation.
    pub to: Option<Address>,
    /// Gas limit (the block's if not given).
    pub gas: Option<u64>,
    /// Value sent.
    pub value: U256,
    /// Call data.
    pub data: Bytes,
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The EVM reverted, with its revert data.
    Reverted(Bytes),
    /// The EVM halted (out of gas, invalid opcode...).
    Halted(String),
    /// The call is not valid (gas above the block limit, no funds...).
    Invalid(String),
}

fn call_env(req: &CallRequest, info: &BlockInfo, gas: u64, nonce: u64) -> TxEnv {
    TxEnv {
        tx_type: 0,
        caller: req.from,
        gas_limit: gas,
        gas_price: 0,
        kind: req.to.map_or(TxKind::Create, TxKind::Call),
        value: req.value,
        data: req.data.clone(),
        nonce,
        chain_id: Some(info.chain_id),
        ..Default::default()
    }
}

fn run(
    state: &WorldState,
    info: &BlockInfo,
    env: TxEnv,
) -> Result<ExecutionResult, EVMError<Infallible, InvalidTransaction>> {
    let mut cfg = info.cfg();
    cfg.disable_nonce_check = true;
    let mut evm = Context::mainnet()
        .with_ref_db(state)
        .with_cfg(cfg)
        .with_block(info.block())
        .build_mainnet();
    evm.transact(env).map(|r| r.result)
}

/// The most gas one `eth_call` or `eth_estimateGas` may use (as geth's
/// `--rpc.gascap`): calls run while the miner waits.
pub const CALL_GAS_CAP: u64 = 50_000_000;

impl BlockInfo {
    fn call_gas(&self, requested: Option<u64>) -> u64 {
        requested
            .unwrap_or(u64::MAX)
            .min(self.gas_limit)
            .min(CALL_GAS_CAP)
    }
}

/// Runs a call and returns its output.
pub fn call(state: &WorldState, info: &BlockInfo, req: &CallRequest) -> Result<Bytes, CallError> {
    let gas = info.call_gas(req.gas);
    let env = call_env(req, info, gas, state.nonce(&req.from));
    match run(state, info, env) {
        Ok(ExecutionResult::Success { output, .. }) => Ok(output.into_data()),
        Ok(ExecutionResult::Revert { output, .. }) => Err(CallError::Reverted(output)),
        Ok(ExecutionResult::Halt { reason, .. }) => Err(CallError::Halted(format!("{reason:?}"))),
        Err(e) => Err(CallError::Invalid(e.to_string())),
    }
}

/// The least gas limit with which the call succeeds.
pub fn estimate_gas(
    state: &WorldState,
    info: &BlockInfo,
    req: &CallRequest,
) -> Result<u64, CallError> {
    let cap = info.call_gas(req.gas);
    let nonce = state.nonce(&req.from);
    let first = match run(state, info, call_env(req, info, cap, nonce)) {
        Ok(r @ ExecutionResult::Success { .. }) => r,
        Ok(ExecutionResult::Revert { output, .. }) => return Err(CallError::Reverted(output)),
        Ok(ExecutionResult::Halt { reason, .. }) => {
            return Err(CallError::Halted(format!("{reason:?}")));
        }
        Err(e) => return Err(CallError::Invalid(e.to_string())),
    };
    // Binary search between what it used (before refunds) and the cap; the
    // 63/64 rule can make the used amount too little as a limit.
    let (mut lo, mut hi) = (first.gas().total_gas_spent().saturating_sub(1), cap);
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        match run(state, info, call_env(req, info, mid, nonce)) {
            Ok(r) if r.is_success() => hi = mid,
            _ => lo = mid,
        }
    }
    Ok(hi)
}

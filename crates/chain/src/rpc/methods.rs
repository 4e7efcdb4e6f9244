//! The `eth_*`, `net_*` and `web3_*` methods.

use super::{Rpc, RpcError};
use crate::executor::{CallError, CallRequest};
use crate::store::StoredTx;
use crate::{ChainError, Node, TxError};
use alloy_consensus::{Header, ReceiptEnvelope, Transaction as _, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, B256, Bytes, TxKind, U64, U256};
use alloy_rpc_types_eth::{
    Block, BlockTransactions, FeeHistory, Filter, FilterBlockOption, Log, Transaction,
    TransactionReceipt, TransactionRequest,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most blocks one `eth_getLogs` may scan.
const MAX_LOG_RANGE: u64 = 10_000;
/// The most logs one answer may hold.
const MAX_LOGS: usize = 10_000;
/// The most filters installed at once.
const MAX_FILTERS: usize = 1_000;
/// Filters not polled for this long are dropped (as geth does).
const FILTER_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses positional params into a tuple, treating missing trailing
/// params as `null` (so `Option`s may be left out).
fn params<T: DeserializeOwned>(params: Value, arity: usize) -> Result<T, RpcError> {
    let mut list = match params {
        Value::Array(list) => list,
        Value::Null => Vec::new(),
        _ => return Err(RpcError::invalid_params("params must be an array")),
    };
    if list.len() > arity {
        return Err(RpcError::invalid_params(format!(
            "expected at most {arity} params, got {}",
            list.len()
        )));
    }
    list.resize(arity, Value::Null);
    serde_json::from_value(Value::Array(list)).map_err(RpcError::invalid_params)
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(-32603, e.to_string()))
}

fn internal(e: ChainError) -> RpcError {
    RpcError::new(-32603, e.to_string())
}

fn tx_error(e: TxError) -> RpcError {
    RpcError::server(e)
}

fn call_error(e: CallError) -> RpcError {
    match e {
        CallError::Reverted(data) => {
            let reason = alloy_sol_types::decode_revert_reason(&data)
                .filter(|r| !r.is_empty())
                .map(|r| r.strip_prefix("revert: ").unwrap_or(&r).to_owned());
            RpcError {
                code: 3,
                message: match reason {
                    Some(r) => format!("execution reverted: {r}"),
                    None => "execution reverted".into(),
                },
                data: Some(Value::String(data.to_string())),
            }
        }
        CallError::Halted(why) => RpcError::server(format!("execution halted: {why}")),
        CallError::Invalid(why) => RpcError::server(why),
    }
}

/// Installed filters.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    inner: Arc<Mutex<FilterTable>>,
}

#[derive(Debug, Default)]
struct FilterTable {
    next_id: u64,
    filters: HashMap<u64, InstalledFilter>,
}

#[derive(Debug)]
struct InstalledFilter {
    /// `None`: a block filter.
    logs: Option<Filter>,
    /// The last block already reported.
    reported: u64,
    polled: Instant,
}

/// Resolves a block tag to a number (for reads of blocks).
fn block_number(node: &Node, tag: BlockNumberOrTag) -> u64 {
    match tag {
        BlockNumberOrTag::Number(n) => n,
        BlockNumberOrTag::Earliest => 0,
        _ => node.block_number(),
    }
}

/// Checks that a state read is for the head (the node keeps no history).
fn require_head_state(node: &Node, block: Option<BlockId>) -> Result<(), RpcError> {
    let head = node.block_number();
    let ok = match block {
        None => true,
        Some(BlockId::Number(BlockNumberOrTag::Number(n))) => n == head,
        Some(BlockId::Number(BlockNumberOrTag::Earliest)) => head == 0,
        Some(BlockId::Number(_)) => true,
        Some(BlockId::Hash(h)) => {
            node.store().block_number(&h.block_hash).map_err(internal)? == Some(head)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(RpcError::server(format!(
            "historical state is not available: this node keeps the state of the head block ({head}) only"
        )))
    }
}

fn call_request(req: TransactionRequest) -> CallRequest {
    CallRequest {
        from: req.from.unwrap_or_default(),
        to: match req.to {
            Some(TxKind::Call(a)) => Some(a),
            _ => None,
        },
        gas: req.gas,
        value: req.value.unwrap_or_default(),
        data: req.input.into_input().unwrap_or_default(),
    }
}

fn rpc_transaction(
    stored: &StoredTx,
    header: &Header,
    hash: B256,
    index: usize,
) -> Result<Transaction, RpcError> {
    let envelope = TxEnvelope::decode_2718_exact(&stored.raw)
        .map_err(|e| RpcError::new(-32603, e.to_string()))?;
    Ok(Transaction {
        inner: alloy_consensus::transaction::Recovered::new_unchecked(envelope, stored.sender),
        block_hash: Some(hash),
        block_number: Some(header.number),
        block_timestamp: Some(header.timestamp),
        transaction_index: Some(index as u64),
        effective_gas_price: Some(0),
    })
}

/// Receipts of a block with their logs placed (block, tx, log index).
fn rpc_receipts(node: &Node, number: u64) -> Result<Vec<TransactionReceipt>, RpcError> {
    let store = node.store();
    let (Some(header), Some(body), Some(receipts)) = (
        store.header(number).map_err(internal)?,
        store.body(number).map_err(internal)?,
        store.receipts(number).map_err(internal)?,
    ) else {
        return Ok(Vec::new());
    };
    let hash = header.hash_slow();
    let mut log_index = 0u64;
    let mut previous_gas = 0u64;
    let mut out = Vec::with_capacity(receipts.len());
    for (i, (receipt, stored)) in receipts.into_iter().zip(body).enumerate() {
        let envelope = TxEnvelope::decode_2718_exact(&stored.raw)
            .map_err(|e| RpcError::new(-32603, e.to_string()))?;
        let tx_hash = *envelope.tx_hash();
        let cumulative = receipt.cumulative_gas_used();
        let contract_address = envelope
            .kind()
            .is_create()
            .then(|| stored.sender.create(envelope.nonce()));
        let inner: ReceiptEnvelope<Log> = receipt.map_logs(|log| {
            let log = Log {
                inner: log,
                block_hash: Some(hash),
                block_number: Some(number),
                block_timestamp: Some(header.timestamp),
                transaction_hash: Some(tx_hash),
                transaction_index: Some(i as u64),
                log_index: Some(log_index),
                removed: false,
            };
            log_index += 1;
            log
        });
        out.push(TransactionReceipt {
            inner,
            transaction_hash: tx_hash,
            transaction_index: Some(i as u64),
            block_hash: Some(hash),
            block_number: Some(number),
            gas_used: cumulative - previous_gas,
            effective_gas_price: 0,
            blob_gas_used: None,
            blob_gas_price: None,
            from: stored.sender,
            to: envelope.to(),
            contract_address,
        });
        previous_gas = cumulative;
    }
    Ok(out)
}

fn rpc_block(node: &Node, number: u64, full: bool) -> Result<Option<Block>, RpcError> {
    let store = node.store();
    let Some(header) = store.header(number).map_err(internal)? else {
        return Ok(None);
    };
    let body = store.body(number).map_err(internal)?.unwrap_or_default();
    let hash = header.hash_slow();
    let transactions = if full {
        BlockTransactions::Full(
            body.iter()
                .enumerate()
                .map(|(i, t)| rpc_transaction(t, &header, hash, i))
                .collect::<Result<_, _>>()?,
        )
    } else {
        BlockTransactions::Hashes(
            body.iter()
                .map(|t| {
                    TxEnvelope::decode_2718_exact(&t.raw)
                        .map(|e| *e.tx_hash())
                        .map_err(|e| RpcError::new(-32603, e.to_string()))
                })
                .collect::<Result<_, _>>()?,
        )
    };
    let size = alloy_rlp::encode(&header).len() + body.iter().map(|t| t.raw.len()).sum::<usize>();
    Ok(Some(Block {
        header: alloy_rpc_types_eth::Header {
            hash,
            inner: header,
            total_difficulty: Some(U256::ZERO),
            size: Some(U256::from(size)),
        },
        uncles: Vec::new(),
        transactions,
        withdrawals: None,
    }))
}

fn logs(node: &Node, filter: &Filter, from: u64, to: u64) -> Result<Vec<Log>, RpcError> {
    let to = to.min(node.block_number());
    if to >= from && to - from >= MAX_LOG_RANGE {
        return Err(RpcError::server(format!(
            "query covers {} blocks; the limit is {MAX_LOG_RANGE}",
            to - from + 1
        )));
    }
    let mut out = Vec::new();
    for number in from..=to {
        let Some(header) = node.store().header(number).map_err(internal)? else {
            continue;
        };
        if !filter.matches_bloom(header.logs_bloom) {
            continue;
        }
        for receipt in rpc_receipts(node, number)? {
            if out.len() > MAX_LOGS {
                return Err(RpcError::server(format!(
                    "query returned more than {MAX_LOGS} results; narrow the block range or the filter"
                )));
            }
            out.extend(
                receipt
                    .inner
                    .logs()
                    .iter()
                    .filter(|log| {
                        filter.matches_address(log.address()) && filter.matches_topics(log.topics())
                    })
                    .cloned(),
            );
        }
    }
    Ok(out)
}

fn filter_range(node: &Node, filter: &Filter) -> Result<(u64, u64), RpcError> {
    match filter.block_option {
        FilterBlockOption::AtBlockHash(hash) => {
            match node.store().block_number(&hash).map_err(internal)? {
                Some(n) => Ok((n, n)),
                None => Err(RpcError::server(format!("unknown block {hash}"))),
            }
        }
        FilterBlockOption::Range {
            from_block,
            to_block,
        } => {
            let head = node.block_number();
            let from = from_block.map_or(head, |t| block_number(node, t));
            let to = to_block.map_or(head, |t| block_number(node, t));
            Ok((from, to))
        }
    }
}

pub(super) fn dispatch(rpc: &Rpc, method: &str, p: Value) -> Result<Value, RpcError> {
    let node = &rpc.node;
    match method {
        "web3_clientVersion" => to_value(format!("medledger/{}", env!("CARGO_PKG_VERSION"))),
        "eth_chainId" => to_value(U64::from(node.chain_id())),
        "net_version" => to_value(node.chain_id().to_string()),
        "net_listening" => to_value(true),
        "eth_syncing" => to_value(false),
        "eth_accounts" => to_value(Vec::<Address>::new()),
        "eth_blockNumber" => to_value(U64::from(node.block_number())),
        "eth_gasPrice" | "eth_maxPriorityFeePerGas" | "eth_blobBaseFee" => to_value(U256::ZERO),
        "eth_feeHistory" => {
            let (count, newest, percentiles): (U64, BlockNumberOrTag, Option<Vec<f64>>) =
                params(p, 3)?;
            // Never past the head; at most 1024 blocks (as geth).
            let newest = block_number(node, newest).min(node.block_number());
            let count = count.saturating_to::<u64>().min(1024).min(newest + 1);
            let oldest = newest + 1 - count;
            let mut ratios = Vec::with_capacity(count as usize);
            for n in oldest..=newest {
                if count == 0 {
                    break;
                }
                let header = node.store().header(n).map_err(internal)?;
                ratios.push(header.map_or(0.0, |h| h.gas_used as f64 / h.gas_limit.max(1) as f64));
            }
            let rewards = percentiles.map(|p| vec![vec![0u128; p.len()]; count as usize]);
            to_value(FeeHistory {
                base_fee_per_gas: vec![0; count as usize + 1],
                gas_used_ratio: ratios,
                base_fee_per_blob_gas: vec![0; count as usize + 1],
                blob_gas_used_ratio: vec![0.0; count as usize],
                oldest_block: oldest,
                reward: rewards,
            })
        }
        "eth_getBlockByNumber" => {
            let (tag, full): (BlockNumberOrTag, Option<bool>) = params(p, 2)?;
            to_value(rpc_block(
                node,
                block_number(node, tag),
                full.unwrap_or(false),
            )?)
        }
        "eth_getBlockByHash" => {
            let (hash, full): (B256, Option<bool>) = params(p, 2)?;
            match node.store().block_number(&hash).map_err(internal)? {
                Some(n) => to_value(rpc_block(node, n, full.unwrap_or(false))?),
                None => Ok(Value::Null),
            }
        }
        "eth_getBlockTransactionCountByNumber" => {
            let (tag,): (BlockNumberOrTag,) = params(p, 1)?;
            let body = node
                .store()
                .body(block_number(node, tag))
                .map_err(internal)?;
            to_value(body.map(|b| U64::from(b.len())))
        }
        "eth_getTransactionByHash" => {
            let (hash,): (B256,) = params(p, 1)?;
            let Some((number, index)) = node.store().tx_location(&hash).map_err(internal)? else {
                return Ok(Value::Null);
            };
            let header = node.store().header(number).map_err(internal)?;
            let body = node.store().body(number).map_err(internal)?;
            match (header, body) {
                (Some(header), Some(body)) => match body.get(index as usize) {
                    Some(stored) => to_value(rpc_transaction(
                        stored,
                        &header,
                        header.hash_slow(),
                        index as usize,
                    )?),
                    None => Ok(Value::Null),
                },
                _ => Ok(Value::Null),
            }
        }
        "eth_getTransactionReceipt" => {
            let (hash,): (B256,) = params(p, 1)?;
            let Some((number, index)) = node.store().tx_location(&hash).map_err(internal)? else {
                return Ok(Value::Null);
            };
            to_value(rpc_receipts(node, number)?.into_iter().nth(index as usize))
        }
        "eth_sendRawTransaction" => {
            let (raw,): (Bytes,) = params(p, 1)?;
            to_value(node.send_raw_transaction(&raw).map_err(tx_error)?)
        }
        "eth_call" => {
            let (req, block, _overrides): (TransactionRequest, Option<BlockId>, Option<Value>) =
                params(p, 3)?;
            require_head_state(node, block)?;
            to_value(node.call(&call_request(req)).map_err(call_error)?)
        }
        "eth_estimateGas" => {
            let (req, block, _overrides): (TransactionRequest, Option<BlockId>, Option<Value>) =
                params(p, 3)?;
            require_head_state(node, block)?;
            to_value(U64::from(
                node.estimate_gas(&call_request(req)).map_err(call_error)?,
            ))
        }
        "eth_getTransactionCount" => {
            let (address, block): (Address, Option<BlockId>) = params(p, 2)?;
            let pending = matches!(block, Some(BlockId::Number(BlockNumberOrTag::Pending)));
            require_head_state(node, block)?;
            to_value(U64::from(node.nonce(&address, pending)))
        }
        "eth_getBalance" => {
            let (address, block): (Address, Option<BlockId>) = params(p, 2)?;
            require_head_state(node, block)?;
            to_value(node.with_head(|h| {
                h.state
                    .account(&address)
                    .map(|a| a.balance)
                    .unwrap_or_default()
            }))
        }
        "eth_getCode" => {
            let (address, block): (Address, Option<BlockId>) = params(p, 2)?;
            require_head_state(node, block)?;
            to_value(node.with_head(|h| h.state.code(&address)))
        }
        "eth_getStorageAt" => {
            let (address, slot, block): (Address, U256, Option<BlockId>) = params(p, 3)?;
            require_head_state(node, block)?;
            to_value(B256::from(
                node.with_head(|h| h.state.storage_at(&address, &slot)),
            ))
        }
        "eth_getLogs" => {
            let (filter,): (Filter,) = params(p, 1)?;
            let (from, to) = filter_range(node, &filter)?;
            to_value(logs(node, &filter, from, to)?)
        }
        "eth_newFilter" | "eth_newBlockFilter" => {
            let logs = if method == "eth_newFilter" {
                let (filter,): (Filter,) = params(p, 1)?;
                Some(filter)
            } else {
                None
            };
            let mut table = rpc.filters.inner.lock().unwrap_or_else(|e| e.into_inner());
            table
                .filters
                .retain(|_, f| f.polled.elapsed() < FILTER_TIMEOUT);
            if table.filters.len() >= MAX_FILTERS {
                return Err(RpcError::server(format!(
                    "too many filters ({MAX_FILTERS}); uninstall some or let them expire"
                )));
            }
            table.next_id += 1;
            let id = table.next_id;
            table.filters.insert(
                id,
                InstalledFilter {
                    logs,
                    reported: node.block_number(),
                    polled: Instant::now(),
                },
            );
            to_value(U256::from(id))
        }
        "eth_getFilterChanges" | "eth_getFilterLogs" => {
            let (id,): (U256,) = params(p, 1)?;
            let id = u64::try_from(id).map_err(|_| RpcError::server("filter not found"))?;
            // One head for the whole answer, so that no block is reported
            // twice; the filter moves on only once the answer is made.
            let head = node.block_number();
            let (filter, since) = {
                let mut table = rpc.filters.inner.lock().unwrap_or_else(|e| e.into_inner());
                let f = table
                    .filters
                    .get_mut(&id)
                    .ok_or_else(|| RpcError::server("filter not found"))?;
                f.polled = Instant::now();
                (f.logs.clone(), f.reported)
            };
            let answer = match filter {
                None => {
                    let mut hashes = Vec::new();
                    for n in since + 1..=head {
                        if let Some(h) = node.store().header(n).map_err(internal)? {
                            hashes.push(h.hash_slow());
                        }
                    }
                    to_value(hashes)?
                }
                Some(filter) if method == "eth_getFilterLogs" => {
                    let (from, to) = filter_range(node, &filter)?;
                    to_value(logs(node, &filter, from, to)?)?
                }
                Some(filter) => {
                    // New blocks since the last poll, within the filter's own
                    // range where it has one.
                    let (mut from, mut to) = (since + 1, head);
                    if let FilterBlockOption::Range {
                        from_block,
                        to_block,
                    } = filter.block_option
                    {
                        if let Some(t) = from_block {
                            from = from.max(block_number(node, t));
                        }
                        if let Some(t) = to_block {
                            to = to.min(block_number(node, t));
                        }
                    }
                    if from > to {
                        to_value(Vec::<Log>::new())?
                    } else {
                        to_value(logs(node, &filter, from, to)?)?
                    }
                }
            };
            if method == "eth_getFilterChanges" {
                let mut table = rpc.filters.inner.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(f) = table.filters.get_mut(&id) {
                    f.reported = f.reported.max(head);
                }
            }
            Ok(answer)
        }
        "eth_uninstallFilter" => {
            let (id,): (U256,) = params(p, 1)?;
            let mut table = rpc.filters.inner.lock().unwrap_or_else(|e| e.into_inner());
            let removed = u64::try_from(id)
                .ok()
                .and_then(|id| table.filters.remove(&id))
                .is_some();
            to_value(removed)
        }
        _ => Err(RpcError::new(
            -32601,
            format!(
                "the method {} does not exist/is not available",
                method.chars().take(64).collect::<String>()
            ),
        )),
    }
}

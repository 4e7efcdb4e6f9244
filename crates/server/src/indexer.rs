//! The chain indexer: every event of our contracts (Registry, RuleManager
//! and the shipped rules, Consent, AccessLog, Anchor) copied into SQL, in
//! chain order, from a persisted cursor.
//!
//! Each step reads the logs of the blocks after the cursor (at most
//! [`BLOCKS_PER_STEP`]) and writes them together with the new cursor in one
//! transaction: after a crash or restart the indexer resumes at the first
//! block not committed, and an event is never stored twice (its key is
//! (block, log index)). The authority chain has immediate finality (one
//! sealer, or QBFT), so there are no reorganisations to undo.

use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::{Filter, Log};
use medledger_contracts::{Contracts, decode_event};
use medledger_pki::health::Outage;
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, SqlValue, insert_many};
use std::time::Duration;

/// Most blocks read in one step.
pub const BLOCKS_PER_STEP: u64 = 2_000;

/// The cursor's name in `chain_cursor`.
const CURSOR: &str = "events";

/// An indexed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedEvent {
    /// Its block.
    pub block: u64,
    /// Its position among the block's logs.
    pub log_index: u64,
    /// Its transaction.
    pub tx: [u8; 32],
    /// The contract that emitted it.
    pub address: Address,
    /// The event's name, e.g. `ConsentGranted`.
    pub name: String,
    /// Its arguments as people read them, as a JSON object.
    pub args: serde_json::Value,
}

/// Why a step failed (it is retried; nothing was half written).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The chain could not be read.
    #[error("reading the chain: {0}")]
    Chain(String),
    /// The database failed.
    #[error("the database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Copies our contracts' events into SQL.
#[derive(Debug)]
pub struct Indexer<P> {
    db: Db,
    contracts: Contracts<P>,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl<P: Provider + Clone> Indexer<P> {
    /// An indexer of `contracts` into `db` (migrated).
    pub fn new(db: Db, contracts: Contracts<P>) -> Indexer<P> {
        Indexer { db, contracts }
    }

    /// The last block whose events are all stored, if any.
    pub async fn cursor(&self) -> Result<Option<u64>, IndexError> {
        cursor(&self.db).await
    }

    /// Indexes the blocks after the cursor (at most [`BLOCKS_PER_STEP`]);
    /// returns how many events it stored and whether it reached the head.
    pub async fn step(&self) -> Result<(u64, bool), IndexError> {
        let chain = |e: &dyn std::fmt::Display| IndexError::Chain(e.to_string());
        let provider = self.contracts.provider();
        let head = provider.get_block_number().await.map_err(|e| chain(&e))?;
        let from = match self.cursor().await? {
            Some(done) if done >= head => return Ok((0, true)),
            Some(done) => done + 1,
            None => 0,
        };
        let to = head.min(from + BLOCKS_PER_STEP - 1);
        let filter = Filter::new()
            .address(self.contracts.addresses().all())
            .from_block(from)
            .to_block(to);
        let logs = provider.get_logs(&filter).await.map_err(|e| chain(&e))?;
        let mut rows = Vec::with_capacity(logs.len());
        for log in &logs {
            let (Some(block), Some(index), Some(tx)) =
                (log.block_number, log.log_index, log.transaction_hash)
            else {
                return Err(IndexError::Chain(
                    "a log without block, index or transaction".into(),
                ));
            };
            let (name, args) = match decode_event(&log.inner) {
                Some(event) => (
                    event.name,
                    serde_json::Value::Object(
                        event
                            .args
                            .into_iter()
                            .map(|(k, v)| (k, serde_json::Value::String(v)))
                            .collect(),
                    ),
                ),
                None => ("(unknown)".to_owned(), serde_json::json!({})),
            };
            let topics: Vec<u8> = log.topics().iter().flat_map(|t| t.0).collect();
            rows.push(vec![
                SqlValue::Int(to_i64(block)),
                SqlValue::Int(to_i64(index)),
                SqlValue::Bytes(tx.to_vec()),
                SqlValue::Bytes(log.address().to_vec()),
                SqlValue::Text(name),
                SqlValue::Text(args.to_string()),
                SqlValue::Bytes(topics),
                SqlValue::Bytes(log.data().data.to_vec()),
            ]);
        }
        let mut db = self.db.pool().begin().await?;
        insert_many(
            &mut db,
            "chain_events",
            &[
                "block",
                "log_index",
                "tx",
                "address",
                "name",
                "args",
                "topics",
                "data",
            ],
            "ON CONFLICT DO NOTHING",
            &rows,
        )
        .await?;
        sqlx::query(
            "INSERT INTO chain_cursor (name, block) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET block = excluded.block",
        )
        .bind(CURSOR)
        .bind(to_i64(to))
        .execute(&mut *db)
        .await?;
        db.commit().await?;
        Ok((rows.len() as u64, to == head))
    }

    /// Steps until the head, then looks again every `every`, forever.
    /// While the chain cannot be read, one log line per outage (and a
    /// reminder every 30 s), retries backing off to 5 s.
    pub async fn run(self, every: Duration) {
        let mut outage = Outage::new("medledger server: indexing the chain");
        loop {
            match self.step().await {
                Ok((_, caught_up)) => {
                    outage.worked();
                    if caught_up {
                        tokio::time::sleep(every).await;
                    }
                }
                Err(e) => {
                    outage.failed(&e);
                    tokio::time::sleep(outage.pause(every)).await;
                }
            }
        }
    }
}

pub(crate) async fn cursor(db: &Db) -> Result<Option<u64>, IndexError> {
    let row = sqlx::query("SELECT block FROM chain_cursor WHERE name = $1")
        .bind(CURSOR)
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(r) => Some(u64::try_from(r.try_get::<i64, _>("block")?).unwrap_or(0)),
        None => None,
    })
}

/// The stored events named `name` (all with `None`), in chain order.
pub async fn events(db: &Db, name: Option<&str>) -> Result<Vec<IndexedEvent>, IndexError> {
    let rows = sqlx::query(
        "SELECT block, log_index, tx, address, name, args FROM chain_events \
         WHERE $1 = '' OR name = $1 ORDER BY block, log_index",
    )
    .bind(name.unwrap_or(""))
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(event_of_row).collect()
}

/// The stored events with one of `names`, in chain order or newest
/// first, at most `limit` of them.
pub async fn events_named(
    db: &Db,
    names: &[&str],
    newest_first: bool,
    limit: Option<u64>,
) -> Result<Vec<IndexedEvent>, IndexError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let order = if newest_first { "DESC" } else { "ASC" };
    let limit = limit.map_or_else(String::new, |n| format!(" LIMIT {n}"));
    let sql = format!(
        "SELECT block, log_index, tx, address, name, args FROM chain_events \
         WHERE name IN ({}) ORDER BY block {order}, log_index {order}{limit}",
        marks.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for name in names {
        query = query.bind(*name);
    }
    let rows = query.fetch_all(db.pool()).await?;
    rows.iter().map(event_of_row).collect()
}

fn event_of_row(r: &medledger_storage::sqlx::any::AnyRow) -> Result<IndexedEvent, IndexError> {
    let tx: Vec<u8> = r.try_get("tx")?;
    let address: Vec<u8> = r.try_get("address")?;
    let args: String = r.try_get("args")?;
    Ok(IndexedEvent {
        block: u64::try_from(r.try_get::<i64, _>("block")?).unwrap_or(0),
        log_index: u64::try_from(r.try_get::<i64, _>("log_index")?).unwrap_or(0),
        tx: tx.as_slice().try_into().unwrap_or([0; 32]),
        address: Address::try_from(address.as_slice()).unwrap_or_default(),
        name: r.try_get("name")?,
        args: serde_json::from_str(&args).unwrap_or_default(),
    })
}

/// The logs of event `name` that `filter` matches (by address and topics;
/// its block range is ignored), oldest first: those indexed, then those
/// of the blocks after the cursor, asked from the chain in bounded ranges
/// (an event just sent is seen before the indexer has it). Nothing is
/// asked from block 0 but by an indexer that has not started.
pub(crate) async fn logs<P: Provider + Clone>(
    db: &Db,
    contracts: &Contracts<P>,
    name: &str,
    filter: &Filter,
) -> Result<Vec<Log>, IndexError> {
    // Read before the rows, so that a step committed in between is read
    // twice rather than missed; the duplicates are dropped below.
    let after = cursor(db).await?;
    let rows = sqlx::query(
        "SELECT block, log_index, tx, address, topics, data FROM chain_events \
         WHERE name = $1 ORDER BY block, log_index",
    )
    .bind(name)
    .fetch_all(db.pool())
    .await?;
    let mut logs = Vec::new();
    for r in &rows {
        let address: Vec<u8> = r.try_get("address")?;
        let topics: Vec<u8> = r.try_get("topics")?;
        let data: Vec<u8> = r.try_get("data")?;
        let tx: Vec<u8> = r.try_get("tx")?;
        let inner = alloy::primitives::Log::new_unchecked(
            Address::try_from(address.as_slice()).unwrap_or_default(),
            topics.chunks_exact(32).map(B256::from_slice).collect(),
            data.into(),
        );
        if !filter.matches(&inner) {
            continue;
        }
        logs.push(Log {
            inner,
            block_number: Some(u64::try_from(r.try_get::<i64, _>("block")?).unwrap_or(0)),
            log_index: Some(u64::try_from(r.try_get::<i64, _>("log_index")?).unwrap_or(0)),
            transaction_hash: Some(B256::from_slice(&tx)),
            ..Log::default()
        });
    }
    let from = after.map_or(0, |done| done + 1);
    let newer = medledger_contracts::logs::logs_between(contracts.provider(), filter, from, None)
        .await
        .map_err(|e| IndexError::Chain(e.to_string()))?;
    for log in newer {
        if !logs
            .iter()
            .any(|l| (l.block_number, l.log_index) == (log.block_number, log.log_index))
        {
            logs.push(log);
        }
    }
    Ok(logs)
}

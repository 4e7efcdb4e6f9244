//! Chain recovery, the server's part (`medledger chain recover`: a
//! compromised chain is discarded and a new one started from the recovery
//! copy). The server's index of the chain's events is that copy:
//! [`indexed_logs`] gives the events up to the last trusted block, from
//! which `medledger_contracts::recover` rebuilds the contracts on the new
//! chain; [`retire`] then moves the server onto the new chain:
//!
//! ```text
//!  chain_events ------------> retired_chain_events (kept, by retired chain)
//!  ledger_anchors, batches -> retired_anchors; anchored again on the new chain
//!  alerts, annotations -----> keys of chain events and annotation ids set aside
//!  chain_cursor ------------> events: from block 0 of the new chain;
//!                             alerts: after the restoring blocks (no alerts for them)
//!  retired_chains ----------> the old Registry and genesis, the last trusted block and hash, the new Registry
//! ```

use crate::indexer::IndexError;
use alloy::primitives::{Address, B256, Bytes, Log, LogData};
use medledger_storage::Db;
use medledger_storage::sqlx::{self, Row};

/// The indexed logs of blocks `0..=upto`, in chain order.
pub async fn indexed_logs(db: &Db, upto: u64) -> Result<Vec<Log>, IndexError> {
    let rows = sqlx::query(
        "SELECT address, topics, data FROM chain_events WHERE block <= $1 ORDER BY block, log_index",
    )
    .bind(i64::try_from(upto).unwrap_or(i64::MAX))
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let address: Vec<u8> = r.try_get("address")?;
            let topics: Vec<u8> = r.try_get("topics")?;
            let data: Vec<u8> = r.try_get("data")?;
            let bad =
                || IndexError::Chain("an indexed log with a malformed address or topics".into());
            if !topics.len().is_multiple_of(32) {
                return Err(bad());
            }
            let topics = topics.chunks(32).map(B256::from_slice).collect();
            Ok(Log {
                address: Address::try_from(address.as_slice()).map_err(|_| bad())?,
                data: LogData::new(topics, Bytes::from(data)).ok_or_else(bad)?,
            })
        })
        .collect()
}

/// The last block the server has indexed, if any.
pub async fn indexed_head(db: &Db) -> Result<Option<u64>, IndexError> {
    crate::indexer::cursor(db).await
}

/// What [`retire`] records.
#[derive(Debug, Clone)]
pub struct Retirement {
    /// The retired chain's Registry.
    pub registry: Address,
    /// The retired chain's genesis hash (zero if unknown).
    pub genesis: B256,
    /// Its last trusted block, and that block's hash.
    pub trusted_block: u64,
    /// See `trusted_block`.
    pub trusted_hash: B256,
    /// The new chain's Registry.
    pub successor: Address,
    /// The new chain's head once its contracts are restored: the alert
    /// task starts after it.
    pub alerts_after: u64,
}

/// What [`retire`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// The retired chain's number here (1 for the first).
    pub chain: i64,
    /// Indexed events kept as the retired chain's.
    pub events: u64,
    /// Batch roots and checkpoints whose anchors were on the retired chain.
    pub anchors: u64,
}

/// Moves the server's chain state from the retired chain to the new one,
/// in one transaction (see the module's picture).
pub async fn retire(db: &Db, r: &Retirement) -> Result<Retired, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let chain: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS id FROM retired_chains")
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
    sqlx::query(
        "INSERT INTO retired_chains \
         (id, registry, genesis, trusted_block, trusted_hash, successor, retired_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(chain)
    .bind(r.registry.to_vec())
    .bind(r.genesis.to_vec())
    .bind(i64::try_from(r.trusted_block).unwrap_or(i64::MAX))
    .bind(r.trusted_hash.to_vec())
    .bind(r.successor.to_vec())
    .bind(i64::try_from(medledger_protocol::now_ms()).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    let events = sqlx::query(
        "INSERT INTO retired_chain_events \
         (chain, block, log_index, tx, address, name, args, topics, data) \
         SELECT $1, block, log_index, tx, address, name, args, topics, data FROM chain_events",
    )
    .bind(chain)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM chain_events")
        .execute(&mut *tx)
        .await?;
    let mut anchors = 0;
    for (kind, table, item, size) in [
        (2, "ingest_batches", "root", "count"),
        (3, "ledger_anchors", "patient", "size"),
        (6, "ledger_key_rotations", "hash", "seq"),
    ] {
        anchors += sqlx::query(&format!(
            "INSERT INTO retired_anchors \
             (chain, kind, item, size, anchor_id, anchor_tx, anchor_block) \
             SELECT $1, {kind}, {item}, {size}, anchor_id, anchor_tx, anchor_block FROM {table} \
             WHERE anchor_id IS NOT NULL"
        ))
        .bind(chain)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(&format!(
            "UPDATE {table} SET anchor_id = NULL, anchor_tx = NULL, anchor_block = NULL"
        ))
        .execute(&mut *tx)
        .await?;
    }
    // Alerts of chain events are keyed by (block, log index), and
    // annotation texts by the annotation's id: the new chain counts both
    // from the start again. The retired ones step aside (`chain` is ours,
    // an integer).
    sqlx::query(&format!(
        "UPDATE alerts SET source = 'retired-{chain}:' || source WHERE source LIKE 'event:%'"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "UPDATE annotations SET id = -({chain} * 1000000000000 + id) WHERE id > 0"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM chain_cursor WHERE name = 'events'")
        .execute(&mut *tx)
        .await?;
    crate::alerts::set_cursor(&mut tx, r.alerts_after).await?;
    tx.commit().await?;
    Ok(Retired {
        chain,
        events,
        anchors,
    })
}

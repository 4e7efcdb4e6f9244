//! Anchoring: every committed batch root (kind 2: `first` and `last` are
//! the hashes of its first and last reading, `count` its readings), and
//! periodically a fresh checkpoint of every patient ledger that grew
//! (kind 3: `first` = patientRef, `last` = SHA-256 of the signed note,
//! `root` and `count` the checkpoint's), and every ledger key rotation
//! not yet anchored (kind 6, [`LEDGER_KEY_KIND`]), in one `anchorMany` per
//! round.
//!
//! Servers sharing a database each anchor the batches they wrote and the
//! ledgers whose lease they hold, and also those of a server whose
//! leases lapsed (it died before anchoring them).

use crate::State;
use crate::failure::{Cause, Doing, Failure};
use alloy::primitives::B256;
use medledger_contracts::{AnchorInput, LEDGER_KEY_KIND};
use medledger_patient_ledger::verify_rotation;
use medledger_pki::health::Outage;
use medledger_storage::sqlx::{self, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most roots per transaction.
const MAX_ROOTS: i64 = 200;

/// One root to anchor and the row to mark afterwards.
enum Pending {
    Batch(Vec<u8>),
    Checkpoint(Vec<u8>, i64),
    Rotation(i64),
}

/// Anchors until the server stops.
pub(crate) async fn run(state: Arc<State>, every: Duration, checkpoint_every: Duration) {
    let mut last_checkpoints = Instant::now();
    let mut outage = Outage::new("medledger server: anchoring");
    loop {
        let _ = tokio::time::timeout(every, state.committed.notified()).await;
        let with_checkpoints = last_checkpoints.elapsed() >= checkpoint_every;
        if with_checkpoints {
            last_checkpoints = Instant::now();
        }
        match round(&state, with_checkpoints).await {
            Ok(_) => outage.worked(),
            Err(e) => outage.failed(&e),
        }
    }
}

/// Anchors every batch root and every grown ledger's checkpoint not yet
/// anchored, in as many rounds as it takes; returns how many.
pub(crate) async fn all(state: &State) -> Result<usize, Failure> {
    let mut anchored = 0;
    loop {
        match round(state, true).await? {
            0 => return Ok(anchored),
            n => anchored += n,
        }
    }
}

/// One `anchorMany` of unanchored batch roots and, `with_checkpoints`,
/// checkpoints of grown ledgers; returns how many roots it anchored.
async fn round(state: &State, with_checkpoints: bool) -> Result<usize, Failure> {
    let _one = state.anchoring.lock().await;
    let mut inputs = Vec::new();
    let mut pending = Vec::new();
    rotations(state, &mut inputs, &mut pending)
        .await
        .doing("reading ledger key rotations to anchor")?;
    batches(state, &mut inputs, &mut pending)
        .await
        .doing("reading batches to anchor")?;
    if with_checkpoints && inputs.len() < MAX_ROOTS as usize {
        checkpoints(state, &mut inputs, &mut pending)
            .await
            .doing("checkpointing ledgers")?;
    }
    if inputs.is_empty() {
        return Ok(0);
    }
    let n = inputs.len();
    match state.view.contracts().anchor_many(inputs).await {
        Ok((ids, receipt)) => {
            let tx = receipt.transaction_hash;
            let block = receipt.block_number.unwrap_or(0);
            mark(state, &pending, &ids, tx, block)
                .await
                .doing("recording anchors")?;
            state.metrics.add(
                "medledger_server_anchored_total",
                "Roots anchored on chain.",
                &[],
                n as u64,
            );
            Ok(n)
        }
        Err(e) => {
            state.metrics.add(
                "medledger_server_anchor_failures_total",
                "Anchoring transactions that failed (retried next round).",
                &[],
                1,
            );
            Err(Failure::new(format!("anchoring {n} roots"), e))
        }
    }
}

async fn batches(
    state: &State,
    inputs: &mut Vec<AnchorInput>,
    pending: &mut Vec<Pending>,
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT root, count, first, last FROM ingest_batches WHERE anchor_id IS NULL \
         AND (writer IS NULL OR writer = $2 OR NOT EXISTS (SELECT 1 FROM server_instances s \
              WHERE s.instance = ingest_batches.writer AND s.alive_until_ms > $3)) \
         ORDER BY created_ms LIMIT $1",
    )
    .bind(MAX_ROOTS)
    .bind(state.leases.me())
    .bind(i64::try_from(medledger_protocol::now_ms()).unwrap_or(i64::MAX))
    .fetch_all(state.db.pool())
    .await?;
    for row in rows {
        let root: Vec<u8> = row.try_get("root")?;
        inputs.push(AnchorInput {
            kind: 2,
            count: u64::try_from(row.try_get::<i64, _>("count")?).unwrap_or(0),
            root: b256(&root),
            first: b256(&row.try_get::<Vec<u8>, _>("first")?),
            last: b256(&row.try_get::<Vec<u8>, _>("last")?),
        });
        pending.push(Pending::Batch(root));
    }
    Ok(())
}

/// Every ledger key rotation statement not yet anchored.
async fn rotations(
    state: &State,
    inputs: &mut Vec<AnchorInput>,
    pending: &mut Vec<Pending>,
) -> Result<(), Cause> {
    let rows = sqlx::query(
        "SELECT seq, statement FROM ledger_key_rotations WHERE anchor_id IS NULL ORDER BY seq",
    )
    .fetch_all(state.db.pool())
    .await?;
    for row in rows {
        let seq: i64 = row.try_get("seq")?;
        let statement: String = row.try_get("statement")?;
        let index = usize::try_from(seq).unwrap_or(1).saturating_sub(1);
        let rotation = verify_rotation(&statement, index)?;
        let hash = |text: &str| B256::from(medledger_protocol::reading_hash(text.as_bytes()));
        inputs.push(AnchorInput {
            kind: LEDGER_KEY_KIND,
            count: u64::try_from(seq).unwrap_or(0),
            root: hash(&statement),
            first: hash(&rotation.old),
            last: hash(&rotation.new),
        });
        pending.push(Pending::Rotation(seq));
    }
    Ok(())
}

fn b256(bytes: &[u8]) -> B256 {
    B256::try_from(bytes).unwrap_or_default()
}

/// A checkpoint of every ledger that grew since its last anchored one.
async fn checkpoints(
    state: &State,
    inputs: &mut Vec<AnchorInput>,
    pending: &mut Vec<Pending>,
) -> Result<(), Cause> {
    let rows = sqlx::query(
        "SELECT e.patient AS patient, COUNT(*) AS size FROM ledger_entries e \
         JOIN ledger_leases l ON l.patient = e.patient \
         WHERE l.holder = $1 OR NOT EXISTS (SELECT 1 FROM server_instances s \
               WHERE s.instance = l.holder AND s.alive_until_ms > $2) \
         GROUP BY e.patient \
         HAVING COUNT(*) > COALESCE((SELECT MAX(a.size) FROM ledger_anchors a \
         WHERE a.patient = e.patient AND a.anchor_id IS NOT NULL), 0)",
    )
    .bind(state.leases.me())
    .bind(i64::try_from(medledger_protocol::now_ms()).unwrap_or(i64::MAX))
    .fetch_all(state.db.pool())
    .await?;
    let room = (MAX_ROOTS as usize).saturating_sub(inputs.len());
    for row in rows.into_iter().take(room) {
        let patient: Vec<u8> = row.try_get("patient")?;
        let Ok(patient_ref) = <[u8; 32]>::try_from(patient.as_slice()) else {
            continue;
        };
        let note = match state.ledger.checkpoint(&patient_ref).await {
            Ok(note) => note,
            // An erased ledger has nothing more to anchor.
            Err(medledger_patient_ledger::LedgerError::Erased(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let cp = state.ledger.history().verify_checkpoint(&note)?;
        let size = i64::try_from(cp.size).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO ledger_anchors (patient, size, note) VALUES ($1, $2, $3) \
             ON CONFLICT (patient, size) DO UPDATE SET note = excluded.note",
        )
        .bind(patient.clone())
        .bind(size)
        .bind(note.as_str())
        .execute(state.db.pool())
        .await?;
        inputs.push(AnchorInput {
            kind: 3,
            count: cp.size,
            root: B256::from(cp.root),
            first: B256::from(patient_ref),
            last: B256::from(medledger_protocol::reading_hash(note.as_bytes())),
        });
        pending.push(Pending::Checkpoint(patient, size));
    }
    Ok(())
}

async fn mark(
    state: &State,
    pending: &[Pending],
    ids: &[u64],
    tx: B256,
    block: u64,
) -> Result<(), sqlx::Error> {
    let mut db = state.db.pool().begin().await?;
    for (p, id) in pending.iter().zip(ids) {
        let id = i64::try_from(*id).unwrap_or(i64::MAX);
        let block = i64::try_from(block).unwrap_or(i64::MAX);
        match p {
            Pending::Batch(root) => {
                sqlx::query(
                    "UPDATE ingest_batches SET anchor_id = $1, anchor_tx = $2, anchor_block = $3 WHERE root = $4",
                )
                .bind(id)
                .bind(tx.to_vec())
                .bind(block)
                .bind(root.clone())
                .execute(&mut *db)
                .await?;
            }
            Pending::Checkpoint(patient, size) => {
                sqlx::query(
                    "UPDATE ledger_anchors SET anchor_id = $1, anchor_tx = $2, anchor_block = $3 \
                     WHERE patient = $4 AND size = $5",
                )
                .bind(id)
                .bind(tx.to_vec())
                .bind(block)
                .bind(patient.clone())
                .bind(*size)
                .execute(&mut *db)
                .await?;
            }
            Pending::Rotation(seq) => {
                sqlx::query(
                    "UPDATE ledger_key_rotations SET anchor_id = $1, anchor_tx = $2, \
                     anchor_block = $3 WHERE seq = $4",
                )
                .bind(id)
                .bind(tx.to_vec())
                .bind(block)
                .bind(*seq)
                .execute(&mut *db)
                .await?;
            }
        }
    }
    db.commit().await
}

//! The right to be forgotten. Erasing a patient:
//!
//! 1. destroys their data keys (crypto-shredding): from then on nothing of
//!    theirs decrypts, here or in any backup, whatever else happens;
//! 2. erases their ledger: the entries go; a signed tombstone checkpoint
//!    (the last size and root, marked `erased`) stays, so the checkpoints
//!    anchored on chain still make sense;
//! 3. deletes their sealed blobs, annotations, break-glass justifications,
//!    alerts, alert preferences and webhook, and their name in the
//!    directory, and unlinks their readings'
//!    hashes from them (the hashes stay, anonymous, because other patients'
//!    batch proofs need them).
//!
//! 4. records the erasure on chain (`Anchor` kind 4: the patientRef and the
//!    tombstone's root), so that a restore from a backup taken before it
//!    erases the patient again.
//!
//! Steps 2 to 4 are idempotent: if the server stops half way, erasing
//! again finishes the job. Readings that arrive for an erased patient are
//! rejected. On chain only salted pseudonyms and hashes remain.

use crate::State;
use crate::failure::{Doing, Failure};
use alloy::primitives::B256;
use medledger_contracts::{AnchorInput, ERASURE_KIND};
use medledger_protocol::reading_hash;
use medledger_storage::Cid;
use medledger_storage::sqlx::{self, Row};
use serde::Serialize;

/// What an erasure did.
#[derive(Debug, Clone, Serialize)]
pub struct Erasure {
    /// The patientRef, hex.
    pub patient: String,
    /// The tombstone checkpoint (a signed note).
    pub tombstone: String,
    /// Readings unlinked from the patient.
    pub readings: u64,
    /// Sealed blobs deleted.
    pub blobs: u64,
}

/// Erases a patient; erasing twice is fine.
pub(crate) async fn erase(state: &State, patient: &[u8; 32]) -> Result<Erasure, Failure> {
    state
        .vault
        .erase(patient)
        .await
        .doing("erasing: the data keys")?;
    state
        .leases
        .take([*patient], true)
        .await
        .doing("erasing: the ledger's lease")?;
    let tombstone = state
        .ledger
        .erase(patient)
        .await
        .doing("erasing: the ledger")?;
    let rows = sqlx::query("SELECT DISTINCT blob FROM ingest_readings WHERE patient = $1")
        .bind(patient.to_vec())
        .fetch_all(state.db.pool())
        .await
        .doing("erasing: finding the blobs")?;
    let mut blobs = 0;
    for row in rows {
        let cid: String = row.try_get("blob").doing("erasing: a blob")?;
        let cid: Cid = cid.parse().doing("erasing: a blob's CID")?;
        state
            .blobs
            .delete(&cid)
            .await
            .doing("erasing: deleting a blob")?;
        blobs += 1;
    }
    let sql = "erasing: the database";
    let mut tx = state.db.pool().begin().await.doing(sql)?;
    let readings = sqlx::query(
        "UPDATE ingest_readings SET patient = $2, idx = 0, blob = '', blob_sha256 = $2, \
         pos = 0, epc = $3, seq = 0, ts_ms = 0 WHERE patient = $1",
    )
    .bind(patient.to_vec())
    .bind(vec![0u8; 32])
    .bind(vec![0u8; 12])
    .execute(&mut *tx)
    .await
    .doing(sql)?
    .rows_affected();
    for table in [
        "annotations",
        "justifications",
        "alerts",
        "alert_prefs",
        "alert_webhooks",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE patient = $1"))
            .bind(patient.to_vec())
            .execute(&mut *tx)
            .await
            .doing(sql)?;
    }
    tx.commit().await.doing(sql)?;
    // Their name, kept by the account the Registry knows them by.
    let account = state
        .view
        .contracts()
        .registry()
        .patientAccount(B256::from(*patient))
        .call()
        .await
        .doing("erasing: asking the Registry for the patient's account")?;
    state
        .directory
        .forget(account)
        .await
        .doing("erasing: forgetting the patient's name")?;
    // The erasure on chain, where a restore from an older backup finds it.
    // A tombstone from before a rotation is signed by a retired key.
    let cp = state
        .ledger
        .history()
        .verify_checkpoint(&tombstone)
        .doing("erasing: the tombstone")?;
    state
        .view
        .contracts()
        .anchor_many(vec![AnchorInput {
            kind: ERASURE_KIND,
            // Anchor takes no empty count: an empty ledger's tombstone
            // counts 1 (its root, the empty tree's, tells the two apart).
            count: cp.size.max(1),
            root: B256::from(cp.root),
            first: B256::from(*patient),
            last: B256::from(reading_hash(tombstone.as_bytes())),
        }])
        .await
        .doing(
            "erasing: recording the erasure on chain (the data is gone here; erase again to record it)",
        )?;
    state.metrics.add(
        "medledger_server_erasures_total",
        "Patients erased (forgotten).",
        &[],
        1,
    );
    Ok(Erasure {
        patient: hex::encode(patient),
        tombstone,
        readings,
        blobs,
    })
}

//! The proof that one reading is stored: its `DataRecorded` entry with an
//! inclusion proof to a signed checkpoint of the patient's ledger, and the
//! reading's inclusion in the batch root the server anchored. A third party
//! checks it offline with SHA-256 and Ed25519 ([`verify`]); the anchors it
//! names are then looked up on the chain.
//!
//! ```json
//! { "format": "medledger-reading-proof/1",
//!   "reading": "<reading hash hex>", "patient": "<patientRef hex>",
//!   "ledger": { "index": 0, "entry": "<base64 stored entry>", "size": 1,
//!               "proof": ["<hash hex>", ...], "checkpoint": "<signed note>",
//!               "verifier_key": "<name+id+key>",
//!               "key_history": ["<rotation statement>", ...], "anchor": null },
//!   "batch":  { "root": "<hex>", "index": 0, "count": 1,
//!               "proof": ["<hash hex>", ...],
//!               "anchor": { "id": 7, "tx": "0x...", "block": 42 } } }
//! ```
//!
//! `key_history` (left out until the ledger key is first rotated) holds the
//! rotation statements oldest first; the entry and the checkpoint may be
//! signed by any key of it, each before its retirement.

use crate::checkpoint::CheckpointError;
use crate::entry::{EntryError, Field};
use crate::key_history::{KeyHistory, KeyHistoryError};
use crate::merkle::{Hash, ProofError, leaf_hash, verify_inclusion};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// The format this version writes and reads.
pub const FORMAT: &str = "medledger-reading-proof/1";

/// Where a root was anchored on chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorRef {
    /// `Anchor.record(id)`.
    pub id: u64,
    /// The anchoring transaction, `0x` hex.
    pub tx: String,
    /// Its block.
    pub block: u64,
}

/// The reading's place in the patient's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerPart {
    /// The entry's index.
    pub index: u64,
    /// The stored entry, base64.
    pub entry: String,
    /// The checkpoint's size.
    pub size: u64,
    /// The inclusion proof, hex hashes.
    pub proof: Vec<String>,
    /// The signed checkpoint.
    pub checkpoint: String,
    /// The current ledger key.
    pub verifier_key: String,
    /// The ledger key's rotation statements, oldest first; empty (and left
    /// out of the JSON) if it was never rotated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_history: Vec<String>,
    /// Where this checkpoint was anchored, if it was.
    pub anchor: Option<AnchorRef>,
}

/// The reading's place in the server's batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPart {
    /// The batch root, hex.
    pub root: String,
    /// The reading's position in the batch.
    pub index: u64,
    /// Readings in the batch.
    pub count: u64,
    /// The inclusion proof, hex hashes.
    pub proof: Vec<String>,
    /// Where the root was anchored, if it was yet.
    pub anchor: Option<AnchorRef>,
}

/// A reading's proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingProof {
    /// [`FORMAT`].
    pub format: String,
    /// The reading hash (SHA-256 of its COSE_Sign1 bytes), hex.
    pub reading: String,
    /// The patientRef, hex.
    pub patient: String,
    /// In the ledger.
    pub ledger: LedgerPart,
    /// In the batch.
    pub batch: BatchPart,
}

/// Why a reading proof does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadingProofError {
    /// Not a proof of this format.
    #[error("malformed proof: {0}")]
    Malformed(String),
    /// The checkpoint's signature or form.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The entry's form (or a signed entry's signature).
    #[error("ledger entry: {0}")]
    Entry(#[from] EntryError),
    /// The key history does not verify, or does not hold the trusted key.
    #[error("key history: {0}")]
    KeyHistory(#[from] KeyHistoryError),
    /// The entry is not this reading's record.
    #[error("the ledger entry {0}")]
    WrongEntry(String),
    /// An inclusion proof fails.
    #[error("{what}: {source}")]
    Inclusion {
        /// Which proof.
        what: &'static str,
        /// Why.
        #[source]
        source: ProofError,
    },
}

/// What a verified proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingReport {
    /// The reading hash, hex.
    pub reading: String,
    /// The patientRef, hex.
    pub patient: String,
    /// The ledger entry's index and the checkpoint's size and root.
    pub index: u64,
    /// The checkpoint's size.
    pub size: u64,
    /// The checkpoint's root.
    pub root: Hash,
    /// The batch root.
    pub batch_root: Hash,
    /// The anchors named (to look up on chain).
    pub checkpoint_anchor: Option<AnchorRef>,
    /// The batch anchor.
    pub batch_anchor: Option<AnchorRef>,
}

fn hash(text: &str, what: &str) -> Result<Hash, ReadingProofError> {
    let bytes =
        hex::decode(text).map_err(|e| ReadingProofError::Malformed(format!("{what}: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| ReadingProofError::Malformed(format!("{what} is not 32 bytes")))
}

fn hashes(list: &[String], what: &str) -> Result<Vec<Hash>, ReadingProofError> {
    list.iter().map(|h| hash(h, what)).collect()
}

/// Verifies a proof: the checkpoint's signature (and a signed entry's, of
/// an earlier release) by keys of the proof's key history, each before its
/// retirement (with
/// `trusted_key`, that history must hold it), that the entry records this
/// reading of this patient in this batch, and both inclusion proofs.
pub fn verify(json: &str, trusted_key: Option<&str>) -> Result<ReadingReport, ReadingProofError> {
    let proof: ReadingProof =
        serde_json::from_str(json).map_err(|e| ReadingProofError::Malformed(e.to_string()))?;
    if proof.format != FORMAT {
        return Err(ReadingProofError::Malformed(format!(
            "format {:?}, expected {FORMAT:?}",
            proof.format
        )));
    }
    let reading = hash(&proof.reading, "reading")?;
    let patient = hash(&proof.patient, "patient")?;
    let batch_root = hash(&proof.batch.root, "batch root")?;
    let history =
        KeyHistory::from_statements(&proof.ledger.key_history, &proof.ledger.verifier_key)?;
    if let Some(trusted) = trusted_key {
        history.require(trusted)?;
    }
    let checkpoint = history.verify_checkpoint(&proof.ledger.checkpoint)?;
    if checkpoint.size != proof.ledger.size {
        return Err(ReadingProofError::Malformed(format!(
            "the proof says size {}, the checkpoint {}",
            proof.ledger.size, checkpoint.size
        )));
    }
    let stored = B64
        .decode(&proof.ledger.entry)
        .map_err(|e| ReadingProofError::Malformed(format!("entry: {e}")))?;
    let entry = history.open_entry(&stored)?;
    let field = |name: &str| entry.body.get(name);
    if entry.patient != patient || entry.index != proof.ledger.index {
        return Err(ReadingProofError::WrongEntry(format!(
            "is entry {} of another place, not {} of this patient",
            entry.index, proof.ledger.index
        )));
    }
    if entry.kind != "DataRecorded" {
        return Err(ReadingProofError::WrongEntry(format!(
            "is {}, not DataRecorded",
            entry.kind
        )));
    }
    if field("reading") != Some(&Field::Bytes(reading.to_vec())) {
        return Err(ReadingProofError::WrongEntry(
            "records another reading".into(),
        ));
    }
    if field("batch") != Some(&Field::Bytes(batch_root.to_vec())) {
        return Err(ReadingProofError::WrongEntry("names another batch".into()));
    }
    verify_inclusion(
        &leaf_hash(&stored),
        proof.ledger.index,
        checkpoint.size,
        &hashes(&proof.ledger.proof, "ledger proof")?,
        &checkpoint.root,
    )
    .map_err(|source| ReadingProofError::Inclusion {
        what: "the entry is not in the checkpoint",
        source,
    })?;
    verify_inclusion(
        &leaf_hash(&reading),
        proof.batch.index,
        proof.batch.count,
        &hashes(&proof.batch.proof, "batch proof")?,
        &batch_root,
    )
    .map_err(|source| ReadingProofError::Inclusion {
        what: "the reading is not in the batch root",
        source,
    })?;
    Ok(ReadingReport {
        reading: proof.reading,
        patient: proof.patient,
        index: proof.ledger.index,
        size: checkpoint.size,
        root: checkpoint.root,
        batch_root,
        checkpoint_anchor: proof.ledger.anchor,
        batch_anchor: proof.batch.anchor,
    })
}

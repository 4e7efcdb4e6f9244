//! A patient's ledger as a self-contained proof bundle: what a third party
//! needs to check it offline with SHA-256 and Ed25519 (and a CBOR reader
//! for the entries' contents).
//!
//! ```json
//! { "format": "medledger-ledger-bundle/1",
//!   "patient": "<patientRef hex>",
//!   "verifier_key": "<name>+<key id hex>+<base64(0x01 || Ed25519 public key)>",
//!   "key_history": ["<rotation statement>", ...],
//!   "checkpoint": "<signed note>",
//!   "entries": [ { "index": 0, "entry": "<base64 stored entry>",
//!                  "proof": ["<base64 hash>", ...] }, ... ] }
//! ```
//!
//! `verifier_key` is the current ledger key. `key_history`, present only
//! once the key was rotated, holds the rotation statements oldest first
//! ([`crate::key_history`]); entries and checkpoints may be signed by any
//! key of that history, each before its retirement.

use crate::checkpoint::CheckpointError;
use crate::entry::{Entry, EntryError};
use crate::key_history::{KeyHistory, KeyHistoryError};
use crate::merkle::{Hash, ProofError, Tree, leaf_hash, verify_inclusion};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// The format this version writes and reads.
pub const FORMAT: &str = "medledger-ledger-bundle/1";

/// An exported ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// The patientRef, hex.
    pub patient: String,
    /// The current ledger key.
    pub verifier_key: String,
    /// The ledger key's rotation statements, oldest first; empty (and left
    /// out of the JSON) if it was never rotated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_history: Vec<String>,
    /// The signed checkpoint the proofs lead to.
    pub checkpoint: String,
    /// Every entry the checkpoint covers, in order.
    pub entries: Vec<BundleEntry>,
}

/// One entry with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleEntry {
    /// Its index.
    pub index: u64,
    /// The stored entry, base64.
    pub entry: String,
    /// Its inclusion proof in the checkpoint's tree, base64 hashes.
    pub proof: Vec<String>,
}

impl BundleEntry {
    pub(crate) fn new(index: u64, stored: &[u8], proof: &[Hash]) -> BundleEntry {
        BundleEntry {
            index,
            entry: B64.encode(stored),
            proof: proof.iter().map(|h| B64.encode(h)).collect(),
        }
    }
}

impl Bundle {
    pub(crate) fn new(
        patient: String,
        verifier_key: String,
        key_history: Vec<String>,
        checkpoint: String,
        entries: Vec<BundleEntry>,
    ) -> Bundle {
        Bundle {
            format: FORMAT.to_owned(),
            patient,
            verifier_key,
            key_history,
            checkpoint,
            entries,
        }
    }
}

/// Why a bundle does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Not a bundle.
    #[error("not a ledger bundle: {0}")]
    Malformed(String),
    /// The bundle's key is not the one the verifier trusts, nor does its
    /// key history hold that key.
    #[error(
        "the bundle is signed with {found}, not the trusted key {trusted} (nor does its key history hold it)"
    )]
    UntrustedKey {
        /// The bundle's key.
        found: String,
        /// The trusted key.
        trusted: String,
    },
    /// The key history does not verify.
    #[error("key history: {0}")]
    KeyHistory(#[source] KeyHistoryError),
    /// The checkpoint does not verify.
    #[error("checkpoint: {0}")]
    Checkpoint(#[source] CheckpointError),
    /// The checkpoint is another patient's.
    #[error("checkpoint: origin {found:?} is not patient {patient}'s ledger")]
    WrongLog {
        /// The origin found.
        found: String,
        /// The bundle's patient.
        patient: String,
    },
    /// An entry is not valid.
    #[error("entry {index}: {source}")]
    Entry {
        /// Which.
        index: u64,
        /// Why.
        #[source]
        source: EntryError,
    },
    /// An entry is not where it says it is.
    #[error("entry {index}: {what}")]
    Misplaced {
        /// Which.
        index: u64,
        /// What does not match.
        what: String,
    },
    /// An entry's inclusion proof fails.
    #[error("entry {index}: inclusion proof: {source}")]
    Proof {
        /// Which.
        index: u64,
        /// Why.
        #[source]
        source: ProofError,
    },
    /// Entries are missing or extra.
    #[error("the checkpoint covers {expected} entries; the bundle holds {found}")]
    Incomplete {
        /// Entries the checkpoint covers.
        expected: u64,
        /// Entries in the bundle.
        found: u64,
    },
}

/// What a verified bundle holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The patientRef, hex.
    pub patient: String,
    /// Entries covered.
    pub size: u64,
    /// The checkpoint's root.
    pub root: Hash,
    /// The decoded entries.
    pub entries: Vec<Entry>,
    /// Whether the checkpoint is an erasure tombstone.
    pub erased: bool,
    /// The entries' leaf hashes, in order.
    pub leaves: Vec<Hash>,
    /// The ledger keys, oldest first; the last is the current one.
    pub keys: Vec<String>,
}

impl Report {
    /// The root of the ledger's first `size` entries, as a checkpoint of
    /// that size must state; `None` if the bundle cannot tell (more
    /// entries than it holds, or an erased ledger's earlier sizes).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        if size == self.size {
            return Some(self.root);
        }
        let mut tree = Tree::new();
        for leaf in self.leaves.iter().take(usize::try_from(size).ok()?) {
            tree.push(*leaf);
        }
        tree.root(size)
    }

    /// Checks that the ledger extends a checkpoint of `size` entries with
    /// `root` (one anchored on chain): `Ok(true)` if its first `size`
    /// entries hash to `root`, `Ok(false)` if the bundle cannot tell (an
    /// erased ledger's earlier checkpoints), else how it does not.
    pub fn check_extends(&self, size: u64, root: &Hash) -> Result<bool, NotExtended> {
        if size > self.size {
            return Err(NotExtended::Shorter {
                size,
                held: self.size,
            });
        }
        match self.root_at(size) {
            Some(found) if found == *root => Ok(true),
            Some(found) => Err(NotExtended::Altered {
                size,
                anchored: hex::encode(root),
                found: hex::encode(found),
            }),
            None => Ok(false),
        }
    }
}

/// How a ledger fails to extend an anchored checkpoint
/// ([`Report::check_extends`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotExtended {
    /// The checkpoint covers more entries than the ledger holds.
    #[error(
        "it covers {size} entries; the ledger holds {held}: entries were removed or the ledger was rolled back"
    )]
    Shorter {
        /// Entries the checkpoint covers.
        size: u64,
        /// Entries the ledger holds.
        held: u64,
    },
    /// The ledger's first entries hash to another root.
    #[error(
        "it has root {anchored}; the ledger's first {size} entries hash to {found}: the ledger was altered"
    )]
    Altered {
        /// Entries the checkpoint covers.
        size: u64,
        /// The anchored root (hex).
        anchored: String,
        /// The root of the ledger's first `size` entries (hex).
        found: String,
    },
}

/// Verifies a bundle (JSON): the checkpoint's signature, that it is this
/// patient's log, and every entry's place and inclusion proof (and the
/// signature of a signed entry of an earlier release); and that every
/// entry the checkpoint covers is there. The checkpoint and signed entries
/// may be signed by any key of the bundle's key history, each before its
/// retirement. With `trusted_key`, that history must hold it
/// (an auditor who trusts a retired key follows its rotations).
pub fn verify(json: &str, trusted_key: Option<&str>) -> Result<Report, BundleError> {
    let bundle: Bundle =
        serde_json::from_str(json).map_err(|e| BundleError::Malformed(e.to_string()))?;
    if bundle.format != FORMAT {
        return Err(BundleError::Malformed(format!(
            "format {:?}, expected {FORMAT:?}",
            bundle.format
        )));
    }
    let history = KeyHistory::from_statements(&bundle.key_history, &bundle.verifier_key).map_err(
        |e| match e {
            KeyHistoryError::BadKey(e) => BundleError::Checkpoint(e),
            e => BundleError::KeyHistory(e),
        },
    )?;
    if let Some(trusted) = trusted_key
        && history.require(trusted).is_err()
    {
        return Err(BundleError::UntrustedKey {
            found: bundle.verifier_key,
            trusted: trusted.to_owned(),
        });
    }
    let cp = history
        .verify_checkpoint(&bundle.checkpoint)
        .map_err(BundleError::Checkpoint)?;
    if cp.origin != format!("medledger/patient/{}", bundle.patient) {
        return Err(BundleError::WrongLog {
            found: cp.origin,
            patient: bundle.patient,
        });
    }
    let erased = cp.extensions.iter().any(|l| l.starts_with("erased "));
    let expected = if erased { 0 } else { cp.size };
    if bundle.entries.len() as u64 != expected {
        return Err(BundleError::Incomplete {
            expected,
            found: bundle.entries.len() as u64,
        });
    }
    let mut entries = Vec::with_capacity(bundle.entries.len());
    let mut leaves = Vec::with_capacity(bundle.entries.len());
    for (i, e) in bundle.entries.iter().enumerate() {
        let index = i as u64;
        let misplaced = |what: String| BundleError::Misplaced { index, what };
        if e.index != index {
            return Err(misplaced(format!("listed as entry {}", e.index)));
        }
        let stored = B64
            .decode(&e.entry)
            .map_err(|_| misplaced("the entry is not base64".into()))?;
        let proof = e
            .proof
            .iter()
            .map(|h| B64.decode(h).ok().and_then(|b| Hash::try_from(b).ok()))
            .collect::<Option<Vec<Hash>>>()
            .ok_or_else(|| misplaced("a proof hash is not 32 bytes of base64".into()))?;
        let entry = history
            .open_entry(&stored)
            .map_err(|source| BundleError::Entry { index, source })?;
        if entry.index != index {
            return Err(misplaced(format!("it says it is entry {}", entry.index)));
        }
        if format!("medledger/patient/{}", hex::encode(entry.patient)) != cp.origin {
            return Err(misplaced("it is another patient's entry".into()));
        }
        let leaf = leaf_hash(&stored);
        verify_inclusion(&leaf, index, cp.size, &proof, &cp.root)
            .map_err(|source| BundleError::Proof { index, source })?;
        entries.push(entry);
        leaves.push(leaf);
    }
    Ok(Report {
        patient: bundle.patient,
        size: cp.size,
        root: cp.root,
        entries,
        erased,
        leaves,
        keys: history.keys(),
    })
}

//! The per-patient verifiable ledger: an append-only log of entries
//! hashed into an RFC 6962 (RFC 9162 §2.1) Merkle tree, under signed
//! checkpoints, so that anyone
//! holding a checkpoint can check that an entry is in the log and that a
//! later log extends an earlier one.
//!
//! ```text
//!  entry bytes --leaf_hash--> Tree (levels of complete subtrees)
//!                               |-- root(size)            -> checkpoint
//!                               |-- inclusion(i, size)    -> verify_inclusion
//!                               `-- consistency(m, n)     -> verify_consistency
//! ```
//!
//! Entries are canonical CBOR, authentic by inclusion under a signed
//! checkpoint ([`entry`]); the durable store keeps them in SQL
//! ([`store`]); a patient's ledger exports as a proof bundle that anyone can
//! verify offline ([`bundle`]). The ledger key rotates: a [`KeyHistory`]
//! of rotation statements, each signed by the old and the new key, says
//! which key signed validly when ([`key_history`]).
//!
//! No feature flags.

pub mod bundle;
pub mod checkpoint;
pub mod entry;
pub mod key_history;
pub mod merkle;
pub mod reading_proof;
pub mod store;

pub use bundle::{Bundle, BundleError, Report};
pub use checkpoint::{Checkpoint, CheckpointError, NoteSigner, NoteVerifier};
pub use entry::{Entry, EntryError, Field, KINDS};
pub use key_history::{KeyHistory, KeyHistoryError, Rotation, sign_rotation, verify_rotation};
pub use merkle::{
    Hash, ProofError, Tree, empty_root, leaf_hash, node_hash, verify_consistency, verify_inclusion,
};
pub use reading_proof::{ReadingProof, ReadingProofError, ReadingReport};
pub use store::{Ledger, LedgerError, NewEntry, Staged, Verified};

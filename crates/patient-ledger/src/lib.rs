//! The per-patient verifiable ledger: an append-only log of signed entries
//! hashed into an RFC 6962 (RFC 9162 §2.1) Merkle tree, so that anyone
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
//! No feature flags.

pub mod checkpoint;
pub mod merkle;

pub use checkpoint::{Checkpoint, CheckpointError, NoteSigner, NoteVerifier};
pub use merkle::{
    Hash, ProofError, Tree, empty_root, leaf_hash, node_hash, verify_consistency, verify_inclusion,
};

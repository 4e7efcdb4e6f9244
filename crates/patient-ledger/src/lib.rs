//! The per-patient verifiable ledger: an append-only log of entries
//! hashed into an RFC 6962 (RFC 9162 §2.1) Merkle tree, under signed
//! checkpoints, so that anyone holding a checkpoint can check that an
//! entry is in the log and that a later log extends an earlier one.
//!
//! - [`merkle`]: the Merkle tree ([`Tree`]), inclusion and consistency
//!   proofs and their verification;
//! - [`checkpoint`]: C2SP signed-note checkpoints (`tlog-checkpoint`),
//!   signed with Ed25519;
//! - [`entry`]: entries as canonical CBOR, authentic by inclusion under a
//!   signed checkpoint (the signed entries of earlier releases still read
//!   and checked);
//! - [`key_history`]: the ledger key's rotations, each signed by the old
//!   and the new key: a [`KeyHistory`] says which key signed validly when;
//! - [`store`]: the durable [`Ledger`]: entries and checkpoints in SQL, trees
//!   in memory; verification against anchored checkpoints, erasure
//!   tombstones, the inclusion proofs of many entries under one checkpoint
//!   signed but not stored, one writer per patient among several servers
//!   (the lease fence);
//! - [`bundle`]: a patient's ledger as an offline proof bundle, with the
//!   root of any prefix to check anchors against;
//! - [`reading_proof`]: one reading's proof: its `DataRecorded` entry under
//!   a signed checkpoint, and its inclusion in the batch root the server
//!   anchored.
//!
//! ```text
//!  entry bytes --leaf_hash--> Tree (levels of complete subtrees)
//!                               |-- root(size)            -> checkpoint
//!                               |-- inclusion(i, size)    -> verify_inclusion
//!                               `-- consistency(m, n)     -> verify_consistency
//!  Ledger::append (one transaction per batch) --> checkpoint (signed note)
//!      --> anchored on chain by the server (kind 3)
//!  Ledger::export --> Bundle --> checked offline, then against the anchors
//! ```
//!
//! No feature flags.

pub mod bundle;
pub mod checkpoint;
pub mod entry;
pub mod key_history;
pub mod merkle;
pub mod reading_proof;
pub mod store;

pub use bundle::{Bundle, BundleError, NotExtended, Report};
pub use checkpoint::{Checkpoint, CheckpointError, NoteSigner, NoteVerifier};
pub use entry::{Entry, EntryError, Field, KINDS};
pub use key_history::{KeyHistory, KeyHistoryError, Rotation, sign_rotation, verify_rotation};
pub use merkle::{
    Hash, ProofError, Tree, empty_root, leaf_hash, node_hash, verify_consistency, verify_inclusion,
};
pub use reading_proof::{ReadingProof, ReadingProofError, ReadingReport};
pub use store::{Ledger, LedgerError, NewEntry, Staged, Verified};

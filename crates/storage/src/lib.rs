//! medledger's storage: SQL behind one interface with two backends, SQLite
//! (embedded, the default: a WAL file in the data directory) and PostgreSQL
//! (by URL), with versioned migrations; a content-addressed blob store; and
//! envelope encryption with crypto-shredding.
//!
//! ```text
//!  Db::open_sqlite(path) | Db::connect(url) --> migrate() --> queries ($1, $2, ... on both)
//! ```
//!
//! Feature `test-utils`: the `test_utils` module, a fresh database of
//! each backend for tests (used by this crate's and the patient ledger's).

pub mod blob;
pub mod keys;
pub mod sql;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use blob::{BlobError, BlobStore, Cid, CidError, LocalDir, ObjectStoreBlobs};
pub use keys::{Kek, KekId, KekStatus, KeyError, PatientRef, Rewrapped, Vault};
/// The object store crate, for crates that reach behind an
/// [`ObjectStoreBlobs`] (an operator's tool, a test).
pub use object_store;
pub use sql::{
    Backend, Db, MIGRATIONS, Migration, Part, SqlError, SqlValue, insert_many, placeholders,
};
/// The SQL toolkit, for crates that write queries against a [`Db`].
pub use sqlx;

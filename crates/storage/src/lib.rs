//! medledger's storage: SQL behind one interface with two backends, SQLite
//! (embedded, the default: a WAL file in the data directory) and PostgreSQL
//! (by URL), with versioned migrations; a content-addressed blob store; and
//! envelope encryption with crypto-shredding.
//!
//! - [`sql`]: one SQL interface ([`Db`]) over SQLite (WAL, full sync) or
//!   PostgreSQL (TLS with rustls when the URL asks, `sslmode=verify-full`)
//!   through one sqlx `Any` pool; embedded, numbered migrations applied
//!   under a lock, each for the server's or the collector's database
//!   ([`Part`]);
//! - [`blob`]: a CIDv1 content-addressed [`BlobStore`] that re-hashes what
//!   it reads, on a local directory ([`LocalDir`]) or anything
//!   `object_store` reaches by URL ([`ObjectStoreBlobs`]: `file://`, an S3
//!   bucket configured from the `AWS_*` environment);
//! - [`keys`]: envelope encryption ([`Vault`]): per-patient AES-256-GCM data
//!   keys wrapped by a key-encryption key ([`Kek`]) whose id each records,
//!   previous KEKs for a rotation and a resumable, bounded rewrap that
//!   retires them; crypto-shredding with tombstones;
//! - `test_utils` (feature `test-utils`): a fresh database of each backend
//!   (PostgreSQL and S3 from the environment, skipped loudly without).
//!
//! ```text
//!  Db::open_sqlite(path) | Db::connect(url) --> migrate_for(Part)
//!      --> queries ($1, $2, ... on both backends)
//!  Vault::seal(patient, bytes) --> sealed blob --> BlobStore::put --> Cid
//!  BlobStore::get(cid) --sha256 checked--> Vault::open --> bytes
//!  erase: tombstone + every wrapped data key deleted, one transaction --> blobs are noise
//! ```
//!
//! Feature `test-utils`: the `test_utils` module, for this crate's tests and
//! those of the crates that build on it.

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

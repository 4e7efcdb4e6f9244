//! medledger's storage. So far: SQL behind one interface with two
//! backends, SQLite (embedded, the default: a WAL file in the data
//! directory) and PostgreSQL (by URL), with versioned migrations.
//!
//! ```text
//!  Db::open_sqlite(path) | Db::connect(url) --> migrate() --> queries ($1, $2, ... on both)
//! ```
//!
//! No feature flags.

pub mod sql;

pub use sql::{Backend, Db, MIGRATIONS, Migration, SqlError};

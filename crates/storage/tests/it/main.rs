//! Storage tests. Each SQL test runs on SQLite and on PostgreSQL: the URL of
//! a PostgreSQL database comes from `MEDLEDGER_TEST_POSTGRES` (`.ci/run`
//! sets it); without it the PostgreSQL half skips loudly, and fails in CI.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod blob;
mod keys;
mod sql;

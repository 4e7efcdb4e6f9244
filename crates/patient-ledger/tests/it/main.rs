//! The patient ledger against the RFC 6962 reference vectors and by
//! exhaustive properties.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod checkpoint;
mod key_history;
mod ledger;
mod merkle;

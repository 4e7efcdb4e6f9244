//! The `medledger` binary, run as an operator would.
#![allow(clippy::unwrap_used, missing_docs)]

mod admin;
mod ca;
mod chain;
mod verify;

//! The contracts on the embedded chain: every rule of issue 4, each refusal
//! and the fields of every event.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod access;
mod anchor;
mod anvil;
mod common;
mod consent;
mod permissions;
mod recover;
mod registry;
mod rules;

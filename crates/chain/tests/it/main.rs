//! Integration tests of the embedded chain, driven through alloy as any
//! Ethereum client would.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod common;
mod contract;
mod filters;
mod pool;
mod rejections;
mod restart;
mod rotation;
mod tls;
mod tools;

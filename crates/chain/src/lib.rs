//! medledger's embedded authority chain: an Ethereum-compatible EVM node.
//!
//! ```text
//!  eth_sendRawTransaction --> validate (decode, chain id, sender, allowlist,
//!        |                     nonce, gas) --> Pool
//!        |                                       | miner: on demand (min interval)
//!        v                                       v        or every N ms
//!  JSON-RPC (HTTP, in-process)   executor (revm) --> header, roots, seal
//!        ^                                       |
//!        +------------- Store (redb: blocks, receipts, state) <-- commit per block
//! ```
//!
//! Split like anvil: [`state`] and [`executor`] (backend), [`pool`],
//! [`node`] (miner and service loop), [`rpc`] (JSON-RPC, wire types apart),
//! [`store`] (persistence), [`seal`] (the authority's signature),
//! [`authority`] (who seals, handovers), [`rotation`] (the offline
//! rotation of its key), [`checkpoint`]
//! (signed state commitments, so that a start walks only the newest
//! blocks), [`permissions`] (who may send: the genesis allowlist, then
//! the Registry), [`texts`] (the short texts a chain holds, for privacy checks).
//!
//! Feature `test-utils`: the `test_utils` module, helpers for tests that run anvil
//! and cast beside the node (used by this crate's and `medledger-contracts`' tests).

pub mod authority;
pub mod checkpoint;
pub mod executor;
pub mod genesis;
pub mod node;
pub mod permissions;
pub mod pool;
pub mod rotation;
pub mod rpc;
pub mod seal;
pub mod state;
pub mod store;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod texts;

mod error;
mod head;
mod trie;
mod verify;

pub use error::{ChainError, Result, TxError};
pub use genesis::Genesis;
pub use node::{Node, NodeConfig, Sealing};
pub use permissions::{GenesisAllowlist, Permissions, RegistryPermissions};
pub use verify::verify_chain;

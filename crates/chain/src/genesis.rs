//! The chain's first block and the authority that seals every block.
//!
//! At first start the node writes, in its data directory:
//!
//! ```text
//! authority.key   the sealing key, hex (mode 0600)
//! genesis.json    chain id, timestamp, authority address, allowlist, gas limit
//! ```

use crate::{ChainError, Result};
use alloy_primitives::Address;
use medledger_pki::{EthAccount, files};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File names in the data directory.
pub mod layout {
    /// The authority's sealing key.
    pub const AUTHORITY_KEY: &str = "authority.key";
    /// The genesis description.
    pub const GENESIS: &str = "genesis.json";
    /// The block, receipt and state store.
    pub const STORE: &str = "chain.redb";
}

/// The block gas limit unless configured otherwise: a private chain with
/// zero gas price can afford large blocks.
pub const DEFAULT_GAS_LIMIT: u64 = 100_000_000;

/// What the chain starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Unix seconds of block 0.
    pub timestamp: u64,
    /// The only account that seals blocks.
    pub authority: Address,
    /// Accounts permitted to send transactions from block 0.
    pub allow: Vec<Address>,
    /// Gas limit of every block.
    pub gas_limit: u64,
}

impl Genesis {
    /// The hash that block 0 carries as its mix hash, tying the stored
    /// chain to this genesis (chain id, authority, allowlist, gas limit).
    pub fn hash(&self) -> alloy_primitives::B256 {
        alloy_primitives::keccak256(serde_json::to_vec(self).expect("genesis serializes"))
    }

    /// Loads the genesis and authority key of `dir`, creating both on first
    /// start. `allow` entries are added to a new genesis only: an existing
    /// chain keeps its own.
    pub fn load_or_create(
        dir: &Path,
        chain_id: u64,
        allow: &[Address],
    ) -> Result<(Genesis, EthAccount)> {
        std::fs::create_dir_all(dir).map_err(|e| ChainError::io(dir, e))?;
        let key_path = dir.join(layout::AUTHORITY_KEY);
        let genesis_path = dir.join(layout::GENESIS);
        if !genesis_path.exists() {
            let authority = EthAccount::generate();
            files::write_secret(&key_path, format!("{}\n", authority.to_hex()).as_bytes())?;
            let mut allow = allow.to_vec();
            allow.sort();
            allow.dedup();
            let genesis = Genesis {
                chain_id,
                timestamp: now_secs(),
                authority: authority.address(),
                allow,
                gas_limit: DEFAULT_GAS_LIMIT,
            };
            let json = serde_json::to_vec_pretty(&genesis).expect("genesis serializes");
            files::write_public(&genesis_path, &json)?;
        }
        let genesis: Genesis =
            serde_json::from_slice(&files::read(&genesis_path)?).map_err(|e| {
                ChainError::Store {
                    what: format!("{}: {e}", genesis_path.display()),
                }
            })?;
        let key_text = String::from_utf8(files::read(&key_path)?).unwrap_or_default();
        let authority = EthAccount::from_hex(&key_text).map_err(|e| ChainError::Store {
            what: format!("{}: {e}", key_path.display()),
        })?;
        if authority.address() != genesis.authority {
            return Err(ChainError::Store {
                what: format!(
                    "{} belongs to {}, but the genesis names {} as the authority",
                    key_path.display(),
                    authority.address(),
                    genesis.authority
                ),
            });
        }
        if genesis.chain_id != chain_id {
            return Err(ChainError::Store {
                what: format!(
                    "the chain in {} has chain id {}, not {chain_id}",
                    dir.display(),
                    genesis.chain_id
                ),
            });
        }
        Ok((genesis, authority))
    }
}

/// The current Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

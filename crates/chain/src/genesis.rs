//! The chain's first block and the authority that seals every block.
//!
//! At first start the node writes, in its data directory:
//!
//! ```text
//! authority.key   the sealing key, hex (mode 0600)
//! genesis.json    chain id, timestamp, authority address, allowlist, gas limit
//! ```
//!
//! `genesis.json` names the first authority; after a rotation
//! ([`crate::authority`]) the chain itself says who seals, and
//! `authority.key` holds that successor's key.

use crate::{ChainError, Result};
use alloy_primitives::Address;
use medledger_pki::{EthAccount, files};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File names in the data directory.
pub mod layout {
    /// The current authority's sealing key.
    pub const AUTHORITY_KEY: &str = "authority.key";
    /// The successor's key while a rotation is under way.
    pub const NEXT_AUTHORITY_KEY: &str = "authority.next.key";
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
    /// The account that seals blocks from block 0 until it hands over to
    /// a successor (see [`crate::authority`]).
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

    /// Loads the genesis of `dir`, creating it and the first authority
    /// key on first start. `allow` entries are added to a new genesis only:
    /// an existing chain keeps its own.
    pub fn load_or_create(dir: &Path, chain_id: u64, allow: &[Address]) -> Result<Genesis> {
        std::fs::create_dir_all(dir).map_err(|e| ChainError::io(dir, e))?;
        let genesis_path = dir.join(layout::GENESIS);
        if !genesis_path.exists() {
            let key_path = dir.join(layout::AUTHORITY_KEY);
            if key_path.exists() {
                if dir.join(layout::STORE).exists() {
                    return Err(ChainError::Store {
                        what: format!(
                            "{} holds blocks and an authority key but no {}: restore it from a backup",
                            dir.display(),
                            layout::GENESIS
                        ),
                    });
                }
                // A first start cut short before the genesis was written
                // (it is written last): the key never sealed anything.
                std::fs::remove_file(&key_path).map_err(|e| ChainError::io(&key_path, e))?;
            }
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
        let genesis = Genesis::load(dir)?;
        if genesis.chain_id != chain_id {
            return Err(ChainError::Store {
                what: format!(
                    "the chain in {} has chain id {}, not {chain_id}",
                    dir.display(),
                    genesis.chain_id
                ),
            });
        }
        Ok(genesis)
    }

    /// Loads the genesis of the chain in `dir`.
    pub fn load(dir: &Path) -> Result<Genesis> {
        let path = dir.join(layout::GENESIS);
        if !path.exists() {
            return Err(ChainError::Store {
                what: format!(
                    "{} holds no chain: {} is missing",
                    dir.display(),
                    layout::GENESIS
                ),
            });
        }
        serde_json::from_slice(&files::read(&path)?).map_err(|e| ChainError::Store {
            what: format!("{}: {e}", path.display()),
        })
    }
}

/// The current Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_first_start_cut_short_before_the_genesis_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        // The key file of an interrupted first start, half written.
        std::fs::write(dir.path().join(layout::AUTHORITY_KEY), "4f3e").unwrap();
        let genesis = Genesis::load_or_create(dir.path(), 1337, &[]).unwrap();
        let key = crate::rotation::read_key(&dir.path().join(layout::AUTHORITY_KEY)).unwrap();
        assert_eq!(key.address(), genesis.authority);
        // Started again, it keeps that chain.
        assert_eq!(
            Genesis::load_or_create(dir.path(), 1337, &[])
                .unwrap()
                .authority,
            genesis.authority
        );
    }

    #[test]
    fn blocks_without_a_genesis_are_refused_and_their_key_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join(layout::AUTHORITY_KEY);
        std::fs::write(&key_path, "precious").unwrap();
        std::fs::write(dir.path().join(layout::STORE), "blocks").unwrap();
        let err = Genesis::load_or_create(dir.path(), 1337, &[]).unwrap_err();
        assert!(err.to_string().contains("no genesis.json"), "{err}");
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), "precious");
    }
}

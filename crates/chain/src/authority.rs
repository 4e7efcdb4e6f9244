//! Who seals: the authority, its handovers to successors, and the offline
//! rotation of its key.
//!
//! `genesis.json` names the first authority. An authority hands over by
//! sealing a handover block, which names its successor; from the next block
//! on only the successor seals, and the retired key is refused for good:
//!
//! ```text
//!  ordinary block   nonce = 0x0000000000000000, beneficiary = its sealer
//!  handover block   nonce = 0xffffffffffffffff, beneficiary = the successor
//!                   (Clique's "authorize" vote), sealed by the outgoing key
//!
//!  genesis A -- A -- A -- [A: hand over to B] -- B -- B -- [B: to C] -- C
//! ```
//!
//! A verifier walks the headers from block 0 with [`Authorities::check`].
//! The walk is the only record of who the authority is: genesis.json stays
//! as it was (block 0 commits to its hash).
//!
//! [`rotate`] hands over with the node stopped, crash-safe at every step:
//!
//! ```text
//!  1. authority.next.key  <- new key (0600, fsync file and directory)
//!  2. chain.redb          <- handover block sealed by the old key (commit)
//!  3. authority.key       <- zeroed, then replaced by authority.next.key
//!                            (rename, fsync directory)
//! ```
//!
//! Every start of the node (and every [`rotate`]) finishes a rotation cut
//! short after step 2 (the chain hands over to the key in
//! `authority.next.key`: step 3 is redone) and rolls back one cut short
//! before it (`authority.next.key` is deleted).

use crate::genesis::{Genesis, layout, now_secs};
use crate::node::Head;
use crate::seal::{self, SealError};
use crate::store::{BlockData, Store};
use crate::{ChainError, Result};
use alloy_consensus::proofs::{calculate_receipt_root, calculate_transaction_root};
use alloy_consensus::{Header, ReceiptEnvelope, TxEnvelope};
use alloy_primitives::{Address, B64, Bloom};
use medledger_pki::{EthAccount, files};
use std::io::Write;
use std::path::Path;

/// The nonce of a handover block (Clique's "authorize" vote).
pub const HANDOVER_NONCE: B64 = B64::new([0xff; 8]);
/// The nonce of every other block.
pub const ORDINARY_NONCE: B64 = B64::ZERO;

/// The successor `header` hands over to, if it is a handover block.
pub fn successor(header: &Header) -> Option<Address> {
    (header.nonce == HANDOVER_NONCE).then_some(header.beneficiary)
}

/// An authority that handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// Its address.
    pub address: Address,
    /// The handover block: the last block it sealed.
    pub handover: u64,
}

/// Who seals the next block, tracked by walking the headers from block 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorities {
    current: Address,
    since: u64,
    retired: Vec<Retired>,
}

impl Authorities {
    /// Before block 0: the genesis authority.
    pub fn new(genesis: &Genesis) -> Authorities {
        Authorities {
            current: genesis.authority,
            since: 0,
            retired: Vec::new(),
        }
    }

    /// As a checkpoint recorded them (crate::checkpoint).
    pub(crate) fn from_parts(current: Address, since: u64, retired: Vec<Retired>) -> Authorities {
        Authorities {
            current,
            since,
            retired,
        }
    }

    /// The authority that seals the next block.
    pub fn current(&self) -> Address {
        self.current
    }

    /// The first block the current authority sealed (or seals).
    pub fn since(&self) -> u64 {
        self.since
    }

    /// The authorities that handed over, oldest first.
    pub fn retired(&self) -> &[Retired] {
        &self.retired
    }

    /// Checks the next header in chain order (block 0 first): sealed by the
    /// current authority, with the nonce and beneficiary of an ordinary
    /// block or of a handover. After a handover, the successor is current.
    pub fn check(&mut self, header: &Header) -> Result<(), SealError> {
        let found = seal::signer(header)?;
        if found != self.current {
            return Err(match self.retired.iter().find(|r| r.address == found) {
                Some(r) => SealError::Retired {
                    found,
                    handover: r.handover,
                    expected: self.current,
                },
                None => SealError::WrongSigner {
                    found,
                    expected: self.current,
                },
            });
        }
        if header.nonce == ORDINARY_NONCE {
            if header.beneficiary != found {
                return Err(SealError::Beneficiary {
                    found: header.beneficiary,
                    expected: found,
                });
            }
            return Ok(());
        }
        if header.nonce != HANDOVER_NONCE {
            return Err(SealError::Nonce(header.nonce));
        }
        let successor = header.beneficiary;
        let why = if successor.is_zero() {
            Some("is the zero address")
        } else if successor == found {
            Some("is the authority already")
        } else if self.retired.iter().any(|r| r.address == successor) {
            Some("is a retired authority")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(SealError::Successor { successor, why });
        }
        self.retired.push(Retired {
            address: found,
            handover: header.number,
        });
        self.current = successor;
        self.since = header.number + 1;
        Ok(())
    }
}

/// What [`rotate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The authority that handed over; its key is gone from the directory.
    pub retired: Address,
    /// The new authority, whose key is now `authority.key`.
    pub authority: Address,
    /// The handover block (the retired key's last).
    pub handover: u64,
}

/// Rotates the authority key of the chain in `dir`, whose node must be
/// stopped: a new key, a handover block to it sealed by the current one,
/// and the new key in `authority.key` (the old one overwritten and
/// removed). Verifies the whole stored chain first.
pub fn rotate(dir: &Path) -> Result<Rotation> {
    let genesis = Genesis::load(dir)?;
    let store_path = dir.join(layout::STORE);
    if !store_path.exists() {
        return Err(ChainError::Store {
            what: format!("{} has no block store: {}", dir.display(), layout::STORE),
        });
    }
    let store = Store::open(&store_path)?;
    let (head, mut authorities) =
        crate::verify::verify_store(&store, &genesis, crate::verify::Start::AfterCheckpoint)?;
    let old = settle(dir, &authorities)?;
    let new = EthAccount::generate();

    // 1. The successor's key, durable before any block names it.
    let next_path = dir.join(layout::NEXT_AUTHORITY_KEY);
    files::write_secret(&next_path, format!("{}\n", new.to_hex()).as_bytes())?;
    sync_dir(dir)?;

    // 2. The handover block.
    let block = handover_block(&head, &genesis, &old, new.address());
    authorities
        .check(&block.header)
        .expect("a handover sealed by the current authority to a fresh key verifies");
    store.commit_block(&block, &Default::default())?;
    crate::node::write_checkpoint(
        &store,
        &genesis,
        &new,
        &authorities,
        block.header.number,
        block.hash,
    );
    drop(store);

    // 3. The successor's key takes the old one's place.
    finish(dir)?;
    Ok(Rotation {
        retired: old.address(),
        authority: new.address(),
        handover: block.header.number,
    })
}

/// An empty block on `head`, sealed by `outgoing`, handing over to
/// `successor`.
fn handover_block(
    head: &Head,
    genesis: &Genesis,
    outgoing: &EthAccount,
    successor: Address,
) -> BlockData {
    let mut header = Header {
        parent_hash: head.hash,
        beneficiary: successor,
        state_root: head.header.state_root,
        transactions_root: calculate_transaction_root::<TxEnvelope>(&[]),
        receipts_root: calculate_receipt_root::<ReceiptEnvelope>(&[]),
        logs_bloom: Bloom::ZERO,
        number: head.header.number + 1,
        gas_limit: genesis.gas_limit,
        gas_used: 0,
        timestamp: now_secs().max(head.header.timestamp),
        mix_hash: head.hash,
        nonce: HANDOVER_NONCE,
        base_fee_per_gas: Some(0),
        ..Header::default()
    };
    seal::seal(&mut header, outgoing.signing_key());
    BlockData {
        hash: header.hash_slow(),
        header,
        txs: Vec::new(),
        tx_hashes: Vec::new(),
        receipts: Vec::new(),
    }
}

/// Loads the current authority's key from `dir`, first finishing or
/// rolling back a rotation that was cut short.
pub(crate) fn settle(dir: &Path, authorities: &Authorities) -> Result<EthAccount> {
    let key_path = dir.join(layout::AUTHORITY_KEY);
    let next_path = dir.join(layout::NEXT_AUTHORITY_KEY);
    let want = authorities.current();
    if next_path.exists() {
        match read_key(&next_path) {
            Ok(next) if next.address() == want => {
                // The handover block is committed: finish step 3.
                finish(dir)?;
                tracing::warn!(
                    "medledger chain: finished the interrupted rotation: the authority is {want} since block {}",
                    authorities.since()
                );
            }
            next => {
                // No block names it: the rotation never took effect.
                let current = read_key(&key_path)?;
                if current.address() != want {
                    return Err(ChainError::Store {
                        what: format!(
                            "neither {} ({}) nor {} ({}) holds the key of the chain's authority {want}",
                            key_path.display(),
                            current.address(),
                            next_path.display(),
                            next.map_or_else(|e| e.to_string(), |k| k.address().to_string()),
                        ),
                    });
                }
                std::fs::remove_file(&next_path).map_err(|e| ChainError::io(&next_path, e))?;
                sync_dir(dir)?;
                tracing::warn!(
                    "medledger chain: rolled back an interrupted rotation: the authority is still {want}"
                );
            }
        }
    }
    let key = read_key(&key_path)?;
    if key.address() != want {
        return Err(ChainError::Store {
            what: format!(
                "{} belongs to {}, but the chain's authority since block {} is {want}",
                key_path.display(),
                key.address(),
                authorities.since()
            ),
        });
    }
    Ok(key)
}

/// Step 3 of a rotation: overwrite the old key where it lies, then rename
/// the successor's key over it and make the rename durable.
fn finish(dir: &Path) -> Result<()> {
    let key_path = dir.join(layout::AUTHORITY_KEY);
    let next_path = dir.join(layout::NEXT_AUTHORITY_KEY);
    if key_path.exists() {
        // Best effort against recovery from the disk: on a filesystem that
        // writes in place (ext4, xfs) the old key's blocks are zeroed; a
        // copy-on-write one may keep them until reused.
        let io = |e| ChainError::io(&key_path, e);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&key_path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).expect("a key file fits in memory");
        file.write_all(&vec![0u8; len]).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&next_path, &key_path).map_err(|e| ChainError::io(&next_path, e))?;
    sync_dir(dir)
}

/// Reads an authority key file.
pub(crate) fn read_key(path: &Path) -> Result<EthAccount> {
    let text = String::from_utf8(files::read(path)?).unwrap_or_default();
    EthAccount::from_hex(&text).map_err(|e| ChainError::Store {
        what: format!("{}: {e}", path.display()),
    })
}

/// Makes the directory entries of `dir` (created, renamed, removed files)
/// durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ChainError::io(dir, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn genesis(authority: Address) -> Genesis {
        Genesis {
            chain_id: 1,
            timestamp: 0,
            authority,
            allow: Vec::new(),
            gas_limit: 1,
        }
    }

    fn block(number: u64, nonce: B64, beneficiary: Address, key: &EthAccount) -> Header {
        let mut header = Header {
            number,
            nonce,
            beneficiary,
            ..Header::default()
        };
        seal::seal(&mut header, key.signing_key());
        header
    }

    #[test]
    fn the_walk_follows_handovers_and_refuses_retired_keys() {
        let (a, b, c) = (
            EthAccount::generate(),
            EthAccount::generate(),
            EthAccount::generate(),
        );
        let mut walk = Authorities::new(&genesis(a.address()));
        walk.check(&block(0, ORDINARY_NONCE, a.address(), &a))
            .unwrap();
        walk.check(&block(1, HANDOVER_NONCE, b.address(), &a))
            .unwrap();
        assert_eq!((walk.current(), walk.since()), (b.address(), 2));
        assert_eq!(
            walk.clone()
                .check(&block(2, ORDINARY_NONCE, a.address(), &a)),
            Err(SealError::Retired {
                found: a.address(),
                handover: 1,
                expected: b.address()
            })
        );
        walk.check(&block(2, ORDINARY_NONCE, b.address(), &b))
            .unwrap();
        // Back to a retired key, to itself, or to nobody: refused.
        for (to, why) in [
            (a.address(), "is a retired authority"),
            (b.address(), "is the authority already"),
            (Address::ZERO, "is the zero address"),
        ] {
            assert_eq!(
                walk.clone().check(&block(3, HANDOVER_NONCE, to, &b)),
                Err(SealError::Successor { successor: to, why })
            );
        }
        walk.check(&block(3, HANDOVER_NONCE, c.address(), &b))
            .unwrap();
        assert_eq!(walk.current(), c.address());
        assert_eq!(
            walk.retired(),
            [
                Retired {
                    address: a.address(),
                    handover: 1
                },
                Retired {
                    address: b.address(),
                    handover: 3
                }
            ]
        );
        // An unknown key, another nonce, a beneficiary other than the sealer.
        let stranger = EthAccount::generate();
        assert!(matches!(
            walk.clone()
                .check(&block(4, ORDINARY_NONCE, stranger.address(), &stranger)),
            Err(SealError::WrongSigner { .. })
        ));
        assert_eq!(
            walk.clone().check(&block(
                4,
                B64::new([0, 0, 0, 0, 0, 0, 0, 1]),
                c.address(),
                &c
            )),
            Err(SealError::Nonce(B64::new([0, 0, 0, 0, 0, 0, 0, 1])))
        );
        assert_eq!(
            walk.clone()
                .check(&block(4, ORDINARY_NONCE, a.address(), &c)),
            Err(SealError::Beneficiary {
                found: a.address(),
                expected: c.address()
            })
        );
    }
}

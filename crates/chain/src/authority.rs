//! Who seals: the authority and its handovers to successors. (The
//! offline rotation of its key is [`crate::rotation`].)
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

use crate::genesis::Genesis;
use crate::seal::{self, SealError};
use alloy_consensus::Header;
use alloy_primitives::{Address, B64};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use medledger_pki::EthAccount;

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

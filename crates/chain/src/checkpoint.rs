//! Signed state commitments: what lets a node start without walking its
//! whole chain.
//!
//! Every [`EVERY`] blocks, and at each handover, the node signs with the
//! authority's key the block it has just committed and who seals after
//! it, and stores that beside the blocks:
//!
//! ```text
//!  digest   = keccak256("medledger chain checkpoint v1" || genesis hash
//!                       || rlp([number, block hash, current, since, retired]))
//!  stored   = rlp([[number, block hash, current, since, retired], signature (65 bytes)])
//! ```
//!
//! At start-up (`verify::verify_store`) a checkpoint signed by the
//! authority it names, whose block is the stored block of that number, is
//! where the walk starts: every block after it is checked as before (parent
//! link, seal, transactions and receipts roots), and the head's state root
//! against the stored state. So a start costs the blocks since the last
//! checkpoint (fewer than [`EVERY`]) and the size of the state, not the
//! length of the chain. The blocks below a checkpoint are trusted as far
//! as the authority's key is: rewriting them unnoticed takes that key,
//! which could as well seal a new chain. A checkpoint that does not verify
//! is ignored, with a warning, and the whole chain is walked.

use crate::Result;
use crate::authority::{Authorities, Retired};
use crate::genesis::Genesis;
use crate::store::Store;
use alloy_primitives::{Address, B256, Bytes, Signature, keccak256};
use alloy_rlp::{RlpDecodable, RlpEncodable};
use k256::ecdsa::SigningKey;
use medledger_pki::EthAccount;

/// Blocks between two checkpoints.
pub const EVERY: u64 = 1024;

const DOMAIN: &[u8] = b"medledger chain checkpoint v1";

/// A signed commitment to block `number` and the authorities after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The block.
    pub number: u64,
    /// Its hash.
    pub hash: B256,
    /// Who seals the blocks after it.
    pub authorities: Authorities,
}

#[derive(RlpEncodable, RlpDecodable)]
struct RetiredRlp {
    address: Address,
    handover: u64,
}

#[derive(RlpEncodable, RlpDecodable)]
struct Body {
    number: u64,
    hash: B256,
    current: Address,
    since: u64,
    retired: Vec<RetiredRlp>,
}

#[derive(RlpEncodable, RlpDecodable)]
struct Signed {
    body: Body,
    signature: Bytes,
}

/// Why a stored checkpoint is not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The bytes do not decode.
    #[error("it does not decode: {0}")]
    Malformed(alloy_rlp::Error),
    /// The signature does not recover.
    #[error("its signature is invalid")]
    BadSignature,
    /// Signed, but not by the authority it names.
    #[error("signed by {found}, not by the authority it names, {named}")]
    WrongSigner {
        /// Who signed.
        found: Address,
        /// Who it names.
        named: Address,
    },
    /// The store's block of that number is another.
    #[error("block {number} in the store is not the block it names")]
    OtherBlock {
        /// The block.
        number: u64,
    },
}

impl Checkpoint {
    fn body(&self) -> Body {
        Body {
            number: self.number,
            hash: self.hash,
            current: self.authorities.current(),
            since: self.authorities.since(),
            retired: self
                .authorities
                .retired()
                .iter()
                .map(|r| RetiredRlp {
                    address: r.address,
                    handover: r.handover,
                })
                .collect(),
        }
    }

    fn digest(&self, genesis_hash: B256) -> B256 {
        let mut preimage = DOMAIN.to_vec();
        preimage.extend_from_slice(genesis_hash.as_slice());
        preimage.extend_from_slice(&alloy_rlp::encode(self.body()));
        keccak256(preimage)
    }

    /// Signs it with `key` (the authority it names) for the chain of
    /// `genesis_hash`: the bytes to store.
    pub fn sign(&self, key: &SigningKey, genesis_hash: B256) -> Vec<u8> {
        let (sig, recid) = key
            .sign_prehash_recoverable(self.digest(genesis_hash).as_slice())
            .expect("signing a 32-byte hash cannot fail");
        let signature = Signature::from_signature_and_parity(sig, recid.is_y_odd());
        alloy_rlp::encode(Signed {
            body: self.body(),
            signature: Bytes::from(signature.as_bytes().to_vec()),
        })
    }

    /// The checkpoint in `bytes`, if the authority it names signed it for
    /// the chain of `genesis_hash` and `store` holds its block.
    pub fn verify(
        bytes: &[u8],
        genesis_hash: B256,
        store: &Store,
    ) -> Result<Checkpoint, CheckpointError> {
        let Signed { body, signature } =
            alloy_rlp::decode_exact(bytes).map_err(CheckpointError::Malformed)?;
        let checkpoint = Checkpoint {
            number: body.number,
            hash: body.hash,
            authorities: Authorities::from_parts(
                body.current,
                body.since,
                body.retired
                    .into_iter()
                    .map(|r| Retired {
                        address: r.address,
                        handover: r.handover,
                    })
                    .collect(),
            ),
        };
        let signature =
            Signature::try_from(signature.as_ref()).map_err(|_| CheckpointError::BadSignature)?;
        let found = signature
            .recover_address_from_prehash(&checkpoint.digest(genesis_hash))
            .map_err(|_| CheckpointError::BadSignature)?;
        let named = checkpoint.authorities.current();
        if found != named {
            return Err(CheckpointError::WrongSigner { found, named });
        }
        let stored = store
            .header(checkpoint.number)
            .ok()
            .flatten()
            .map(|h| h.hash_slow());
        if stored != Some(checkpoint.hash) {
            return Err(CheckpointError::OtherBlock {
                number: checkpoint.number,
            });
        }
        Ok(checkpoint)
    }
}
/// Signs and stores a checkpoint at block `number`; a failure only costs
/// the next start a longer walk, so it is logged, not returned.
pub(crate) fn write(
    store: &Store,
    genesis: &Genesis,
    key: &EthAccount,
    authorities: &Authorities,
    number: u64,
    hash: B256,
) {
    let checkpoint = Checkpoint {
        number,
        hash,
        authorities: authorities.clone(),
    };
    let signed = checkpoint.sign(key.signing_key(), genesis.hash());
    if let Err(e) = store.set_checkpoint(&signed) {
        tracing::warn!("medledger chain: storing the checkpoint at block {number}: {e}");
    }
}

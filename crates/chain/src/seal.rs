//! Block seals: the authority's signature in the header's `extraData`.
//!
//! ```text
//! extraData = vanity (32 bytes) || signature (65 bytes: r || s || y-parity)
//! signature over keccak256(rlp(header with extraData = vanity only))
//! ```
//!
//! This is the layout of Clique (EIP-225) with one signer; the block hash
//! is the ordinary Ethereum hash of the whole header. Which signer that is
//! changes at handover blocks: see [`crate::authority`].

use alloy_consensus::Header;
use alloy_primitives::{Address, B64, B256, Bytes, Signature, keccak256};
use k256::ecdsa::SigningKey;

/// The vanity prefix of `extraData`.
pub const VANITY: [u8; 32] = *b"medledger authority chain v1\0\0\0\0";
/// Length of the seal signature.
pub const SEAL_LEN: usize = 65;

/// The hash the authority signs: the header with `extraData` = vanity.
pub fn sealing_hash(header: &Header) -> B256 {
    let mut unsealed = header.clone();
    unsealed.extra_data = Bytes::from_static(&VANITY);
    keccak256(alloy_rlp::encode(&unsealed))
}

/// Seals `header` with `key`, filling `extraData`.
pub fn seal(header: &mut Header, key: &SigningKey) {
    let hash = sealing_hash(header);
    let (sig, recid) = key
        .sign_prehash_recoverable(hash.as_slice())
        .expect("signing a 32-byte hash cannot fail");
    let sig = Signature::from_signature_and_parity(sig, recid.is_y_odd());
    let mut extra = VANITY.to_vec();
    extra.extend_from_slice(&sig.as_bytes());
    header.extra_data = Bytes::from(extra);
}

/// Why a seal does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// `extraData` is not vanity plus a 65-byte signature.
    #[error("extraData is {0} bytes; a sealed header has 97")]
    Length(usize),
    /// The signature does not parse or recover.
    #[error("the seal signature is invalid")]
    BadSignature,
    /// Recovered, but not the authority.
    #[error("sealed by {found}, not the authority {expected}")]
    WrongSigner {
        /// Who signed.
        found: Address,
        /// Who should have.
        expected: Address,
    },
    /// Sealed by an authority that had handed over to a successor.
    #[error(
        "sealed by the retired authority {found}, which handed over in block {handover}; \
         the authority is {expected}"
    )]
    Retired {
        /// Who signed: a retired authority.
        found: Address,
        /// The block in which it handed over (its last).
        handover: u64,
        /// Who should have signed.
        expected: Address,
    },
    /// The nonce is neither an ordinary block's nor a handover's.
    #[error(
        "nonce is {0}: 0x0000000000000000 marks an ordinary block, 0xffffffffffffffff a handover"
    )]
    Nonce(B64),
    /// An ordinary block names someone other than its sealer as beneficiary.
    #[error("beneficiary is {found}; a block that does not hand over names its sealer {expected}")]
    Beneficiary {
        /// The header's beneficiary.
        found: Address,
        /// The authority that sealed it.
        expected: Address,
    },
    /// A handover to an address that cannot succeed.
    #[error("hands over to {successor}, which {why}")]
    Successor {
        /// The named successor.
        successor: Address,
        /// Why it cannot be the authority.
        why: &'static str,
    },
}

/// The address that sealed `header`.
pub fn signer(header: &Header) -> Result<Address, SealError> {
    let extra = header.extra_data.as_ref();
    if extra.len() != VANITY.len() + SEAL_LEN || extra[..VANITY.len()] != VANITY {
        return Err(SealError::Length(extra.len()));
    }
    let sig = Signature::try_from(&extra[VANITY.len()..]).map_err(|_| SealError::BadSignature)?;
    sig.recover_address_from_prehash(&sealing_hash(header))
        .map_err(|_| SealError::BadSignature)
}

/// Checks that `authority` sealed `header` (the seal only: whether
/// `authority` is the right one for this block is
/// [`crate::authority::Authorities::check`]'s business).
pub fn verify(header: &Header, authority: Address) -> Result<(), SealError> {
    let found = signer(header)?;
    if found == authority {
        Ok(())
    } else {
        Err(SealError::WrongSigner {
            found,
            expected: authority,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use medledger_pki::EthAccount;

    #[test]
    fn a_sealed_header_verifies_and_any_change_breaks_the_seal() {
        let authority = EthAccount::generate();
        let mut header = Header {
            number: 7,
            gas_limit: 30_000_000,
            ..Header::default()
        };
        seal(&mut header, authority.signing_key());
        verify(&header, authority.address()).unwrap();
        let other = EthAccount::generate();
        assert!(matches!(
            verify(&header, other.address()),
            Err(SealError::WrongSigner { .. })
        ));
        let mut changed = header.clone();
        changed.number = 8;
        assert!(verify(&changed, authority.address()).is_err());
        let mut cut = header.clone();
        cut.extra_data = Bytes::from_static(&VANITY);
        assert_eq!(
            verify(&cut, authority.address()),
            Err(SealError::Length(32))
        );
    }
}

//! EVM accounts for certificate holders who sign chain transactions.

use alloy_primitives::Address;
use k256::ecdsa::SigningKey;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// A secp256k1 key and its Ethereum address.
#[derive(Clone)]
pub struct EthAccount {
    key: SigningKey,
}

impl fmt::Debug for EthAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EthAccount")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

/// Text that is not a 32-byte secp256k1 private key in hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a secp256k1 private key (expected 64 hex digits, optionally 0x-prefixed)")]
pub struct BadAccountKey;

impl EthAccount {
    /// A fresh account from the system's secure random source.
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        loop {
            let mut bytes = [0u8; 32];
            rng.fill(&mut bytes)
                .expect("the system random source works");
            // Fails only for zero or a value >= the curve order (p ~ 2^-128).
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return EthAccount { key };
            }
        }
    }

    /// Parses the hex form written by [`EthAccount::to_hex`].
    pub fn from_hex(text: &str) -> Result<Self, BadAccountKey> {
        let text = text.trim();
        let digits = text.strip_prefix("0x").unwrap_or(text);
        let bytes = hex::decode(digits).map_err(|_| BadAccountKey)?;
        if bytes.len() != 32 {
            return Err(BadAccountKey);
        }
        let key = SigningKey::from_slice(&bytes).map_err(|_| BadAccountKey)?;
        Ok(EthAccount { key })
    }

    /// The private key as `0x` and 64 hex digits (the form `cast` and
    /// geth's `--private-key` accept).
    pub fn to_hex(&self) -> String {
        format!("0x{}", hex::encode(self.key.to_bytes()))
    }

    /// The account's address.
    pub fn address(&self) -> Address {
        Address::from_private_key(&self.key)
    }

    /// The signing key, for building transactions.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_key_gives_known_address_and_round_trips() {
        // anvil's first development account.
        let a = EthAccount::from_hex(
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
        )
        .unwrap();
        assert_eq!(
            a.address().to_string(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        assert_eq!(
            EthAccount::from_hex(&a.to_hex()).unwrap().address(),
            a.address()
        );
        assert!(EthAccount::from_hex("0x1234").is_err());
        assert_ne!(
            EthAccount::generate().address(),
            EthAccount::generate().address()
        );
    }
}

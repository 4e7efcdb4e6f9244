//! Patient cards: the key that signs, for each patient, the hash of the
//! readings a batch holds for them (a smart card's key in the design
//! medledger started from; a key file or a PKCS#11 token here).
//!
//! [`CardSigner`] is what a card does; [`SoftwareCard`] keeps the key in a
//! file, [`TokenCard`] on a PKCS#11 token (a smart card, an HSM), which
//! signs without the key ever leaving it. In a cards directory, each
//! `NAME.crt` has a `NAME.key` beside it: a PKCS#8 key, or one line, the
//! `pkcs11:` URI of the key on its token.

use alloy::primitives::Address;
use medledger_pki::token::{Curve, KeyUri, TokenError, TokenKey};
use medledger_pki::{Credentials, Identity, IdentityError, Role, files};
use medledger_protocol::SigningKey;
use medledger_protocol::cose::KeyError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why a card cannot be loaded, or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// Its certificate is not a patient's.
    #[error("the card's certificate: {0}")]
    Certificate(#[from] IdentityError),
    /// Its certificate names no chain account.
    #[error("the patient certificate has no address")]
    NoAccount,
    /// Its key file cannot be used.
    #[error("the card's key: {0}")]
    Key(#[from] KeyError),
    /// Its token, or the key on it, cannot be used.
    #[error("the card's token: {0}")]
    Token(#[from] TokenError),
    /// The key on the token is not the certificate's.
    #[error("the key {uri} is not the key of the certificate of {account}")]
    OtherKey {
        /// The token key's URI.
        uri: String,
        /// The patient's account.
        account: Address,
    },
    /// Its files cannot be read.
    #[error("{0}")]
    Files(#[from] medledger_pki::Error),
    /// A file of the cards directory (or the directory) cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The card of `PREFIX` (its files named) cannot be used.
    #[error("{}: {source}", prefix.display())]
    At {
        /// The card's files without their extension.
        prefix: PathBuf,
        /// Why.
        source: Box<CardError>,
    },
}

impl CardError {
    fn at(prefix: &Path) -> impl FnOnce(CardError) -> CardError + '_ {
        move |e| CardError::At {
            prefix: prefix.to_owned(),
            source: Box::new(e),
        }
    }
}

/// A patient's card.
pub trait CardSigner: Send + Sync {
    /// The card's certificate (DER, role `patient`).
    fn certificate(&self) -> &[u8];
    /// The patient's chain account (the certificate's address extension).
    fn account(&self) -> Address;
    /// A COSE_Sign1 over `digest` (see `medledger_protocol::card_digest`),
    /// or why the card cannot sign now.
    fn sign(&self, digest: &[u8; 32]) -> Result<Vec<u8>, CardError>;
}

/// A card whose key is a PKCS#8 file.
pub struct SoftwareCard {
    cert: Vec<u8>,
    account: Address,
    key: SigningKey,
}

impl std::fmt::Debug for SoftwareCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareCard")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// The identity of a patient certificate and the patient's account.
fn patient_of(cert_der: &[u8]) -> Result<(Identity, Address), CardError> {
    let identity = Identity::from_peer_certificate(cert_der)?;
    identity.require_role(&[Role::Patient])?;
    let account = identity.address().ok_or(CardError::NoAccount)?;
    Ok((identity, account))
}

impl SoftwareCard {
    /// A card from a patient certificate and its key.
    pub fn new(credentials: &Credentials) -> Result<SoftwareCard, CardError> {
        let cert = credentials.chain[0].to_vec();
        let (identity, account) = patient_of(&cert)?;
        let key = SigningKey::from_pkcs8(
            identity.key.algorithm(),
            credentials.key.secret_der(),
            &cert,
        )?;
        Ok(SoftwareCard { cert, account, key })
    }

    /// Loads `PREFIX.crt` and `PREFIX.key`.
    pub fn load(prefix: &Path) -> Result<SoftwareCard, CardError> {
        let credentials = Credentials::load(prefix).map_err(|e| CardError::at(prefix)(e.into()))?;
        SoftwareCard::new(&credentials).map_err(CardError::at(prefix))
    }
}

impl CardSigner for SoftwareCard {
    fn certificate(&self) -> &[u8] {
        &self.cert
    }

    fn account(&self) -> Address {
        self.account
    }

    fn sign(&self, digest: &[u8; 32]) -> Result<Vec<u8>, CardError> {
        Ok(self.key.sign_payload(digest))
    }
}

/// A card whose key is on a PKCS#11 token.
#[derive(Debug)]
pub struct TokenCard {
    cert: Vec<u8>,
    account: Address,
    key: TokenKey,
}

impl TokenCard {
    /// The card of the patient certificate `cert_der` whose key is the
    /// token key `uri` names: refused unless the token's key is the
    /// certificate's (a P-256 key, the same public key).
    pub fn open(cert_der: Vec<u8>, uri: &str) -> Result<TokenCard, CardError> {
        TokenCard::new(cert_der, TokenKey::open(uri)?)
    }

    /// The card of the patient certificate `cert_der` whose key is `key`,
    /// checked as [`TokenCard::open`] does.
    pub fn new(cert_der: Vec<u8>, key: TokenKey) -> Result<TokenCard, CardError> {
        let (identity, account) = patient_of(&cert_der)?;
        if key.curve() != Curve::P256 || key.public_key() != identity.key.public_key() {
            return Err(CardError::OtherKey {
                uri: key.uri().to_string(),
                account,
            });
        }
        Ok(TokenCard {
            cert: cert_der,
            account,
            key,
        })
    }
}

impl CardSigner for TokenCard {
    fn certificate(&self) -> &[u8] {
        &self.cert
    }

    fn account(&self) -> Address {
        self.account
    }

    fn sign(&self, digest: &[u8; 32]) -> Result<Vec<u8>, CardError> {
        Ok(medledger_protocol::cose::sign_es256_with(
            &self.cert,
            digest,
            |d| self.key.sign_digest(d),
        )?)
    }
}

/// The card of `PREFIX.crt`: on a token if `PREFIX.key` holds a `pkcs11:`
/// URI, else with `PREFIX.key` as its key.
pub fn load_card(prefix: &Path) -> Result<Arc<dyn CardSigner>, CardError> {
    let key = prefix.with_extension("key");
    let text = std::fs::read_to_string(&key).unwrap_or_default();
    if KeyUri::is_uri(&text) {
        let cert = files::read_first(&prefix.with_extension("crt"), "CERTIFICATE")
            .map_err(|e| CardError::at(prefix)(e.into()))?;
        return Ok(Arc::new(
            TokenCard::open(cert, text.trim()).map_err(CardError::at(prefix))?,
        ));
    }
    Ok(Arc::new(SoftwareCard::load(prefix)?))
}

/// The cards at this collector, by patient account. Clones share the same
/// cards, so a card inserted through one (a patient admitted while the
/// collector runs) is seen by all.
#[derive(Clone, Default)]
pub struct Cards {
    by_account: Arc<RwLock<HashMap<Address, Arc<dyn CardSigner>>>>,
}

impl std::fmt::Debug for Cards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cards")
            .field("accounts", &self.read().keys().copied().collect::<Vec<_>>())
            .finish()
    }
}

impl Cards {
    /// No cards.
    pub fn new() -> Cards {
        Cards::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Address, Arc<dyn CardSigner>>> {
        self.by_account.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a card (replacing the patient's earlier one, if any).
    pub fn insert(&self, card: Arc<dyn CardSigner>) {
        self.by_account
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(card.account(), card);
    }

    /// Every `NAME.crt` with a `NAME.key` beside it in `dir` (see
    /// [`load_card`]).
    pub fn load_dir(dir: &Path) -> Result<Cards, CardError> {
        let cards = Cards::new();
        let entries = std::fs::read_dir(dir).map_err(|source| CardError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if path.extension().is_some_and(|e| e == "crt") && path.with_extension("key").exists() {
                cards.insert(load_card(&path.with_extension(""))?);
            }
        }
        Ok(cards)
    }

    /// The card of the patient with this account.
    pub fn get(&self, account: &Address) -> Option<Arc<dyn CardSigner>> {
        self.read().get(account).cloned()
    }

    /// Every card.
    pub fn all(&self) -> Vec<Arc<dyn CardSigner>> {
        self.read().values().cloned().collect()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

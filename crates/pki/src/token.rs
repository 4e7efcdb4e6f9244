//! Keys on PKCS#11 tokens (smart cards, HSMs; SoftHSM2 in tests): signing
//! without the key ever leaving the token.
//!
//! A key is named by a `pkcs11:` URI (RFC 7512):
//!
//! ```text
//! pkcs11:token=medledger;object=card-p1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/medledger/pin
//! ```
//!
//! - path attributes `token` (the token's label), `object` (the key's
//!   label) and `id` (its `CKA_ID`, percent-encoded bytes), at least one of
//!   `object` and `id`; `type`, if given, is `private`;
//! - `module-path`, the PKCS#11 library (else `MEDLEDGER_PKCS11_MODULE`);
//! - the user PIN from `pin-source` (a file: `file:PATH` or a path), else
//!   `pin-value`, else the environment variable `MEDLEDGER_PKCS11_PIN`.
//!
//! [`TokenKey::open`] logs in, finds the private key and its public key
//! (same label and id), and signs SHA-256 digests with `CKM_ECDSA`: P-256
//! keys for COSE and TLS identities, secp256k1 keys for chain accounts.
//! Each module is loaded and initialised once per process.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment variable naming the PKCS#11 module when the URI does
/// not.
pub const MODULE_VAR: &str = "MEDLEDGER_PKCS11_MODULE";
/// The environment variable holding the user PIN when the URI does not.
pub const PIN_VAR: &str = "MEDLEDGER_PKCS11_PIN";

/// What went wrong with a token key, naming the URI's part at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The URI does not parse.
    #[error("not a usable pkcs11: URI: {0}")]
    Uri(String),
    /// The module, the token, the PIN or the key.
    #[error("{0}")]
    Token(String),
}

fn token_error(what: impl std::fmt::Display) -> TokenError {
    TokenError::Token(what.to_string())
}

/// A parsed `pkcs11:` URI.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyUri {
    /// The token's label.
    pub token: Option<String>,
    /// The key's label.
    pub object: Option<String>,
    /// The key's `CKA_ID`.
    pub id: Option<Vec<u8>>,
    /// The PKCS#11 library.
    pub module: Option<PathBuf>,
    /// A file holding the PIN.
    pub pin_source: Option<PathBuf>,
    /// The PIN itself.
    pub pin_value: Option<String>,
}

/// RFC 3986 percent-decoding.
fn unescape(text: &str) -> Result<Vec<u8>, TokenError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| TokenError::Uri(format!("bad percent-encoding in `{text}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn unescape_text(text: &str) -> Result<String, TokenError> {
    String::from_utf8(unescape(text)?)
        .map_err(|_| TokenError::Uri(format!("`{text}` is not UTF-8 once decoded")))
}

impl KeyUri {
    /// Whether `text` names a token key rather than a file.
    pub fn is_uri(text: &str) -> bool {
        text.trim_start().starts_with("pkcs11:")
    }

    /// Parses a `pkcs11:` URI that names a token, and perhaps a key.
    pub fn parse_token(text: &str) -> Result<KeyUri, TokenError> {
        let text = text.trim();
        let rest = text
            .strip_prefix("pkcs11:")
            .ok_or_else(|| TokenError::Uri(format!("`{text}` does not start with pkcs11:")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut uri = KeyUri::default();
        for attribute in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attribute.split_once('=').ok_or_else(|| {
                TokenError::Uri(format!("path attribute `{attribute}` has no value"))
            })?;
            match name {
                "token" => uri.token = Some(unescape_text(value)?),
                "object" => uri.object = Some(unescape_text(value)?),
                "id" => uri.id = Some(unescape(value)?),
                "type" if value == "private" => {}
                "type" => {
                    return Err(TokenError::Uri(format!(
                        "type={value}: a signing key is type=private"
                    )));
                }
                // Other attributes (manufacturer, serial...) narrow the
                // search in RFC 7512; the token label is enough here.
                "manufacturer"
                | "model"
                | "serial"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id" => {}
                other => {
                    return Err(TokenError::Uri(format!("unknown path attribute `{other}`")));
                }
            }
        }
        for attribute in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attribute.split_once('=').ok_or_else(|| {
                TokenError::Uri(format!("query attribute `{attribute}` has no value"))
            })?;
            let value = unescape_text(value)?;
            match name {
                "module-path" => uri.module = Some(PathBuf::from(value)),
                "pin-source" => {
                    let path = value.strip_prefix("file:").unwrap_or(&value);
                    uri.pin_source = Some(PathBuf::from(path));
                }
                "pin-value" => uri.pin_value = Some(value),
                other => {
                    return Err(TokenError::Uri(format!(
                        "unknown query attribute `{other}`"
                    )));
                }
            }
        }
        Ok(uri)
    }

    /// Parses a `pkcs11:` URI that names a key.
    pub fn parse(text: &str) -> Result<KeyUri, TokenError> {
        let uri = KeyUri::parse_token(text)?;
        if uri.object.is_none() && uri.id.is_none() {
            return Err(TokenError::Uri(
                "name the key: object=LABEL or id=%01".into(),
            ));
        }
        Ok(uri)
    }

    fn module(&self) -> Result<PathBuf, TokenError> {
        self.module
            .clone()
            .or_else(|| std::env::var_os(MODULE_VAR).map(PathBuf::from))
            .ok_or_else(|| {
                TokenError::Uri(format!(
                    "no PKCS#11 module: add ?module-path=/path/to/module.so or set {MODULE_VAR}"
                ))
            })
    }

    fn pin(&self) -> Result<AuthPin, TokenError> {
        let pin = if let Some(path) = &self.pin_source {
            std::fs::read_to_string(path)
                .map_err(|e| token_error(format!("the PIN file {}: {e}", path.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_owned()
        } else if let Some(pin) = &self.pin_value {
            pin.clone()
        } else {
            std::env::var(PIN_VAR).map_err(|_| {
                TokenError::Uri(format!(
                    "no PIN: add ?pin-source=file:/path/to/pin or set {PIN_VAR}"
                ))
            })?
        };
        Ok(AuthPin::from(pin))
    }
}

/// Each PKCS#11 module, loaded and initialised once.
fn module(path: &Path) -> Result<Pkcs11, TokenError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut loaded = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(pkcs11) = loaded.get(path) {
        return Ok(pkcs11.clone());
    }
    let pkcs11 = Pkcs11::new(path)
        .map_err(|e| token_error(format!("the PKCS#11 module {}: {e}", path.display())))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(token_error(format!(
                "the PKCS#11 module {}: {e}",
                path.display()
            )));
        }
    }
    loaded.insert(path.to_path_buf(), pkcs11.clone());
    Ok(pkcs11)
}

/// A read-write session on the token `uri` names, logged in as its user.
fn logged_in(uri: &KeyUri) -> Result<Session, TokenError> {
    let pkcs11 = module(&uri.module()?)?;
    let slots = pkcs11.get_slots_with_token().map_err(token_error)?;
    let slot = slots
        .into_iter()
        .find(|slot| {
            uri.token.as_deref().is_none_or(|label| {
                pkcs11
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == label)
            })
        })
        .ok_or_else(|| {
            token_error(format!(
                "no token labelled `{}` is present",
                uri.token.as_deref().unwrap_or("(any)")
            ))
        })?;
    let session = pkcs11.open_rw_session(slot).map_err(token_error)?;
    match session.login(UserType::User, Some(&uri.pin()?)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(cryptoki::error::Error::Pkcs11(RvError::PinIncorrect, _)) => {
            return Err(token_error("the token refused the PIN"));
        }
        Err(e) => return Err(token_error(format!("logging in to the token: {e}"))),
    }
    Ok(session)
}

/// The `len` bytes after the first `marker` in `der`.
fn find_after<'a>(der: &'a [u8], marker: &[u8], len: usize) -> Option<&'a [u8]> {
    let at = der.windows(marker.len()).position(|w| w == marker)? + marker.len();
    der.get(at..at + len)
}

/// The curve of an EC key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (COSE ES256, TLS).
    P256,
    /// secp256k1 (chain accounts).
    Secp256k1,
}

/// DER of the curves' OIDs, as `CKA_EC_PARAMS` holds them.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const SECP256K1_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];

/// A private key on a token, logged in, with its public key.
pub struct TokenKey {
    session: Mutex<Session>,
    key: ObjectHandle,
    curve: Curve,
    public: Vec<u8>,
    uri: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("uri", &self.uri)
            .field("curve", &self.curve)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// Opens the key `uri` names: loads the module, finds the token, logs
    /// in with the PIN, finds the private key and its public key.
    pub fn open(uri: &str) -> Result<TokenKey, TokenError> {
        let parsed = KeyUri::parse(uri)?;
        let session = logged_in(&parsed)?;
        TokenKey::find(session, &parsed, uri)
    }

    /// Puts the P-256 key `pkcs8` (PKCS#8, with its public key) on the
    /// token `token_uri` names, as `object`, for as long as the returned
    /// key lives: session objects, gone with it (as a demo's cards are).
    pub fn import_p256(
        token_uri: &str,
        object: &str,
        pkcs8: &[u8],
    ) -> Result<TokenKey, TokenError> {
        let parsed = KeyUri::parse_token(token_uri)?;
        // ECPrivateKey (RFC 5915) inside the PKCS#8: version 1, then the
        // 32-byte scalar; the public key, a 65-byte point, in its [1].
        let scalar = find_after(pkcs8, &[0x02, 0x01, 0x01, 0x04, 0x20], 32);
        let point = find_after(pkcs8, &[0x03, 0x42, 0x00], 65);
        let (Some(scalar), Some(point)) = (scalar, point) else {
            return Err(token_error("not a PKCS#8 P-256 key with its public key"));
        };
        let session = logged_in(&parsed)?;
        let label = Attribute::Label(object.as_bytes().to_vec());
        let common = [
            Attribute::Token(false),
            Attribute::KeyType(cryptoki::object::KeyType::EC),
            Attribute::EcParams(P256_OID.to_vec()),
            label,
        ];
        let private = [
            &common[..],
            &[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Value(scalar.to_vec()),
            ],
        ]
        .concat();
        let public = [
            &common[..],
            &[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Verify(true),
                Attribute::EcPoint([&[0x04, 65][..], point].concat()),
            ],
        ]
        .concat();
        session.create_object(&private).map_err(token_error)?;
        session.create_object(&public).map_err(token_error)?;
        let named = KeyUri {
            object: Some(object.to_owned()),
            ..parsed
        };
        let uri = format!(
            "pkcs11:token={};object={object}",
            named.token.as_deref().unwrap_or("")
        );
        TokenKey::find(session, &named, &uri)
    }

    /// The key `parsed` names, found in `session`.
    fn find(session: Session, parsed: &KeyUri, uri: &str) -> Result<TokenKey, TokenError> {
        // Named without its query, which may hold the PIN.
        let uri = uri.split('?').next().unwrap_or(uri);
        let mut template = Vec::new();
        if let Some(label) = &parsed.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &parsed.id {
            template.push(Attribute::Id(id.clone()));
        }
        let find = |class: ObjectClass| -> Result<ObjectHandle, TokenError> {
            let mut query = template.clone();
            query.push(Attribute::Class(class));
            let found = session.find_objects(&query).map_err(token_error)?;
            match found.as_slice() {
                [one] => Ok(*one),
                [] => Err(token_error(format!(
                    "the token holds no {} key named by {uri}",
                    if class == ObjectClass::PRIVATE_KEY {
                        "private"
                    } else {
                        "public"
                    }
                ))),
                _ => Err(token_error(format!(
                    "{} keys match {uri}: name one by object= and id=",
                    found.len()
                ))),
            }
        };
        let key = find(ObjectClass::PRIVATE_KEY)?;
        let public_key = find(ObjectClass::PUBLIC_KEY)?;
        let attributes = session
            .get_attributes(
                public_key,
                &[AttributeType::EcParams, AttributeType::EcPoint],
            )
            .map_err(token_error)?;
        let (mut params, mut point) = (None, None);
        for attribute in attributes {
            match attribute {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        let curve = match params.as_deref() {
            Some(P256_OID) => Curve::P256,
            Some(SECP256K1_OID) => Curve::Secp256k1,
            _ => {
                return Err(token_error(format!(
                    "{uri} is not a P-256 or secp256k1 key"
                )));
            }
        };
        // CKA_EC_POINT is the point in a DER OCTET STRING (some tokens
        // give it bare).
        let point = point.unwrap_or_default();
        let public = match point.as_slice() {
            [0x04, 65, rest @ ..] if rest.len() == 65 => rest.to_vec(),
            bare if bare.len() == 65 && bare[0] == 0x04 => bare.to_vec(),
            _ => {
                return Err(token_error(format!(
                    "{uri}: an EC point of an unknown form"
                )));
            }
        };
        Ok(TokenKey {
            session: Mutex::new(session),
            key,
            curve,
            public,
            uri: uri.to_owned(),
        })
    }

    /// The key's URI, without its query (which may hold the PIN).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The key's curve.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The public key, an uncompressed SEC1 point (65 bytes).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// An ECDSA signature of `digest` (a SHA-256 or Keccak-256 hash),
    /// `r || s`, 32 bytes each, made on the token.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], TokenError> {
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let signature = session
            .sign(&Mechanism::Ecdsa, self.key, digest)
            .map_err(|e| token_error(format!("signing with {}: {e}", self.uri)))?;
        signature.try_into().map_err(|s: Vec<u8>| {
            token_error(format!(
                "{} gave a signature of {} bytes, not 64",
                self.uri,
                s.len()
            ))
        })
    }
}

/// A chain account's key: in a file, or a secp256k1 key on a token. It
/// signs transaction hashes as alloy's `LocalSigner` asks (a low-s
/// signature and its recovery id), so that a signer built on it sends
/// transactions the same way whichever it is.
#[derive(Debug, Clone)]
pub enum ChainKey {
    /// A key in memory (read from a `.eth.key` file).
    File(k256::ecdsa::SigningKey),
    /// A secp256k1 key on a token.
    Token(std::sync::Arc<TokenKey>),
}

impl ChainKey {
    /// The key `text` names: a `pkcs11:` URI, or the key itself in hex.
    pub fn parse(text: &str) -> Result<ChainKey, TokenError> {
        if KeyUri::is_uri(text) {
            let key = TokenKey::open(text.trim())?;
            if key.curve() != Curve::Secp256k1 {
                return Err(token_error(format!(
                    "{} is not a secp256k1 key, as a chain account's is",
                    text.trim()
                )));
            }
            return Ok(ChainKey::Token(std::sync::Arc::new(key)));
        }
        crate::EthAccount::from_hex(text.trim())
            .map(|a| ChainKey::File(a.signing_key().clone()))
            .map_err(|e| token_error(e.to_string()))
    }

    /// The account's address.
    pub fn address(&self) -> alloy_primitives::Address {
        match self {
            ChainKey::File(key) => alloy_primitives::Address::from_private_key(key),
            ChainKey::Token(key) => {
                alloy_primitives::Address::from_raw_public_key(&key.public_key()[1..])
            }
        }
    }
}

impl
    k256::ecdsa::signature::hazmat::PrehashSigner<(k256::ecdsa::Signature, k256::ecdsa::RecoveryId)>
    for ChainKey
{
    fn sign_prehash(
        &self,
        prehash: &[u8],
    ) -> Result<(k256::ecdsa::Signature, k256::ecdsa::RecoveryId), k256::ecdsa::Error> {
        use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
        let key = match self {
            ChainKey::File(key) => return key.sign_prehash(prehash),
            ChainKey::Token(key) => key,
        };
        let digest: &[u8; 32] = prehash.try_into().map_err(|_| k256::ecdsa::Error::new())?;
        let rs = key
            .sign_digest(digest)
            .map_err(k256::ecdsa::Error::from_source)?;
        let signature = Signature::from_slice(&rs)?;
        // Ethereum takes only the low-s form.
        let signature = signature.normalize_s().unwrap_or(signature);
        let public = VerifyingKey::from_sec1_bytes(key.public_key())?;
        let id = RecoveryId::trial_recovery_from_prehash(&public, prehash, &signature)?;
        Ok((signature, id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_rfc_7512_writes_them() {
        let uri = KeyUri::parse(
            "pkcs11:token=med%20ledger;object=card-p1;id=%01%a2;type=private\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("med ledger"));
        assert_eq!(uri.object.as_deref(), Some("card-p1"));
        assert_eq!(uri.id, Some(vec![0x01, 0xa2]));
        assert_eq!(
            uri.module,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(uri.pin_source, Some(PathBuf::from("/etc/pin")));
        for (bad, says) in [
            ("card-p1", "does not start with pkcs11:"),
            ("pkcs11:token=t", "name the key"),
            ("pkcs11:object=k;type=public", "type=private"),
            (
                "pkcs11:object=k;colour=red",
                "unknown path attribute `colour`",
            ),
            ("pkcs11:object=k?pin=1", "unknown query attribute `pin`"),
            ("pkcs11:object=%zz", "bad percent-encoding"),
        ] {
            let e = KeyUri::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(KeyUri::is_uri("pkcs11:object=k"));
        assert!(!KeyUri::is_uri("/etc/medledger/card.key"));
    }

    #[test]
    fn a_key_on_softhsm_signs_what_its_public_key_verifies_and_names_what_is_wrong() {
        use ring::signature::{self, KeyPair};
        let Some(hsm) = crate::softhsm::softhsm() else {
            return;
        };
        let token = hsm.token("pki-test");
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let uri = token.import("p256", pkcs8.as_ref());
        // A wrong PIN, before the process logs in (a login holds for the
        // whole token and process, as PKCS#11 has it).
        let wrong = TokenKey::open(&uri.replace("pin-value=1234", "pin-value=0000"));
        assert!(
            wrong.unwrap_err().to_string().contains("refused the PIN"),
            "a wrong PIN"
        );
        let key = TokenKey::open(&uri).unwrap();
        assert_eq!(key.curve(), Curve::P256);
        assert_eq!(key.public_key(), pair.public_key().as_ref());
        let digest = ring::digest::digest(&ring::digest::SHA256, b"a reading");
        let sig = key
            .sign_digest(digest.as_ref().try_into().unwrap())
            .unwrap();
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, key.public_key())
            .verify(b"a reading", &sig)
            .unwrap();
        // A key put on the token for a while: gone with its TokenKey.
        let other = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let token_uri = uri.replace(";object=p256", "");
        let lent = TokenKey::import_p256(&token_uri, "for-a-while", other.as_ref()).unwrap();
        let sig = lent
            .sign_digest(digest.as_ref().try_into().unwrap())
            .unwrap();
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, lent.public_key())
            .verify(b"a reading", &sig)
            .unwrap();
        assert!(!format!("{lent:?}").contains("pin-value"), "{lent:?}");
        drop(lent);
        let gone = TokenKey::open(&uri.replace("object=p256", "object=for-a-while"));
        assert!(
            gone.unwrap_err()
                .to_string()
                .contains("holds no private key")
        );
        for (changed, says) in [
            (
                uri.replace("object=p256", "object=nothing"),
                "holds no private key",
            ),
            (
                uri.replace(&token.label, "elsewhere"),
                "no token labelled `elsewhere`",
            ),
        ] {
            let e = TokenKey::open(&changed).unwrap_err().to_string();
            assert!(e.contains(says), "{changed}: {e}");
        }
    }
}

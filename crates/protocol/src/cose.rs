//! COSE_Sign1 (RFC 9052) envelopes for readings, signed with ES256 or EdDSA.
//!
//! ```text
//! 18([                                   ; COSE_Sign1_Tagged
//!   << {1: alg, 4: kid} >>,              ; protected: alg -7 | -8, kid = SHA-256(cert DER)
//!                                        ;   (+ 33: x5chain, RFC 9360, over MQTT)
//!   {},                                  ; unprotected (kid or x5chain may sit here instead)
//!   << {"dev", "seq", "ts", "obs", ...} >>,  ; payload: the Reading
//!   signature                            ; 64 bytes: r || s, or Ed25519
//! ])
//! ```

use crate::cbor::{self, CborError, Value};
use crate::reading::{PayloadError, Reading};
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use std::fmt;

/// The largest signed reading accepted, in bytes (an ECG strip of ten
/// seconds at 250 Hz fits with room to spare).
pub const MAX_SIGNED_READING_BYTES: usize = 64 * 1024;

/// The CBOR tag of COSE_Sign1.
const COSE_SIGN1_TAG: u64 = 18;
const LABEL_ALG: i64 = 1;
const LABEL_CRIT: i64 = 2;
const LABEL_CONTENT_TYPE: i64 = 3;
const LABEL_KID: i64 = 4;
/// RFC 9360: the signer's certificate (a bstr) or chain (an array of
/// bstr, the signer's first).
const LABEL_X5CHAIN: i64 = 33;

/// A signature algorithm a device may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, COSE -7.
    Es256,
    /// Ed25519, COSE -8.
    EdDsa,
}

impl Algorithm {
    /// The COSE algorithm identifier.
    pub fn cose_id(self) -> i64 {
        match self {
            Algorithm::Es256 => -7,
            Algorithm::EdDsa => -8,
        }
    }

    fn from_cose_id(id: i64) -> Option<Self> {
        match id {
            -7 => Some(Algorithm::Es256),
            -8 => Some(Algorithm::EdDsa),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        })
    }
}

/// The key identifier of a certificate: SHA-256 of its DER.
pub type Kid = [u8; 32];

/// Computes the `kid` for a certificate.
pub fn kid_of(cert_der: &[u8]) -> Kid {
    let d = digest::digest(&digest::SHA256, cert_der);
    let mut kid = [0u8; 32];
    kid.copy_from_slice(d.as_ref());
    kid
}

/// Why a signed reading was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadingError {
    /// Larger than [`MAX_SIGNED_READING_BYTES`].
    #[error("signed reading is {size} bytes; the limit is {max}")]
    TooLarge {
        /// The size given.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not deterministic, well-formed CBOR.
    #[error("signed reading: {0}")]
    Cbor(#[from] CborError),
    /// CBOR, but not a tagged COSE_Sign1 of our shape.
    #[error("not a COSE_Sign1 reading: {0}")]
    Envelope(&'static str),
    /// The protected header has no `alg`.
    #[error("protected header has no alg")]
    MissingAlgorithm,
    /// An algorithm other than ES256 and EdDSA.
    #[error("algorithm {0} is not accepted; use ES256 (-7) or EdDSA (-8)")]
    UnsupportedAlgorithm(i64),
    /// `crit` lists a header this implementation does not understand.
    #[error("critical header {0} is not understood")]
    UnknownCriticalHeader(String),
    /// No `kid`, or not 32 bytes.
    #[error("kid must be the 32-byte SHA-256 of the signer's certificate")]
    BadKid,
    /// The `kid` is not the presenting certificate's.
    #[error("kid does not match the device certificate")]
    KidMismatch,
    /// The algorithm does not fit the certificate's key.
    #[error("reading is signed with {reading} but the certificate key is {key}")]
    AlgorithmMismatch {
        /// The reading's `alg`.
        reading: Algorithm,
        /// The key's algorithm.
        key: Algorithm,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The signature verified but the payload is not a valid reading.
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

impl ReadingError {
    /// The stable problem type this error is reported as.
    pub fn problem_type(&self) -> crate::ProblemType {
        use crate::ProblemType;
        match self {
            ReadingError::TooLarge { .. } => ProblemType::TooLarge,
            ReadingError::KidMismatch
            | ReadingError::AlgorithmMismatch { .. }
            | ReadingError::BadSignature => ProblemType::BadSignature,
            _ => ProblemType::Malformed,
        }
    }
}

/// A public key that verifies readings: the device certificate's.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    alg: Algorithm,
    kid: Kid,
    /// Uncompressed SEC1 point (P-256) or the 32-byte Ed25519 key.
    public_key: Vec<u8>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .field("kid", &hex(&self.kid))
            .finish()
    }
}

impl VerifyingKey {
    /// A key of `alg` with raw `public_key` bytes from the certificate whose
    /// DER hashes to `kid`.
    pub fn new(alg: Algorithm, kid: Kid, public_key: Vec<u8>) -> Self {
        VerifyingKey {
            alg,
            kid,
            public_key,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The certificate hash this key belongs to.
    pub fn kid(&self) -> &Kid {
        &self.kid
    }

    /// The raw public key.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self.alg {
            Algorithm::Es256 => signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                &self.public_key,
            )
            .verify(message, sig)
            .is_ok(),
            Algorithm::EdDsa => crate::ed25519::verify(&self.public_key, message, sig),
        }
    }
}

enum KeyPairInner {
    Es256(EcdsaKeyPair, SystemRandom),
    EdDsa(Ed25519KeyPair),
}

/// A device's private key with the `kid` of its certificate.
pub struct SigningKey {
    inner: KeyPairInner,
    kid: Kid,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.algorithm())
            .field("kid", &hex(&self.kid))
            .finish_non_exhaustive()
    }
}

/// A PKCS#8 key that ring cannot load for the algorithm.
#[derive(Debug, thiserror::Error)]
#[error("not a PKCS#8 {alg} private key: {reason}")]
pub struct KeyError {
    alg: Algorithm,
    reason: String,
}

impl SigningKey {
    /// Loads a PKCS#8 private key of `alg` belonging to the certificate
    /// whose DER is `cert_der`.
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8], cert_der: &[u8]) -> Result<Self, KeyError> {
        let err = |e: ring::error::KeyRejected| KeyError {
            alg,
            reason: e.to_string(),
        };
        let inner = match alg {
            Algorithm::Es256 => {
                let rng = SystemRandom::new();
                let kp = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &rng,
                )
                .map_err(err)?;
                KeyPairInner::Es256(kp, rng)
            }
            Algorithm::EdDsa => {
                KeyPairInner::EdDsa(Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(err)?)
            }
        };
        Ok(SigningKey {
            inner,
            kid: kid_of(cert_der),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            KeyPairInner::Es256(..) => Algorithm::Es256,
            KeyPairInner::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        let public_key = match &self.inner {
            KeyPairInner::Es256(kp, _) => kp.public_key().as_ref().to_vec(),
            KeyPairInner::EdDsa(kp) => kp.public_key().as_ref().to_vec(),
        };
        VerifyingKey::new(self.algorithm(), self.kid, public_key)
    }

    /// Signs `reading` as a tagged COSE_Sign1.
    pub fn sign(&self, reading: &Reading) -> Vec<u8> {
        self.sign_payload(&reading.to_cbor())
    }

    /// Signs `reading` as a tagged COSE_Sign1 that carries the signer's
    /// certificate `chain` (DER, the signer's first) in its protected
    /// header (`x5chain`, RFC 9360): for transports that do not present
    /// the certificate themselves, such as MQTT through a broker.
    pub fn sign_with_chain(&self, reading: &Reading, chain: &[Vec<u8>]) -> Vec<u8> {
        self.sign_headers(&reading.to_cbor(), chain)
    }

    /// Signs payload bytes as they are. Devices use [`SigningKey::sign`];
    /// this is for tests and attack simulation that need a correctly signed
    /// envelope around a payload [`Reading::to_cbor`] would never write.
    pub fn sign_payload(&self, payload: &[u8]) -> Vec<u8> {
        self.sign_headers(payload, &[])
    }

    fn sign_headers(&self, payload: &[u8], chain: &[Vec<u8>]) -> Vec<u8> {
        let protected = protected_header(self.algorithm(), &self.kid, chain);
        let tbs = sig_structure(&protected, payload);
        let sig = match &self.inner {
            KeyPairInner::Es256(kp, rng) => kp
                .sign(rng, &tbs)
                .expect("ECDSA signing fails only if the system RNG does")
                .as_ref()
                .to_vec(),
            KeyPairInner::EdDsa(kp) => kp.sign(&tbs).as_ref().to_vec(),
        };
        envelope(&protected, payload, &sig)
    }
}

/// An ES256 COSE_Sign1 over `payload` for the certificate `cert_der`,
/// signed by a key held elsewhere (a PKCS#11 token): `sign` is given the
/// SHA-256 digest of the `Sig_structure` and returns `r || s`.
pub fn sign_es256_with<E>(
    cert_der: &[u8],
    payload: &[u8],
    sign: impl FnOnce(&[u8; 32]) -> Result<[u8; 64], E>,
) -> Result<Vec<u8>, E> {
    let protected = protected_header(Algorithm::Es256, &kid_of(cert_der), &[]);
    let tbs = sig_structure(&protected, payload);
    let digest = ring::digest::digest(&ring::digest::SHA256, &tbs);
    let digest: [u8; 32] = digest.as_ref().try_into().expect("SHA-256 is 32 bytes");
    Ok(envelope(&protected, payload, &sign(&digest)?))
}

/// The protected header: algorithm, kid and, if any, the `x5chain`.
fn protected_header(alg: Algorithm, kid: &Kid, chain: &[Vec<u8>]) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.map(if chain.is_empty() { 2 } else { 3 })
            .int(LABEL_ALG)
            .int(alg.cose_id())
            .int(LABEL_KID)
            .bytes(kid);
        match chain {
            [] => {}
            [one] => {
                e.int(LABEL_X5CHAIN).bytes(one);
            }
            several => {
                e.int(LABEL_X5CHAIN).array(several.len());
                for cert in several {
                    e.bytes(cert);
                }
            }
        }
    })
}

/// A tagged COSE_Sign1 of its parts.
fn envelope(protected: &[u8], payload: &[u8], signature: &[u8]) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.tag(COSE_SIGN1_TAG)
            .array(4)
            .bytes(protected)
            .map(0)
            .bytes(payload)
            .bytes(signature);
    })
}

/// `Sig_structure` of RFC 9052 §4.4 with empty external AAD.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.array(4)
            .text("Signature1")
            .bytes(protected)
            .bytes(&[])
            .bytes(payload);
    })
}

/// A decoded COSE_Sign1 whose signature is not yet checked.
#[derive(Debug, Clone)]
pub struct SignedReading {
    alg: Algorithm,
    kid: Kid,
    x5chain: Vec<Vec<u8>>,
    protected: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl SignedReading {
    /// Parses the envelope: size, deterministic CBOR, tag, headers.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReadingError> {
        if bytes.len() > MAX_SIGNED_READING_BYTES {
            return Err(ReadingError::TooLarge {
                size: bytes.len(),
                max: MAX_SIGNED_READING_BYTES,
            });
        }
        let Value::Tag(COSE_SIGN1_TAG, body) = cbor::decode(bytes)? else {
            return Err(ReadingError::Envelope("expected CBOR tag 18 (COSE_Sign1)"));
        };
        let Value::Array(items) = *body else {
            return Err(ReadingError::Envelope("expected a 4-element array"));
        };
        let [protected, unprotected, payload, signature] = <[Value; 4]>::try_from(items)
            .map_err(|_| ReadingError::Envelope("expected a 4-element array"))?;
        let (
            Value::Bytes(protected),
            Value::Map(unprotected),
            Value::Bytes(payload),
            Value::Bytes(signature),
        ) = (protected, unprotected, payload, signature)
        else {
            return Err(ReadingError::Envelope(
                "expected [protected bstr, unprotected map, payload bstr, signature bstr]",
            ));
        };
        let protected_map = match cbor::decode(&protected)? {
            Value::Map(m) => m,
            _ => return Err(ReadingError::Envelope("protected header is not a map")),
        };
        let mut alg = None;
        let mut kid = None;
        let mut x5chain = None;
        for (label, value) in &protected_map {
            match (int_label(label), value) {
                (Some(LABEL_ALG), Value::Nint(n)) => {
                    let id = i64::try_from(*n).map_or(i64::MIN, |n| -1 - n);
                    alg = Some(
                        Algorithm::from_cose_id(id)
                            .ok_or(ReadingError::UnsupportedAlgorithm(id))?,
                    );
                }
                (Some(LABEL_ALG), Value::Uint(n)) => {
                    return Err(ReadingError::UnsupportedAlgorithm(
                        i64::try_from(*n).unwrap_or(i64::MAX),
                    ));
                }
                (Some(LABEL_ALG), _) => {
                    return Err(ReadingError::Envelope("alg is not an integer"));
                }
                (Some(LABEL_CRIT), Value::Array(labels)) => check_critical(labels, &protected_map)?,
                (Some(LABEL_CRIT), _) => {
                    return Err(ReadingError::Envelope("crit is not an array"));
                }
                (Some(LABEL_KID), v) => kid = Some(kid_value(v)?),
                (Some(LABEL_X5CHAIN), v) => x5chain = Some(x5chain_value(v)?),
                _ => {}
            }
        }
        for (label, value) in &unprotected {
            match int_label(label) {
                Some(LABEL_ALG | LABEL_CRIT) => {
                    return Err(ReadingError::Envelope(
                        "alg and crit must be in the protected header",
                    ));
                }
                Some(LABEL_KID) if kid.is_some() => {
                    return Err(ReadingError::Envelope("kid appears in both headers"));
                }
                Some(LABEL_KID) => kid = Some(kid_value(value)?),
                Some(LABEL_X5CHAIN) if x5chain.is_some() => {
                    return Err(ReadingError::Envelope("x5chain appears in both headers"));
                }
                Some(LABEL_X5CHAIN) => x5chain = Some(x5chain_value(value)?),
                _ => {}
            }
        }
        Ok(SignedReading {
            alg: alg.ok_or(ReadingError::MissingAlgorithm)?,
            kid: kid.ok_or(ReadingError::BadKid)?,
            x5chain: x5chain.unwrap_or_default(),
            protected,
            payload,
            signature,
        })
    }

    /// The signer's certificate hash.
    pub fn kid(&self) -> &Kid {
        &self.kid
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The certificates of the `x5chain` header (DER, the signer's first;
    /// RFC 9360), empty without one. Nothing here checks them: the signer
    /// is whoever the `kid` and the signature say.
    pub fn x5chain(&self) -> &[Vec<u8>] {
        &self.x5chain
    }

    /// Checks the `kid` and signature against the device's key, then parses
    /// the payload into a typed [`Reading`].
    pub fn verify(&self, key: &VerifyingKey) -> Result<Reading, ReadingError> {
        Ok(Reading::from_cbor(self.verify_payload(key)?)?)
    }

    /// The payload as a reading, without checking the signature: only for
    /// readings whose signature was checked when they were stored.
    pub fn reading_unverified(&self) -> Result<Reading, ReadingError> {
        Ok(Reading::from_cbor(&self.payload)?)
    }

    /// Checks the `kid` and signature against `key` and returns the payload
    /// as it is (for envelopes around something other than a reading, such
    /// as a patient card's signature of a batch).
    pub fn verify_payload(&self, key: &VerifyingKey) -> Result<&[u8], ReadingError> {
        self.made_for(key)?;
        if !key.verify(
            &sig_structure(&self.protected, &self.payload),
            &self.signature,
        ) {
            return Err(ReadingError::BadSignature);
        }
        Ok(&self.payload)
    }
}

impl SignedReading {
    /// Whether it names `key`'s certificate and algorithm.
    fn made_for(&self, key: &VerifyingKey) -> Result<(), ReadingError> {
        if self.kid != key.kid {
            return Err(ReadingError::KidMismatch);
        }
        if self.alg != key.alg {
            return Err(ReadingError::AlgorithmMismatch {
                reading: self.alg,
                key: key.alg,
            });
        }
        Ok(())
    }
}

/// Verifies each signed reading against its key, with the answers
/// [`SignedReading::verify`] gives one at a time; the Ed25519 ones are
/// checked together in one batch first (several times cheaper, most of all
/// for many readings of one device), and one by one only if the batch
/// fails.
pub fn verify_batch(
    pairs: &[(&SignedReading, &VerifyingKey)],
) -> Vec<Result<Reading, ReadingError>> {
    let eddsa: Vec<(usize, Vec<u8>)> = pairs
        .iter()
        .enumerate()
        .filter(|(_, (signed, key))| key.alg == Algorithm::EdDsa && signed.made_for(key).is_ok())
        .map(|(i, (signed, _))| (i, sig_structure(&signed.protected, &signed.payload)))
        .collect();
    let batched = eddsa.len() > 1
        && crate::ed25519::verify_all(eddsa.iter().map(|(i, tbs)| {
            let (signed, key) = pairs[*i];
            (
                key.public_key.as_slice(),
                tbs.as_slice(),
                signed.signature.as_slice(),
            )
        }));
    let mut in_batch = eddsa.iter().map(|(i, _)| *i).peekable();
    pairs
        .iter()
        .enumerate()
        .map(|(i, (signed, key))| {
            if batched && in_batch.peek() == Some(&i) {
                in_batch.next();
                return Ok(Reading::from_cbor(&signed.payload)?);
            }
            signed.verify(key)
        })
        .collect()
}

/// Decodes and verifies a signed reading in one step.
pub fn open(bytes: &[u8], key: &VerifyingKey) -> Result<Reading, ReadingError> {
    SignedReading::decode(bytes)?.verify(key)
}

fn int_label(v: &Value) -> Option<i64> {
    match *v {
        Value::Uint(n) => i64::try_from(n).ok(),
        Value::Nint(n) => i64::try_from(n).ok().map(|n| -1 - n),
        _ => None,
    }
}

fn kid_value(v: &Value) -> Result<Kid, ReadingError> {
    match v {
        Value::Bytes(b) => Kid::try_from(b.as_slice()).map_err(|_| ReadingError::BadKid),
        _ => Err(ReadingError::BadKid),
    }
}

/// An `x5chain` value: one certificate (bstr) or a non-empty array of them.
fn x5chain_value(v: &Value) -> Result<Vec<Vec<u8>>, ReadingError> {
    const WHAT: &str = "x5chain is a certificate (bstr) or a non-empty array of them";
    match v {
        Value::Bytes(one) if !one.is_empty() => Ok(vec![one.clone()]),
        Value::Array(several) if !several.is_empty() => several
            .iter()
            .map(|c| match c {
                Value::Bytes(cert) if !cert.is_empty() => Ok(cert.clone()),
                _ => Err(ReadingError::Envelope(WHAT)),
            })
            .collect(),
        _ => Err(ReadingError::Envelope(WHAT)),
    }
}

/// RFC 9052 §3.1: every label in `crit` must be understood and present.
fn check_critical(labels: &[Value], protected: &[(Value, Value)]) -> Result<(), ReadingError> {
    if labels.is_empty() {
        return Err(ReadingError::Envelope("crit is empty"));
    }
    for label in labels {
        let understood = matches!(
            int_label(label),
            Some(LABEL_ALG | LABEL_CONTENT_TYPE | LABEL_KID | LABEL_X5CHAIN)
        );
        if !understood {
            let name = match label {
                Value::Text(t) => format!("\"{t}\""),
                other => int_label(other).map_or_else(|| other.to_string(), |n| n.to_string()),
            };
            return Err(ReadingError::UnknownCriticalHeader(name));
        }
        if !protected.iter().any(|(k, _)| k == label) {
            return Err(ReadingError::Envelope("crit names a header that is absent"));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

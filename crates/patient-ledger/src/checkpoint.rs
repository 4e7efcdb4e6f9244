//! Signed checkpoints in the C2SP `tlog-checkpoint` format: a signed note
//! (C2SP `signed-note`) whose text is the log's origin, its size, its root
//! (base64), and extension lines, signed with Ed25519.
//!
//! ```text
//! medledger/patient/4f2c…            origin: one log, one name
//! 1234                               tree size
//! 8l6Cz…=                            root hash, base64
//! time 1763769600000                 extension: Unix ms when signed
//!
//! — medledger-server-1 Zx8e…=        key name, base64(key id || signature)
//! ```
//!
//! The key id is the first 4 bytes of SHA-256(name || "\n" || 0x01 ||
//! public key); a verifier key is written `name+hex(key id)+base64(0x01 ||
//! public key)`.

use crate::merkle::Hash;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::digest::{Context, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// The algorithm byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// What starts a signature line.
const SIG_PREFIX: &str = "\u{2014} ";

/// What a checkpoint states about a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique name.
    pub origin: String,
    /// How many entries.
    pub size: u64,
    /// The Merkle root of those entries.
    pub root: Hash,
    /// Further lines (ours: `time <unix ms>`), each non-empty.
    pub extensions: Vec<String>,
}

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The note is not text of the expected shape.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// No signature by the key we trust.
    #[error("the checkpoint has no signature by {0}")]
    NotSignedBy(String),
    /// A signature by our key that does not verify.
    #[error("the signature by {0} does not verify: the checkpoint was altered or forged")]
    BadSignature(String),
    /// A verifier key string that is not one.
    #[error("malformed verifier key: {0}")]
    BadKey(String),
    /// Signed by a ledger key after that key was retired (or at a time
    /// the checkpoint does not state).
    #[error(
        "signed by the ledger key {key}, retired at {retired_ms} (Unix ms), but {}",
        match time_ms {
            Some(t) => format!("the checkpoint's time is {t}"),
            None => "the checkpoint states no time".to_owned(),
        }
    )]
    RetiredKey {
        /// The retired key, `name+id+key`.
        key: String,
        /// The checkpoint's `time`, if it has one.
        time_ms: Option<u64>,
        /// When the key was retired (its rotation statement's time).
        retired_ms: u64,
    },
}

impl Checkpoint {
    /// The note text that is signed: origin, size, root, extensions, each
    /// ending in a newline.
    pub fn body(&self) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Parses the note text (without signatures).
    fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .ok_or_else(|| malformed("the text does not end in a newline"))?
            .split('\n')
            .collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(malformed("fewer than three lines (origin, size, root)"));
        };
        if origin.is_empty() {
            return Err(malformed("empty origin line"));
        }
        if size.is_empty()
            || (size.len() > 1 && size.starts_with('0'))
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(CheckpointError::Malformed(format!(
                "tree size {size:?} is not a decimal number"
            )));
        }
        let size = size
            .parse()
            .map_err(|_| CheckpointError::Malformed(format!("tree size {size:?} is too large")))?;
        let root = B64
            .decode(root)
            .ok()
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or_else(|| {
                CheckpointError::Malformed(format!("root {root:?} is not 32 bytes of base64"))
            })?;
        if extensions.iter().any(|l| l.is_empty()) {
            return Err(malformed("an empty line among the extension lines"));
        }
        Ok(Checkpoint {
            origin: (*origin).to_owned(),
            size,
            root,
            extensions: extensions.iter().map(|l| (*l).to_owned()).collect(),
        })
    }

    /// The `time` extension (Unix ms), if present.
    pub fn time_ms(&self) -> Option<u64> {
        self.extensions
            .iter()
            .find_map(|l| l.strip_prefix("time ")?.parse().ok())
    }
}

fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ALG_ED25519]);
    ctx.update(public);
    let d = ctx.finish();
    [d.as_ref()[0], d.as_ref()[1], d.as_ref()[2], d.as_ref()[3]]
}

/// Signs checkpoints: an Ed25519 key with a name.
pub struct NoteSigner {
    name: String,
    key: Ed25519KeyPair,
    id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer from a PKCS#8 Ed25519 key. The name must be non-empty and
    /// hold no space, `+` or newline.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<NoteSigner, CheckpointError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| CheckpointError::BadKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        NoteSigner::with_key(name, key)
    }

    /// A signer from a raw 32-byte Ed25519 seed (the form of the Go
    /// `note` package's `PRIVATE+KEY+…` strings).
    pub fn from_seed(name: &str, seed: &[u8]) -> Result<NoteSigner, CheckpointError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| CheckpointError::BadKey(format!("not an Ed25519 seed: {e}")))?;
        NoteSigner::with_key(name, key)
    }

    fn with_key(name: &str, key: Ed25519KeyPair) -> Result<NoteSigner, CheckpointError> {
        if name.is_empty() || name.contains([' ', '+', '\n']) {
            return Err(CheckpointError::BadKey(format!(
                "key name {name:?} is empty or holds a space, + or newline"
            )));
        }
        let id = key_id(name, key.public_key().as_ref());
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// A fresh PKCS#8 Ed25519 key, for [`NoteSigner::from_pkcs8`].
    pub fn generate_pkcs8() -> Vec<u8> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("the system RNG works")
            .as_ref()
            .to_vec()
    }

    /// The key verifiers trust: `name+hex(key id)+base64(0x01 || public key)`.
    pub fn verifier_key(&self) -> String {
        let mut public = vec![ALG_ED25519];
        public.extend_from_slice(self.key.public_key().as_ref());
        let id: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}+{id}+{}", self.name, B64.encode(public))
    }

    /// An Ed25519 signature of `message` (ledger entries use it too).
    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.key
            .sign(message)
            .as_ref()
            .try_into()
            .expect("Ed25519 signatures are 64 bytes")
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_text(&checkpoint.body())
    }

    /// A signed note of any text that ends in a newline.
    pub fn sign_text(&self, body: &str) -> String {
        format!("{body}\n{}", self.signature_line(body))
    }

    /// This key's signature line of a note's text (what follows the blank
    /// line), ending in a newline: notes signed by several keys carry one
    /// line each.
    pub fn signature_line(&self, body: &str) -> String {
        let sig = self.key.sign(body.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(sig.as_ref());
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// Verifies checkpoints signed by one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

impl NoteVerifier {
    /// Parses a verifier key `name+hex(key id)+base64(0x01 || public key)`.
    pub fn new(vkey: &str) -> Result<NoteVerifier, CheckpointError> {
        let bad = |why: &str| CheckpointError::BadKey(format!("{vkey:?}: {why}"));
        // The base64 key may itself hold '+'.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+keyid+key"));
        };
        let key = B64.decode(key).map_err(|_| bad("the key is not base64"))?;
        let Some((&ALG_ED25519, public)) = key.split_first() else {
            return Err(bad("not an Ed25519 key (algorithm byte 0x01)"));
        };
        if public.len() != 32 {
            return Err(bad("an Ed25519 public key is 32 bytes"));
        }
        let expected: String = key_id(name, public)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if id != expected {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            id: key_id(name, public),
            public: public.to_vec(),
        })
    }

    /// The key as verifiers write it: `name+hex(key id)+base64(0x01 ||
    /// public key)`.
    pub fn key(&self) -> String {
        let mut public = vec![ALG_ED25519];
        public.extend_from_slice(&self.public);
        let id: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}+{id}+{}", self.name, B64.encode(public))
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub(crate) fn verify_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(message, signature)
            .is_ok()
    }

    /// Verifies a signed note and returns the checkpoint it states. Other
    /// keys' signatures are ignored; ours must be there and verify.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse_body(&self.open(note)?)
    }

    /// Verifies any signed note and returns its text (with the final
    /// newline).
    pub fn open(&self, note: &str) -> Result<String, CheckpointError> {
        let (body, signatures) = note.split_once("\n\n").ok_or_else(|| {
            CheckpointError::Malformed("no blank line before the signatures".into())
        })?;
        let body = format!("{body}\n");
        let mut ours = None;
        let signatures = signatures.strip_suffix('\n').unwrap_or(signatures);
        for line in signatures.split('\n').filter(|_| !signatures.is_empty()) {
            let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
                CheckpointError::Malformed(format!(
                    "signature line {line:?} does not start with \"— \""
                ))
            })?;
            let (name, blob) = rest.split_once(' ').ok_or_else(|| {
                CheckpointError::Malformed(format!("signature line {line:?} has no signature"))
            })?;
            let blob = B64.decode(blob).map_err(|_| {
                CheckpointError::Malformed(format!("signature of {name} is not base64"))
            })?;
            if name == self.name && blob.len() == 4 + 64 && blob[..4] == self.id {
                ours = Some(blob[4..].to_vec());
            }
        }
        let sig = ours.ok_or_else(|| CheckpointError::NotSignedBy(self.name.clone()))?;
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(body.as_bytes(), &sig)
            .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
        Ok(body)
    }
}

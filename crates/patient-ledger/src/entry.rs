//! Ledger entries: canonical CBOR.
//!
//! An entry's payload is a deterministic CBOR map (RFC 8949 §4.2.1) with
//! text keys:
//!
//! | key | value |
//! |---|---|
//! | `v` | 2 (1 in the signed entries of earlier releases) |
//! | `patient` | bstr(32), the patientRef |
//! | `idx` | uint, its index in the patient's ledger |
//! | `ts` | uint, Unix ms |
//! | `kind` | text: `DataRecorded`, `ConsentChanged`, `AccessEvent`, `Annotation`, `Alert`, `StorageFailure`, `Erased` |
//! | `body` | map of text keys to uint, text or bstr |
//!
//! The stored entry (the Merkle leaf data) is the payload itself (`v` 2).
//! As in Certificate Transparency, what is signed is the checkpoint: an
//! entry is authentic because it is included under a signed (and
//! anchored) checkpoint, so it carries no signature of its own; a signature
//! per entry cost a fifth of a reading's CPU and proved nothing more.
//!
//! Entries written by earlier releases (`v` 1) are the CBOR array
//! `[payload (bstr), signature (bstr(64))]`, the signature being Ed25519
//! over `"medledger ledger entry\n" || payload`; they are read, and their
//! signature checked, as before.

use crate::checkpoint::{NoteSigner, NoteVerifier};
use medledger_protocol::cbor::{self, Encoder, Value};
use std::collections::BTreeMap;

/// What an entry records. Stable names; new kinds are added, never renamed.
pub const KINDS: &[&str] = &[
    "DataRecorded",
    "ConsentChanged",
    "AccessEvent",
    "Annotation",
    "Alert",
    "StorageFailure",
    "Erased",
];

const SIGNING_CONTEXT: &[u8] = b"medledger ledger entry\n";

/// The version of the entries this release writes (unsigned).
const VERSION: u64 = 2;
/// The version of signed entries (`[payload, signature]`), read only.
const SIGNED_VERSION: u64 = 1;

/// A value in an entry's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// An unsigned integer.
    Uint(u64),
    /// Text.
    Text(String),
    /// Bytes (hashes, ids).
    Bytes(Vec<u8>),
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The patientRef.
    pub patient: [u8; 32],
    /// Its index in the patient's ledger.
    pub index: u64,
    /// When, Unix ms.
    pub ts_ms: u64,
    /// One of [`KINDS`].
    pub kind: String,
    /// What it says.
    pub body: BTreeMap<String, Field>,
}

/// Why stored bytes are not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Not the `[payload, signature]` array, or the payload is not an entry.
    #[error("malformed entry: {0}")]
    Malformed(String),
    /// The signature does not verify with the ledger key.
    #[error("the entry's signature does not verify with the ledger key")]
    BadSignature,
    /// A kind this version does not know.
    #[error("unknown entry kind {0:?}")]
    UnknownKind(String),
    /// Signed by a ledger key with a time after that key was retired.
    #[error("signed by the ledger key {key}, retired at {retired_ms} (Unix ms), but dated {ts_ms}")]
    RetiredKey {
        /// The retired key, `name+id+key`.
        key: String,
        /// The entry's `ts`.
        ts_ms: u64,
        /// When the key was retired (its rotation statement's time).
        retired_ms: u64,
    },
    /// No key of the ledger's key history signed it.
    #[error(
        "the entry's signature does not verify with any of the {0} ledger keys of the key history"
    )]
    NoKeySigned(usize),
}

fn key(k: &str) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.text(k);
    })
}

/// A stored entry, decoded: an unsigned one (`v` 2), or a signed one of
/// an earlier release with the message its signature covers.
#[derive(Debug)]
pub(crate) enum Stored {
    /// `v` 2: authentic by inclusion under a signed checkpoint.
    Unsigned(Entry),
    /// `v` 1: `[payload, signature]`.
    Signed {
        entry: Entry,
        message: Vec<u8>,
        signature: Vec<u8>,
    },
}

impl Entry {
    /// The stored form of the entry (the Merkle leaf data): its canonical
    /// CBOR payload.
    pub fn encode(&self) -> Vec<u8> {
        self.payload_of(VERSION)
    }

    fn payload_of(&self, version: u64) -> Vec<u8> {
        let body: Vec<(Vec<u8>, Vec<u8>)> = self
            .body
            .iter()
            .map(|(k, v)| {
                let value = cbor::encode_with(|e| {
                    match v {
                        Field::Uint(n) => e.uint(*n),
                        Field::Text(t) => e.text(t),
                        Field::Bytes(b) => e.bytes(b),
                    };
                });
                (key(k), value)
            })
            .collect();
        let body = cbor::encode_with(|e| {
            e.map_sorted(body);
        });
        let fields = vec![
            (
                key("v"),
                cbor::encode_with(|e| {
                    e.uint(version);
                }),
            ),
            (
                key("patient"),
                cbor::encode_with(|e| {
                    e.bytes(&self.patient);
                }),
            ),
            (
                key("idx"),
                cbor::encode_with(|e| {
                    e.uint(self.index);
                }),
            ),
            (
                key("ts"),
                cbor::encode_with(|e| {
                    e.uint(self.ts_ms);
                }),
            ),
            (
                key("kind"),
                cbor::encode_with(|e| {
                    e.text(&self.kind);
                }),
            ),
            (key("body"), body),
        ];
        cbor::encode_with(|e: &mut Encoder| {
            e.map_sorted(fields);
        })
    }

    /// The signed form of earlier releases (`v` 1, `[payload,
    /// signature]`): what their ledgers hold, for tests of reading them.
    pub fn sign_v1(&self, signer: &NoteSigner) -> Vec<u8> {
        let payload = self.payload_of(SIGNED_VERSION);
        let signature = signer.sign_raw(&Entry::signed_message(&payload));
        cbor::encode_with(|e| {
            e.array(2).bytes(&payload).bytes(&signature);
        })
    }

    /// Decodes a stored entry; a signed one (`v` 1) must verify with
    /// `verifier`. An unsigned one is authentic only under a checkpoint:
    /// the caller checks its inclusion.
    pub fn open(stored: &[u8], verifier: &NoteVerifier) -> Result<Entry, EntryError> {
        match Entry::decode(stored)? {
            Stored::Unsigned(entry) => Ok(entry),
            Stored::Signed {
                entry,
                message,
                signature,
            } if verifier.verify_raw(&message, &signature) => Ok(entry),
            Stored::Signed { .. } => Err(EntryError::BadSignature),
        }
    }

    /// Decodes a stored entry of either form, leaving a signature to check
    /// to the caller.
    pub(crate) fn decode(stored: &[u8]) -> Result<Stored, EntryError> {
        // A definite-length array head (major type 4): the signed form.
        if stored.first().is_some_and(|b| b >> 5 == 4) {
            let (payload, signature) = Entry::split(stored)?;
            let entry = Entry::decode_payload(&payload, SIGNED_VERSION)?;
            return Ok(Stored::Signed {
                entry,
                message: Entry::signed_message(&payload),
                signature,
            });
        }
        Ok(Stored::Unsigned(Entry::decode_payload(stored, VERSION)?))
    }

    fn signed_message(payload: &[u8]) -> Vec<u8> {
        [SIGNING_CONTEXT, payload].concat()
    }

    /// The `[payload, signature]` of a stored entry.
    fn split(stored: &[u8]) -> Result<(Vec<u8>, Vec<u8>), EntryError> {
        let malformed = |why: &str| EntryError::Malformed(why.to_owned());
        let value = cbor::decode(stored).map_err(|e| EntryError::Malformed(e.to_string()))?;
        let Value::Array(items) = value else {
            return Err(malformed("not a [payload, signature] array"));
        };
        let Ok([Value::Bytes(payload), Value::Bytes(signature)]) = <[Value; 2]>::try_from(items)
        else {
            return Err(malformed(
                "not a [payload, signature] array of two byte strings",
            ));
        };
        Ok((payload, signature))
    }

    fn decode_payload(payload: &[u8], version: u64) -> Result<Entry, EntryError> {
        let malformed = |why: String| EntryError::Malformed(why);
        let Value::Map(mut fields) = cbor::decode(payload).map_err(|e| malformed(e.to_string()))?
        else {
            return Err(malformed("the payload is not a map".into()));
        };
        let mut get = |name: &str| -> Result<Value, EntryError> {
            let i = fields
                .iter()
                .position(|(k, _)| matches!(k, Value::Text(t) if t == name))
                .ok_or_else(|| malformed(format!("no {name:?} field")))?;
            Ok(fields.remove(i).1)
        };
        let uint = |v: Value, name: &str| match v {
            Value::Uint(n) => Ok(n),
            _ => Err(malformed(format!("{name:?} is not an unsigned integer"))),
        };
        let v = uint(get("v")?, "v")?;
        if v != version {
            return Err(malformed(format!(
                "entry version {v} in the {} form",
                if version == VERSION {
                    "unsigned"
                } else {
                    "signed"
                }
            )));
        }
        let patient = match get("patient")? {
            Value::Bytes(b) => {
                <[u8; 32]>::try_from(b).map_err(|_| malformed("patient is not 32 bytes".into()))?
            }
            _ => return Err(malformed("patient is not bytes".into())),
        };
        let index = uint(get("idx")?, "idx")?;
        let ts_ms = uint(get("ts")?, "ts")?;
        let kind = match get("kind")? {
            Value::Text(t) => t,
            _ => return Err(malformed("kind is not text".into())),
        };
        if !KINDS.contains(&kind.as_str()) {
            return Err(EntryError::UnknownKind(kind));
        }
        let Value::Map(items) = get("body")? else {
            return Err(malformed("body is not a map".into()));
        };
        let mut body = BTreeMap::new();
        for (k, v) in items {
            let Value::Text(k) = k else {
                return Err(malformed("a body key is not text".into()));
            };
            let v = match v {
                Value::Uint(n) => Field::Uint(n),
                Value::Text(t) => Field::Text(t),
                Value::Bytes(b) => Field::Bytes(b),
                _ => {
                    return Err(malformed(format!(
                        "body field {k:?} is not uint, text or bytes"
                    )));
                }
            };
            body.insert(k, v);
        }
        if let Some((k, _)) = fields.first() {
            return Err(malformed(format!("unknown field {k:?}")));
        }
        Ok(Entry {
            patient,
            index,
            ts_ms,
            kind,
            body,
        })
    }
}

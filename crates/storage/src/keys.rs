//! Envelope encryption and crypto-shredding.
//!
//! Each patient has a data key (AES-256-GCM, through ring) that encrypts
//! their blobs, a fresh random nonce per blob. Data keys are stored only
//! wrapped (encrypted) by the server's key-encryption key (KEK), which
//! lives in a file or the environment, never in the database.
//!
//! The associated data binds what a ciphertext is: a data key is bound to
//! its patientRef and key id, a blob to its patientRef and the SHA-256 of
//! its plaintext. A blob moved to another patient, or swapped with another
//! blob, does not decrypt.
//!
//! Erasing a patient writes a tombstone and deletes every wrapped copy of
//! their data keys in one transaction. From then on their blobs are noise,
//! and a tombstoned patient's keys are refused even if an older copy of the
//! key table is restored.
//!
//! Sealed blob layout: `0x01 || key id (u32, big-endian) || nonce (12) ||
//! ciphertext || tag (16)`.

use crate::sql::{Db, SqlError, now_ms};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::Row;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// A patientRef: keccak256(salt || patient id), 32 bytes.
pub type PatientRef = [u8; 32];

const SEALED_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const KEY_AAD: &[u8] = b"medledger/data-key/v1";
const BLOB_AAD: &[u8] = b"medledger/blob/v1";

/// Why a key or a blob could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The patient was erased: their keys are gone for good.
    #[error("patient {0} was erased; their data can no longer be decrypted")]
    Erased(String),
    /// The blob names a data key the patient does not have.
    #[error("patient {patient} has no data key {key_id}")]
    NoKey {
        /// The patient, hex.
        patient: String,
        /// The key id the blob names.
        key_id: u32,
    },
    /// A wrapped data key does not unwrap with our KEK.
    #[error(
        "data key {key_id} of patient {patient} does not unwrap: wrapped by another key-encryption key, or altered"
    )]
    Unwrap {
        /// The patient, hex.
        patient: String,
        /// The key id.
        key_id: u32,
    },
    /// The blob does not decrypt for this patient and content hash.
    #[error(
        "blob does not decrypt for patient {0}: another patient's, swapped with another blob, or altered"
    )]
    Decrypt(String),
    /// The sealed bytes are not a sealed blob.
    #[error("not a sealed blob: {0}")]
    Malformed(String),
    /// The key-encryption key could not be read.
    #[error("key-encryption key: {0}")]
    Kek(String),
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> KeyError {
        KeyError::Sql(SqlError::Database(e))
    }
}

/// The result of key work.
pub type Result<T, E = KeyError> = std::result::Result<T, E>;

/// The server's key-encryption key: 32 bytes, kept out of the database.
pub struct Kek {
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// A KEK from 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Kek> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| {
            KeyError::Kek(format!(
                "a key-encryption key is 32 bytes, not {}",
                bytes.len()
            ))
        })?;
        Ok(Kek {
            key: LessSafeKey::new(key),
        })
    }

    /// A KEK from 64 hex digits (whitespace around them ignored).
    pub fn from_hex(text: &str) -> Result<Kek> {
        Kek::from_bytes(&parse_hex(text).map_err(KeyError::Kek)?)
    }

    /// The KEK in `path` (64 hex digits).
    pub fn from_file(path: &Path) -> Result<Kek> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError::Kek(format!("reading {}: {e}", path.display())))?;
        let bytes =
            parse_hex(&text).map_err(|e| KeyError::Kek(format!("{}: {e}", path.display())))?;
        Kek::from_bytes(&bytes)
    }

    /// The KEK in environment variable `var` (64 hex digits).
    pub fn from_env(var: &str) -> Result<Kek> {
        let text = std::env::var(var).map_err(|_| KeyError::Kek(format!("{var} is not set")))?;
        let bytes = parse_hex(&text).map_err(|e| KeyError::Kek(format!("{var}: {e}")))?;
        Kek::from_bytes(&bytes)
    }

    /// 64 hex digits of a fresh random KEK.
    pub fn generate_hex() -> String {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system RNG works");
        hex::encode(bytes)
    }
}

/// Unwrapped current keys, and the patients erased since we started (so
/// that a lookup racing an erasure cannot put a key back).
#[derive(Default)]
struct KeyCache {
    /// By patient: (key id, key).
    keys: HashMap<PatientRef, (u32, std::sync::Arc<LessSafeKey>)>,
    erased: std::collections::HashSet<PatientRef>,
}

impl KeyCache {
    fn remember(&mut self, patient: &PatientRef, key_id: u32, key: &std::sync::Arc<LessSafeKey>) {
        if !self.erased.contains(patient) {
            self.keys.insert(*patient, (key_id, key.clone()));
        }
    }
}

/// Seals and opens patients' blobs; keeps their wrapped data keys in SQL.
pub struct Vault {
    db: Db,
    kek: Kek,
    rng: SystemRandom,
    /// Unwrapped current keys, by patient: (key id, key).
    cache: Mutex<KeyCache>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault over a migrated database.
    pub fn new(db: Db, kek: Kek) -> Vault {
        Vault {
            db,
            kek,
            rng: SystemRandom::new(),
            cache: Mutex::new(KeyCache::default()),
        }
    }

    /// Encrypts `plaintext` for `patient`, creating their data key on first
    /// use. Bound to the patient and the plaintext's SHA-256.
    pub async fn seal(&self, patient: &PatientRef, plaintext: &[u8]) -> Result<Vec<u8>> {
        let (key_id, key) = self.current_key(patient).await?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system RNG works");
        let aad = blob_aad(patient, &sha256(plaintext));
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .expect("AES-GCM sealing cannot fail for in-memory sizes");
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts a sealed blob of `patient` whose plaintext hashes to
    /// `plaintext_sha256`.
    pub async fn open(
        &self,
        patient: &PatientRef,
        plaintext_sha256: &[u8; 32],
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        if sealed.len() < HEADER_LEN + AES_256_GCM.tag_len() {
            return Err(KeyError::Malformed(format!(
                "{} bytes is too short",
                sealed.len()
            )));
        }
        if sealed[0] != SEALED_VERSION {
            return Err(KeyError::Malformed(format!(
                "unknown version {}",
                sealed[0]
            )));
        }
        let key_id = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let nonce: [u8; NONCE_LEN] = sealed[5..HEADER_LEN]
            .try_into()
            .expect("the header holds a nonce");
        let key = self.key(patient, key_id).await?;
        let mut body = sealed[HEADER_LEN..].to_vec();
        let aad = blob_aad(patient, plaintext_sha256);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| KeyError::Decrypt(hex::encode(patient)))?;
        Ok(plain.to_vec())
    }

    /// Erases a patient's keys: a tombstone, and every wrapped copy
    /// deleted, in one transaction. Their blobs are unreadable from then
    /// on. Erasing twice is fine.
    pub async fn erase(&self, patient: &PatientRef) -> Result<()> {
        let pool = self.db.pool();
        let mut tx = pool.begin().await?;
        sqlx::query("DELETE FROM erased_patients WHERE patient = $1")
            .bind(patient.to_vec())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO erased_patients (patient, erased_ms) VALUES ($1, $2)")
            .bind(patient.to_vec())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM data_keys WHERE patient = $1")
            .bind(patient.to_vec())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut cache = self.cache();
        cache.keys.remove(patient);
        cache.erased.insert(*patient);
        Ok(())
    }

    /// Whether the patient was erased.
    pub async fn is_erased(&self, patient: &PatientRef) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM erased_patients WHERE patient = $1")
            .bind(patient.to_vec())
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().expect("the key cache is not poisoned")
    }

    /// The patient's newest data key, created if they have none.
    async fn current_key(
        &self,
        patient: &PatientRef,
    ) -> Result<(u32, std::sync::Arc<LessSafeKey>)> {
        if let Some(hit) = self.cache().keys.get(patient) {
            return Ok(hit.clone());
        }
        if self.is_erased(patient).await? {
            return Err(KeyError::Erased(hex::encode(patient)));
        }
        let newest = sqlx::query(
            "SELECT key_id FROM data_keys WHERE patient = $1 ORDER BY key_id DESC LIMIT 1",
        )
        .bind(patient.to_vec())
        .fetch_optional(self.db.pool())
        .await?;
        let key_id = match newest {
            Some(row) => u32::try_from(row.try_get::<i64, _>("key_id")?).unwrap_or(0),
            None => self.create_key(patient).await?,
        };
        let key = self.key(patient, key_id).await?;
        self.cache().remember(patient, key_id, &key);
        Ok((key_id, key))
    }

    /// Creates key 1 for the patient (or finds the one a concurrent
    /// writer created).
    async fn create_key(&self, patient: &PatientRef) -> Result<u32> {
        let key_id = 1u32;
        let mut dek = [0u8; 32];
        self.rng.fill(&mut dek).expect("the system RNG works");
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system RNG works");
        let mut wrapped = dek.to_vec();
        self.kek
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_aad(patient, key_id)),
                &mut wrapped,
            )
            .expect("AES-GCM sealing cannot fail for 32 bytes");
        let inserted = sqlx::query(
            "INSERT INTO data_keys (patient, key_id, nonce, wrapped, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(patient.to_vec())
        .bind(i64::from(key_id))
        .bind(nonce.to_vec())
        .bind(wrapped)
        .bind(now_ms())
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => Ok(key_id),
            // A concurrent writer created it first: use theirs.
            Err(_) if self.wrapped(patient, key_id).await?.is_some() => Ok(key_id),
            Err(e) => Err(e.into()),
        }
    }

    async fn wrapped(
        &self,
        patient: &PatientRef,
        key_id: u32,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let row =
            sqlx::query("SELECT nonce, wrapped FROM data_keys WHERE patient = $1 AND key_id = $2")
                .bind(patient.to_vec())
                .bind(i64::from(key_id))
                .fetch_optional(self.db.pool())
                .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("nonce")?, r.try_get("wrapped")?)),
            None => None,
        })
    }

    /// Data key `key_id` of the patient, unwrapped; refused for an erased
    /// patient even if a wrapped copy turns up again.
    async fn key(&self, patient: &PatientRef, key_id: u32) -> Result<std::sync::Arc<LessSafeKey>> {
        if let Some((id, key)) = self.cache().keys.get(patient)
            && *id == key_id
        {
            return Ok(key.clone());
        }
        if self.is_erased(patient).await? {
            return Err(KeyError::Erased(hex::encode(patient)));
        }
        let (nonce, mut wrapped) =
            self.wrapped(patient, key_id)
                .await?
                .ok_or_else(|| KeyError::NoKey {
                    patient: hex::encode(patient),
                    key_id,
                })?;
        let unwrap_err = || KeyError::Unwrap {
            patient: hex::encode(patient),
            key_id,
        };
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| unwrap_err())?;
        let dek = self
            .kek
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_aad(patient, key_id)),
                &mut wrapped,
            )
            .map_err(|_| unwrap_err())?;
        let key = UnboundKey::new(&AES_256_GCM, dek).map_err(|_| unwrap_err())?;
        Ok(std::sync::Arc::new(LessSafeKey::new(key)))
    }
}

/// 64 hex digits as 32 bytes.
fn parse_hex(text: &str) -> std::result::Result<[u8; 32], String> {
    let text = text.trim();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes)
        .map(|()| bytes)
        .map_err(|_| format!("expected 64 hex digits, found {} characters", text.len()))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest(&SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn key_aad(patient: &PatientRef, key_id: u32) -> Vec<u8> {
    [KEY_AAD, patient, &key_id.to_be_bytes()].concat()
}

fn blob_aad(patient: &PatientRef, plaintext_sha256: &[u8; 32]) -> Vec<u8> {
    [BLOB_AAD, patient, plaintext_sha256].concat()
}

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
//!
//! ## Rotating the KEK
//!
//! Each wrapped data key records the id of the KEK that wrapped it
//! ([`Kek::id`], a key check value). A vault wraps new data keys with its
//! current KEK and unwraps with the KEK the row names: the current one or
//! one of its previous ones ([`Vault::with_previous`]). A row under a KEK
//! it does not hold is refused, naming that KEK.
//! [`Vault::rewrap`] moves rows to the current KEK in bounded transactions
//! while seals and opens go on; when none is left, the previous KEKs are
//! recorded retired: the vault drops them, and never takes one as its
//! current KEK again ([`Vault::check_keks`]).
//!
//! Rows written before KEK ids were recorded (schema migration 12) have no
//! id; they are opened by trying each KEK held (AES-GCM authenticates,
//! so only the right one opens them), and get one when re-wrapped.

use crate::sql::{Db, SqlError, now_ms};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::Row;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

/// A patientRef: keccak256(salt || patient id), 32 bytes.
pub type PatientRef = [u8; 32];

const SEALED_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const KEY_AAD: &[u8] = b"medledger/data-key/v1";
const KEK_ID_PREFIX: &[u8] = b"medledger kek id\n";
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
    /// Data keys are wrapped by a KEK this vault does not hold (or holds
    /// no more: it was retired).
    #[error(
        "{what} wrapped by retired key-encryption key {kek}; add it to previous_kek_files (or previous_kek_envs) until rewrap finishes"
    )]
    KekNotHeld {
        /// Which data keys: "data key 1 of patient ab.. is", "3 data keys are".
        what: String,
        /// The KEK's id.
        kek: KekId,
    },
    /// The current KEK was retired by an earlier rotation.
    #[error(
        "key-encryption key {0} was retired by a rotation (every data key was re-wrapped away from it); it cannot wrap data keys again: make a new one (`medledger server new-kek`)"
    )]
    KekRetired(KekId),
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

/// A KEK's id: the first 8 bytes of SHA-256("medledger kek id\n" || KEK),
/// a key check value. It names the KEK in the database, logs and errors,
/// and tells nothing of the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekId([u8; 8]);

impl std::fmt::Display for KekId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for KekId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KekId({self})")
    }
}

impl std::str::FromStr for KekId {
    type Err = KeyError;

    /// 16 hex digits.
    fn from_str(text: &str) -> Result<KekId> {
        let mut bytes = [0u8; 8];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| {
            KeyError::Kek(format!(
                "a key-encryption key id is 16 hex digits, not {text:?}"
            ))
        })?;
        Ok(KekId(bytes))
    }
}

/// The server's key-encryption key: 32 bytes, kept out of the database.
pub struct Kek {
    key: LessSafeKey,
    id: KekId,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
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
        let check = sha256(&[KEK_ID_PREFIX, bytes].concat());
        Ok(Kek {
            key: LessSafeKey::new(key),
            id: KekId(
                check[..8]
                    .try_into()
                    .expect("SHA-256 is longer than 8 bytes"),
            ),
        })
    }

    /// Its id, as recorded beside every data key it wraps.
    pub fn id(&self) -> KekId {
        self.id
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

/// How many data keys each KEK wraps ([`Vault::check_keks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekStatus {
    /// The current KEK.
    pub current: KekId,
    /// Data keys under the current KEK.
    pub under_current: u64,
    /// Data keys under each previous KEK still in use.
    pub under_previous: Vec<(KekId, u64)>,
    /// Data keys wrapped before KEK ids were recorded (opened by trying
    /// each KEK held).
    pub unrecorded: u64,
}

impl KekStatus {
    /// Data keys a rewrap would move to the current KEK.
    pub fn left(&self) -> u64 {
        self.unrecorded + self.under_previous.iter().map(|(_, n)| n).sum::<u64>()
    }
}

/// What a rewrap did ([`Vault::rewrap`], [`Vault::rewrap_all`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrapped {
    /// Data keys re-wrapped under the current KEK.
    pub rewrapped: u64,
    /// Stray wrapped keys of erased patients found (an old key table
    /// restored), deleted rather than re-wrapped.
    pub shredded: u64,
    /// Data keys still not under the current KEK.
    pub left: u64,
    /// The previous KEKs retired: no data key needs them any more
    /// ([`Vault::rewrap_all`] only, once `left` is 0).
    pub retired: Vec<KekId>,
}

/// Seals and opens patients' blobs; keeps their wrapped data keys in SQL.
pub struct Vault {
    db: Db,
    /// Wraps new data keys.
    kek: Kek,
    /// Unwrap only, until a rewrap retires them.
    previous: RwLock<Vec<Arc<Kek>>>,
    rng: SystemRandom,
    /// Unwrapped current keys, by patient: (key id, key).
    cache: Mutex<KeyCache>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("kek", &self.kek)
            .field("previous", &self.previous_keks())
            .finish_non_exhaustive()
    }
}

/// A row of `data_keys` read for a rewrap.
struct StaleKey {
    patient: PatientRef,
    key_id: u32,
    nonce: Vec<u8>,
    wrapped: Vec<u8>,
    kek: Option<String>,
    erased: bool,
}

impl Vault {
    /// A vault over a migrated database, with one KEK.
    pub fn new(db: Db, kek: Kek) -> Vault {
        Vault::with_previous(db, kek, Vec::new())
    }

    /// A vault that wraps with `kek` and also unwraps data keys still
    /// under the `previous` ones (a rotation in progress). A previous KEK
    /// equal to the current one, or given twice, is taken once.
    /// Call [`Vault::check_keks`] before use.
    pub fn with_previous(db: Db, kek: Kek, previous: Vec<Kek>) -> Vault {
        let mut held: Vec<Arc<Kek>> = Vec::new();
        for p in previous {
            if p.id != kek.id && !held.iter().any(|h| h.id == p.id) {
                held.push(Arc::new(p));
            }
        }
        Vault {
            db,
            kek,
            previous: RwLock::new(held),
            rng: SystemRandom::new(),
            cache: Mutex::new(KeyCache::default()),
        }
    }

    /// The current KEK's id.
    pub fn kek_id(&self) -> KekId {
        self.kek.id
    }

    /// The ids of the previous KEKs still held.
    pub fn previous_keks(&self) -> Vec<KekId> {
        self.held().iter().map(|k| k.id).collect()
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Kek>>> {
        self.previous.read().expect("the KEK list is not poisoned")
    }

    /// The KEK `id`, if held.
    fn kek_by_id(&self, id: KekId) -> Option<Arc<Kek>> {
        self.held().iter().find(|k| k.id == id).cloned()
    }

    /// Checks that this vault can open every data key, and counts them by
    /// KEK. Refuses a current KEK that an earlier rotation retired, and
    /// data keys under a KEK not held (naming it); drops previous KEKs that
    /// were retired already, and those that wrap nothing now.
    pub async fn check_keks(&self) -> Result<KekStatus> {
        let pool = self.db.pool();
        let retired: Vec<String> = sqlx::query("SELECT kek FROM retired_keks")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| r.try_get("kek"))
            .collect::<Result<_, _>>()?;
        if retired.contains(&self.kek.id.to_string()) {
            return Err(KeyError::KekRetired(self.kek.id));
        }
        self.previous
            .write()
            .expect("the KEK list is not poisoned")
            .retain(|k| !retired.contains(&k.id.to_string()));
        let rows = sqlx::query("SELECT kek, COUNT(*) AS n FROM data_keys GROUP BY kek")
            .fetch_all(pool)
            .await?;
        let mut status = KekStatus {
            current: self.kek.id,
            under_current: 0,
            under_previous: Vec::new(),
            unrecorded: 0,
        };
        for row in rows {
            let n = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            match row.try_get::<Option<String>, _>("kek")? {
                None => status.unrecorded = n,
                Some(text) => {
                    let id: KekId = text.parse()?;
                    if id == self.kek.id {
                        status.under_current = n;
                    } else if self.kek_by_id(id).is_some() {
                        status.under_previous.push((id, n));
                    } else {
                        return Err(KeyError::KekNotHeld {
                            what: format!("{n} data key(s) are"),
                            kek: id,
                        });
                    }
                }
            }
        }
        if status.unrecorded > 0 {
            // They all date from before rotation existed, so one KEK
            // wrapped them all: one of them tells whether we hold it.
            let row = sqlx::query(
                "SELECT patient, key_id, nonce, wrapped FROM data_keys WHERE kek IS NULL LIMIT 1",
            )
            .fetch_one(pool)
            .await?;
            let patient = patient_ref(row.try_get("patient")?)?;
            let key_id = u32::try_from(row.try_get::<i64, _>("key_id")?).unwrap_or(0);
            self.unwrap_row(
                &patient,
                key_id,
                row.try_get("nonce")?,
                row.try_get("wrapped")?,
                None,
            )?;
        }
        Ok(status)
    }

    /// Re-wraps up to `batch` data keys not under the current KEK, in one
    /// transaction. Safe while seals, opens, erasures and other rewraps run:
    /// a row changed meanwhile is left to them, a row is only ever updated
    /// (never created), and stray keys of erased patients are deleted.
    pub async fn rewrap(&self, batch: usize) -> Result<Rewrapped> {
        let pool = self.db.pool();
        let current = self.kek.id.to_string();
        let stale = sqlx::query(
            "SELECT d.patient, d.key_id, d.nonce, d.wrapped, d.kek, \
             (SELECT COUNT(*) FROM erased_patients e WHERE e.patient = d.patient) AS erased \
             FROM data_keys d WHERE d.kek IS NULL OR d.kek < $1 OR d.kek > $1 LIMIT $2",
        )
        .bind(&current)
        .bind(i64::try_from(batch.max(1)).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StaleKey {
                patient: patient_ref(r.try_get("patient")?)?,
                key_id: u32::try_from(r.try_get::<i64, _>("key_id")?).unwrap_or(0),
                nonce: r.try_get("nonce")?,
                wrapped: r.try_get("wrapped")?,
                kek: r.try_get("kek")?,
                erased: r.try_get::<i64, _>("erased")? > 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        // Unwrap and wrap again before taking the write lock.
        let mut work = Vec::with_capacity(stale.len());
        for row in stale {
            let again = if row.erased {
                None
            } else {
                let dek = self.unwrap_row(
                    &row.patient,
                    row.key_id,
                    row.nonce,
                    row.wrapped.clone(),
                    row.kek.as_deref(),
                )?;
                Some(self.wrap(&row.patient, row.key_id, &dek))
            };
            work.push((row.patient, row.key_id, row.wrapped, again));
        }
        let mut done = Rewrapped::default();
        let mut tx = pool.begin().await?;
        for (patient, key_id, old, again) in work {
            match again {
                None => {
                    done.shredded +=
                        sqlx::query("DELETE FROM data_keys WHERE patient = $1 AND key_id = $2")
                            .bind(patient.to_vec())
                            .bind(i64::from(key_id))
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                }
                Some((nonce, wrapped)) => {
                    done.rewrapped += sqlx::query(
                        "UPDATE data_keys SET nonce = $1, wrapped = $2, kek = $3 \
                         WHERE patient = $4 AND key_id = $5 AND wrapped = $6",
                    )
                    .bind(nonce.to_vec())
                    .bind(wrapped)
                    .bind(&current)
                    .bind(patient.to_vec())
                    .bind(i64::from(key_id))
                    .bind(old)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
            }
        }
        tx.commit().await?;
        done.left = self.left().await?;
        Ok(done)
    }

    /// Re-wraps every data key not under the current KEK, `batch` per
    /// transaction, calling `progress` after each; then records the
    /// previous KEKs retired and stops using them. Resumable: run it again
    /// after an interruption.
    pub async fn rewrap_all(
        &self,
        batch: usize,
        mut progress: impl FnMut(&Rewrapped),
    ) -> Result<Rewrapped> {
        let mut total = Rewrapped {
            left: self.left().await?,
            ..Rewrapped::default()
        };
        while total.left > 0 {
            let step = self.rewrap(batch).await?;
            total.rewrapped += step.rewrapped;
            total.shredded += step.shredded;
            total.left = step.left;
            progress(&total);
        }
        total.retired = self.previous_keks();
        let mut tx = self.db.pool().begin().await?;
        for id in &total.retired {
            sqlx::query("DELETE FROM retired_keks WHERE kek = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO retired_keks (kek, retired_ms) VALUES ($1, $2)")
                .bind(id.to_string())
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.previous
            .write()
            .expect("the KEK list is not poisoned")
            .clear();
        Ok(total)
    }

    /// Data keys not under the current KEK.
    async fn left(&self) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM data_keys WHERE kek IS NULL OR kek < $1 OR kek > $1",
        )
        .bind(self.kek.id.to_string())
        .fetch_one(self.db.pool())
        .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0))
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
        let (nonce, wrapped) = self.wrap(patient, key_id, &dek);
        let inserted = sqlx::query(
            "INSERT INTO data_keys (patient, key_id, nonce, wrapped, created_ms, kek) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(patient.to_vec())
        .bind(i64::from(key_id))
        .bind(nonce.to_vec())
        .bind(wrapped)
        .bind(now_ms())
        .bind(self.kek.id.to_string())
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => Ok(key_id),
            // A concurrent writer created it first: use theirs.
            Err(_) if self.wrapped(patient, key_id).await?.is_some() => Ok(key_id),
            Err(e) => Err(e.into()),
        }
    }

    /// Data key `key_id` of the patient, wrapped with the current KEK:
    /// (nonce, wrapped).
    fn wrap(&self, patient: &PatientRef, key_id: u32, dek: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
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
        (nonce, wrapped)
    }

    /// A wrapped data key unwrapped with the KEK its row names (`kek`), or
    /// with whichever held KEK opens it when the row names none.
    fn unwrap_row(
        &self,
        patient: &PatientRef,
        key_id: u32,
        nonce: Vec<u8>,
        wrapped: Vec<u8>,
        kek: Option<&str>,
    ) -> Result<Vec<u8>> {
        let unwrap_err = || KeyError::Unwrap {
            patient: hex::encode(patient),
            key_id,
        };
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| unwrap_err())?;
        let candidates: Vec<Arc<Kek>> = match kek {
            Some(text) => {
                let id: KekId = text.parse().map_err(|_| unwrap_err())?;
                if id == self.kek.id {
                    Vec::new()
                } else {
                    vec![self.kek_by_id(id).ok_or_else(|| KeyError::KekNotHeld {
                        what: format!("data key {key_id} of patient {} is", hex::encode(patient)),
                        kek: id,
                    })?]
                }
            }
            None => self.held().clone(),
        };
        let current_first = kek.is_none() || candidates.is_empty();
        let keys = current_first
            .then_some(&self.kek)
            .into_iter()
            .chain(candidates.iter().map(|k| &**k));
        for k in keys {
            let mut body = wrapped.clone();
            if let Ok(dek) = k.key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_aad(patient, key_id)),
                &mut body,
            ) {
                return Ok(dek.to_vec());
            }
        }
        Err(unwrap_err())
    }

    async fn wrapped(
        &self,
        patient: &PatientRef,
        key_id: u32,
    ) -> Result<Option<(Vec<u8>, Vec<u8>, Option<String>)>> {
        let row = sqlx::query(
            "SELECT nonce, wrapped, kek FROM data_keys WHERE patient = $1 AND key_id = $2",
        )
        .bind(patient.to_vec())
        .bind(i64::from(key_id))
        .fetch_optional(self.db.pool())
        .await?;
        Ok(match row {
            Some(r) => Some((
                r.try_get("nonce")?,
                r.try_get("wrapped")?,
                r.try_get("kek")?,
            )),
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
        let (nonce, wrapped, kek) =
            self.wrapped(patient, key_id)
                .await?
                .ok_or_else(|| KeyError::NoKey {
                    patient: hex::encode(patient),
                    key_id,
                })?;
        let dek = self.unwrap_row(patient, key_id, nonce, wrapped, kek.as_deref())?;
        let key = UnboundKey::new(&AES_256_GCM, &dek).map_err(|_| KeyError::Unwrap {
            patient: hex::encode(patient),
            key_id,
        })?;
        Ok(std::sync::Arc::new(LessSafeKey::new(key)))
    }
}

/// A patientRef read from the database.
fn patient_ref(bytes: Vec<u8>) -> Result<PatientRef> {
    bytes.try_into().map_err(|b: Vec<u8>| {
        KeyError::Malformed(format!("a patientRef of {} bytes in data_keys", b.len()))
    })
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

//! The durable ledger: entries and checkpoints in SQL, trees in memory.
//!
//! Appends go in one transaction per batch and return after the commit,
//! so an index handed out is durable. A patient's tree is rebuilt from the
//! stored entries on first use and extended on every append.
//!
//! Several servers on one database: a ledger opened [`Ledger::with_writer`]
//! appends to a patient only while `ledger_leases` names it the holder,
//! and moves the ledger's size there in the same transaction (the fence):
//!
//! ```text
//!  UPDATE ledger_leases SET size = size + k
//!   WHERE patient = P AND holder = me RETURNING size
//!      no row   -> NotHeld: another server holds P (or took it over)
//!      size - k -> where the k entries go; entries another writer added
//!                  since this server's tree was built are read first
//! ```
//!
//! The row lock serialises writers across servers, so a patient's ledger
//! never has two writers at once, whatever the clocks say; taking leases
//! over is the server's business. Reads catch up with what other servers
//! appended before they answer.

use crate::bundle::{Bundle, BundleEntry};
use crate::checkpoint::{Checkpoint, CheckpointError, NoteSigner};
use crate::entry::{Entry, EntryError, Field};
use crate::key_history::{KeyHistory, KeyHistoryError};
use crate::merkle::{Hash, ProofError, Tree, leaf_hash, verify_consistency};
use medledger_protocol::now_ms;
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, SqlError, SqlValue, insert_many};
use std::collections::{BTreeMap, HashMap};

/// A patientRef.
pub type PatientRef = [u8; 32];

/// Why a ledger operation failed or a ledger does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// Entry `index` is not valid.
    #[error("entry {index}: {source}")]
    Entry {
        /// Which entry.
        index: u64,
        /// What is wrong with it.
        #[source]
        source: EntryError,
    },
    /// Entry `index` says it is another entry.
    #[error("entry {index}: it says it is entry {claims} of patient {patient}")]
    Misplaced {
        /// Where it is stored.
        index: u64,
        /// The index it states.
        claims: u64,
        /// The patient it states, hex.
        patient: String,
    },
    /// A checkpoint does not verify.
    #[error("checkpoint of size {size}: {source}")]
    Checkpoint {
        /// Its size, if known.
        size: u64,
        /// Why.
        #[source]
        source: CheckpointError,
    },
    /// The entries do not hash to the checkpoint's root.
    #[error("the {size} stored entries hash to {computed}, not the checkpoint's root {expected}")]
    RootMismatch {
        /// Entries covered.
        size: u64,
        /// Hex.
        computed: String,
        /// Hex.
        expected: String,
    },
    /// The ledger is not an extension of an earlier (anchored) checkpoint.
    #[error(
        "the ledger of size {new} is not an extension of the checkpoint of size {old}: {source}"
    )]
    NotConsistent {
        /// The earlier size.
        old: u64,
        /// The current size.
        new: u64,
        /// Why.
        #[source]
        source: ProofError,
    },
    /// Asked for something the ledger does not hold.
    #[error("{0}")]
    Missing(String),
    /// The patient was erased.
    #[error("patient {0}'s ledger was erased")]
    Erased(String),
    /// This writer does not hold the patient's lease (another server
    /// does, or took it over).
    #[error("this server does not hold the lease of patient {0}'s ledger")]
    NotHeld(String),
    /// The ledger key's history is broken, or does not end at the key.
    #[error("the ledger key history: {0}")]
    KeyHistory(#[from] KeyHistoryError),
    /// A rotation that would retire the key before a time it signed.
    #[error("{0}")]
    Rotation(String),
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> LedgerError {
        LedgerError::Sql(SqlError::Database(e))
    }
}

/// The result of ledger work.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// An entry to append: its kind, time and body.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// One of [`crate::entry::KINDS`].
    pub kind: &'static str,
    /// When, Unix ms.
    pub ts_ms: u64,
    /// What it says.
    pub body: BTreeMap<String, Field>,
}

/// Entries written in a caller's transaction, not yet in the trees.
#[must_use = "call `committed` after the transaction commits"]
pub struct Staged<'a> {
    trees: tokio::sync::MutexGuard<'a, HashMap<PatientRef, Tree>>,
    leaves: Vec<(PatientRef, Hash)>,
    indexes: Vec<Vec<u64>>,
}

impl std::fmt::Debug for Staged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("indexes", &self.indexes)
            .finish_non_exhaustive()
    }
}

impl Staged<'_> {
    /// Each group's indexes, as they will be.
    pub fn indexes(&self) -> &[Vec<u64>] {
        &self.indexes
    }

    /// The transaction committed: the entries join their trees. Returns
    /// each group's indexes.
    pub fn committed(mut self) -> Vec<Vec<u64>> {
        for (patient, leaf) in std::mem::take(&mut self.leaves) {
            self.trees
                .get_mut(&patient)
                .expect("loaded when staged")
                .push(leaf);
        }
        std::mem::take(&mut self.indexes)
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub size: u64,
    /// Their root.
    pub root: Hash,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Moves the patient's ledger size in `ledger_leases` by `added` if
/// `writer` holds its lease; returns the size before. The row stays
/// locked until the transaction ends.
async fn fence(
    tx: &mut sqlx::AnyConnection,
    writer: &str,
    patient: &PatientRef,
    added: u64,
) -> Result<u64> {
    let row = sqlx::query(
        "UPDATE ledger_leases SET size = size + $1 WHERE patient = $2 AND holder = $3 \
         RETURNING size",
    )
    .bind(to_i64(added))
    .bind(patient.to_vec())
    .bind(writer)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(LedgerError::NotHeld(hex::encode(patient)));
    };
    let size = u64::try_from(row.try_get::<i64, _>("size")?).unwrap_or(0);
    Ok(size.saturating_sub(added))
}

/// The per-patient ledgers of one server.
pub struct Ledger {
    db: Db,
    signer: NoteSigner,
    /// Every key that signed these ledgers; the signer's is the last.
    history: KeyHistory,
    /// Trees by patient; the lock also serialises appends.
    trees: tokio::sync::Mutex<HashMap<PatientRef, Tree>>,
    /// The lease holder this ledger appends as, on a database several
    /// servers share; `None`: the only writer.
    writer: Option<String>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// The ledgers in a migrated database whose ledger key was never
    /// rotated, signed with `signer`. A server uses [`Ledger::open`],
    /// which reads the key history.
    pub fn new(db: Db, signer: NoteSigner) -> Ledger {
        let history = KeyHistory::new(&signer.verifier_key()).expect("our own key parses");
        Ledger {
            db,
            signer,
            history,
            trees: tokio::sync::Mutex::new(HashMap::new()),
            writer: None,
        }
    }

    /// The ledgers in a migrated database, signed with `signer`, verified
    /// with the key history stored there (`ledger_key_rotations`), which
    /// must end at `signer`'s key: a retired key is refused.
    pub async fn open(db: Db, signer: NoteSigner) -> Result<Ledger> {
        let statements = Ledger::rotations(&db).await?;
        let history = KeyHistory::from_statements(&statements, &signer.verifier_key())?;
        Ok(Ledger {
            db,
            signer,
            history,
            trees: tokio::sync::Mutex::new(HashMap::new()),
            writer: None,
        })
    }

    /// The stored rotation statements, oldest first.
    async fn rotations(db: &Db) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT statement FROM ledger_key_rotations ORDER BY seq")
            .fetch_all(db.pool())
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("statement")?))
            .collect()
    }

    /// Retires the ledger key for `new` at `time_ms`: the rotation
    /// statement, signed by both keys, is durable in the database when
    /// this returns. Returns the ledgers signed with `new` and the
    /// statement. Refused if a stored checkpoint is dated at or after
    /// `time_ms` (it would no longer verify: the clock is behind).
    pub async fn rotate(self, new: NoteSigner, time_ms: u64) -> Result<(Ledger, String)> {
        for table in ["ledger_checkpoints", "ledger_anchors"] {
            let rows = sqlx::query(&format!("SELECT note FROM {table}"))
                .fetch_all(self.db.pool())
                .await?;
            for row in rows {
                let note: String = row.try_get("note")?;
                let time = note
                    .split("\n\n")
                    .next()
                    .into_iter()
                    .flat_map(|body| body.lines())
                    .find_map(|l| l.strip_prefix("time ")?.parse::<u64>().ok());
                if let Some(time) = time
                    && time >= time_ms
                {
                    return Err(LedgerError::Rotation(format!(
                        "a stored checkpoint is dated {time}, not before the rotation time {time_ms}: \
                         is the clock behind?"
                    )));
                }
            }
        }
        let mut history = self.history.clone();
        let statement = history.rotate(&self.signer, &new, time_ms)?;
        let seq = history.statements().len();
        sqlx::query(
            "INSERT INTO ledger_key_rotations (seq, statement, hash, new_key, created_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(to_i64(seq as u64))
        .bind(statement.as_str())
        .bind(medledger_protocol::reading_hash(statement.as_bytes()).to_vec())
        .bind(new.verifier_key())
        .bind(to_i64(time_ms))
        .execute(self.db.pool())
        .await?;
        Ok((
            Ledger {
                db: self.db,
                signer: new,
                history,
                trees: self.trees,
                writer: self.writer,
            },
            statement,
        ))
    }

    /// These ledgers on a database other servers share: appends only to
    /// patients whose lease `holder` holds (see the module's doc), reads
    /// catch up with the others' appends.
    pub fn with_writer(mut self, holder: impl Into<String>) -> Ledger {
        self.writer = Some(holder.into());
        self
    }

    /// Every key that signed these ledgers, and when.
    pub fn history(&self) -> &KeyHistory {
        &self.history
    }

    /// The checkpoint origin of a patient's ledger.
    pub fn origin(patient: &PatientRef) -> String {
        format!("medledger/patient/{}", hex::encode(patient))
    }

    /// The current key, which signs new entries and checkpoints (older
    /// ones may be signed by the retired keys of [`Ledger::history`]).
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// Appends entries for a patient in one transaction; returns their
    /// indexes once they are durable.
    pub async fn append(&self, patient: &PatientRef, entries: Vec<NewEntry>) -> Result<Vec<u64>> {
        let mut indexes = self.append_many(vec![(*patient, entries)]).await?;
        Ok(indexes.pop().unwrap_or_default())
    }

    /// Appends entries for several patients in one transaction; returns
    /// each group's indexes, in order, once all are durable. Nothing is
    /// written if any patient was erased.
    pub async fn append_many(
        &self,
        groups: Vec<(PatientRef, Vec<NewEntry>)>,
    ) -> Result<Vec<Vec<u64>>> {
        let mut tx = self.db.pool().begin().await?;
        let staged = self.stage(&mut tx, groups).await?;
        tx.commit().await?;
        Ok(staged.committed())
    }

    /// Writes entries for several patients inside the caller's transaction
    /// on this ledger's database, so that other rows commit with them.
    /// After the caller commits, [`Staged::committed`] makes them part of
    /// the trees; dropping the [`Staged`] instead (the transaction rolled
    /// back) leaves the ledgers as they were. Other ledger calls wait
    /// until then.
    pub async fn stage(
        &self,
        tx: &mut sqlx::AnyConnection,
        groups: Vec<(PatientRef, Vec<NewEntry>)>,
    ) -> Result<Staged<'_>> {
        let mut trees = self.trees.lock().await;
        // Sizes as they will be after the earlier groups of this batch.
        let mut next: HashMap<PatientRef, u64> = HashMap::new();
        if let Some(writer) = &self.writer {
            let mut added: BTreeMap<PatientRef, u64> = BTreeMap::new();
            for (patient, group) in &groups {
                *added.entry(*patient).or_default() += group.len() as u64;
            }
            // In patient order, so that two writers never wait on each other.
            for (patient, k) in added {
                let start = fence(tx, writer, &patient, k).await?;
                self.tree_of_size(&mut trees, &patient, start).await?;
                next.insert(patient, start);
            }
        }
        let mut entries = Vec::new();
        let mut indexes = Vec::with_capacity(groups.len());
        for (patient, group) in groups {
            let start = match next.get(&patient) {
                Some(n) => *n,
                None => self.tree_in(&mut trees, &patient).await?.size(),
            };
            next.insert(patient, start + group.len() as u64);
            indexes.push((start..start + group.len() as u64).collect());
            entries.extend(group.into_iter().enumerate().map(|(i, e)| Entry {
                patient,
                index: start + i as u64,
                ts_ms: e.ts_ms,
                kind: e.kind.to_owned(),
                body: e.body,
            }));
        }
        let stored: Vec<Vec<u8>> = entries.iter().map(Entry::encode).collect();
        let rows: Vec<Vec<SqlValue>> = entries
            .iter()
            .zip(&stored)
            .map(|(entry, stored)| {
                vec![
                    SqlValue::Bytes(entry.patient.to_vec()),
                    SqlValue::Int(to_i64(entry.index)),
                    SqlValue::Bytes(stored.clone()),
                ]
            })
            .collect();
        insert_many(
            tx,
            "ledger_entries",
            &["patient", "idx", "entry"],
            "",
            &rows,
        )
        .await?;
        let leaves = entries
            .iter()
            .zip(&stored)
            .map(|(e, stored)| (e.patient, leaf_hash(stored)))
            .collect();
        Ok(Staged {
            trees,
            leaves,
            indexes,
        })
    }

    /// Signs and stores a checkpoint of the patient's ledger as it is now;
    /// returns the signed note (what gets anchored on chain).
    pub async fn checkpoint(&self, patient: &PatientRef) -> Result<String> {
        let (note, size) = {
            let mut trees = self.trees.lock().await;
            let tree = self.synced(&mut trees, patient).await?;
            (self.sign_checkpoint(patient, tree), tree.size())
        };
        // One statement: two checkpoints of the same size (the anchor task
        // and a proof asked for at once) must not race; the later note wins,
        // and both are valid signatures of the same tree.
        sqlx::query(
            "INSERT INTO ledger_checkpoints (patient, size, note) VALUES ($1, $2, $3) \
             ON CONFLICT (patient, size) DO UPDATE SET note = excluded.note",
        )
        .bind(patient.to_vec())
        .bind(to_i64(size))
        .bind(note.as_str())
        .execute(self.db.pool())
        .await?;
        Ok(note)
    }

    /// A checkpoint of the patient's ledger as it is now, signed but not
    /// stored, with the inclusion proof of each entry in `indexes`: what a
    /// reader needs to check those entries.
    pub async fn proofs(
        &self,
        patient: &PatientRef,
        indexes: &[u64],
    ) -> Result<(String, Vec<Vec<Hash>>)> {
        let mut trees = self.trees.lock().await;
        let tree = self.synced(&mut trees, patient).await?;
        let size = tree.size();
        let proofs = indexes
            .iter()
            .map(|i| {
                tree.inclusion(*i, size)
                    .map_err(|e| LedgerError::Missing(format!("no inclusion proof: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok((self.sign_checkpoint(patient, tree), proofs))
    }

    fn sign_checkpoint(&self, patient: &PatientRef, tree: &Tree) -> String {
        let size = tree.size();
        self.signer.sign(&Checkpoint {
            origin: Ledger::origin(patient),
            size,
            root: tree.root(size).expect("the tree holds its own size"),
            extensions: vec![format!("time {}", now_ms())],
        })
    }

    /// The newest stored checkpoint of the patient, if any.
    pub async fn latest_checkpoint(&self, patient: &PatientRef) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT note FROM ledger_checkpoints WHERE patient = $1 ORDER BY size DESC LIMIT 1",
        )
        .bind(patient.to_vec())
        .fetch_optional(self.db.pool())
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("note")?),
            None => None,
        })
    }

    /// The stored entries of a patient, in order.
    pub async fn entries(&self, patient: &PatientRef) -> Result<Vec<Vec<u8>>> {
        let rows = sqlx::query("SELECT entry FROM ledger_entries WHERE patient = $1 ORDER BY idx")
            .bind(patient.to_vec())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<Vec<u8>, _>("entry")?))
            .collect()
    }

    /// One stored entry of a patient, if there is one at `index`.
    pub async fn entry(&self, patient: &PatientRef, index: u64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT entry FROM ledger_entries WHERE patient = $1 AND idx = $2")
            .bind(patient.to_vec())
            .bind(to_i64(index))
            .fetch_optional(self.db.pool())
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("entry")?),
            None => None,
        })
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn inclusion(
        &self,
        patient: &PatientRef,
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>> {
        let mut trees = self.trees.lock().await;
        let tree = self.synced(&mut trees, patient).await?;
        tree.inclusion(index, size)
            .map_err(|e| LedgerError::Missing(format!("no inclusion proof: {e}")))
    }

    /// The consistency proof from size `old` to size `new`.
    pub async fn consistency(&self, patient: &PatientRef, old: u64, new: u64) -> Result<Vec<Hash>> {
        let mut trees = self.trees.lock().await;
        let tree = self.synced(&mut trees, patient).await?;
        tree.consistency(old, new)
            .map_err(|e| LedgerError::Missing(format!("no consistency proof: {e}")))
    }

    /// Verifies the patient's stored ledger from scratch: every entry's
    /// signature and place, the newest checkpoint's signature, that the
    /// entries it covers hash to its root, and, given earlier (anchored)
    /// checkpoints, that the ledger extends each of them.
    pub async fn verify(&self, patient: &PatientRef, anchored: &[String]) -> Result<Verified> {
        let stored = self.entries(patient).await?;
        let mut tree = Tree::new();
        for (i, bytes) in stored.iter().enumerate() {
            let index = i as u64;
            let entry = self
                .history
                .open_entry(bytes)
                .map_err(|source| LedgerError::Entry { index, source })?;
            if entry.index != index || entry.patient != *patient {
                return Err(LedgerError::Misplaced {
                    index,
                    claims: entry.index,
                    patient: hex::encode(entry.patient),
                });
            }
            tree.push(leaf_hash(bytes));
        }
        let size = tree.size();
        let root = tree.root(size).expect("the tree holds its own size");
        if let Some(note) = self.latest_checkpoint(patient).await? {
            let cp = self.checkpoint_of(patient, &note)?;
            let covered = tree.root(cp.size).ok_or_else(|| {
                LedgerError::Missing(format!(
                    "the checkpoint covers {} entries, {size} are stored",
                    cp.size
                ))
            })?;
            if covered != cp.root {
                return Err(LedgerError::RootMismatch {
                    size: cp.size,
                    computed: hex::encode(covered),
                    expected: hex::encode(cp.root),
                });
            }
        }
        for note in anchored {
            let cp = self.checkpoint_of(patient, note)?;
            if cp.size > size {
                return Err(LedgerError::Missing(format!(
                    "an anchored checkpoint covers {} entries, {size} are stored",
                    cp.size
                )));
            }
            if cp.size == 0 {
                continue;
            }
            let proof = tree.consistency(cp.size, size).unwrap_or_default();
            verify_consistency(cp.size, size, &cp.root, &root, &proof).map_err(|source| {
                LedgerError::NotConsistent {
                    old: cp.size,
                    new: size,
                    source,
                }
            })?;
        }
        Ok(Verified { size, root })
    }

    /// Exports the patient's ledger as a self-contained proof bundle
    /// against a fresh checkpoint.
    /// An erased patient's bundle holds only the tombstone checkpoint.
    pub async fn export(&self, patient: &PatientRef) -> Result<Bundle> {
        if self.is_erased(patient).await? {
            let tombstone = self
                .latest_checkpoint(patient)
                .await?
                .expect("an erased ledger has its tombstone");
            return Ok(Bundle::new(
                hex::encode(patient),
                self.verifier_key(),
                self.history.statements().to_vec(),
                tombstone,
                Vec::new(),
            ));
        }
        let note = self.checkpoint(patient).await?;
        let cp = self.checkpoint_of(patient, &note)?;
        let stored = self.entries(patient).await?;
        let mut entries = Vec::with_capacity(stored.len());
        for (i, bytes) in stored.into_iter().enumerate() {
            let proof = self.inclusion(patient, i as u64, cp.size).await?;
            entries.push(BundleEntry::new(i as u64, &bytes, &proof));
        }
        Ok(Bundle::new(
            hex::encode(patient),
            self.verifier_key(),
            self.history.statements().to_vec(),
            note,
            entries,
        ))
    }

    /// Erases the patient's ledger: the entries go; a tombstone checkpoint
    /// (the last size and root, marked `erased`) stays, so the anchored
    /// history still makes sense. Erasing again returns the same tombstone.
    pub async fn erase(&self, patient: &PatientRef) -> Result<String> {
        let mut trees = self.trees.lock().await;
        if self.is_erased(patient).await? {
            return Ok(self
                .latest_checkpoint(patient)
                .await?
                .expect("an erased ledger has its tombstone"));
        }
        let tree = self.synced(&mut trees, patient).await?;
        let size = tree.size();
        let root = tree.root(size).expect("the tree holds its own size");
        let now = now_ms();
        let note = self.signer.sign(&Checkpoint {
            origin: Ledger::origin(patient),
            size,
            root,
            extensions: vec![format!("time {now}"), format!("erased {now}")],
        });
        let mut tx = self.db.pool().begin().await?;
        if let Some(writer) = &self.writer
            && fence(&mut tx, writer, patient, 0).await? != size
        {
            return Err(LedgerError::NotHeld(hex::encode(patient)));
        }
        sqlx::query("DELETE FROM ledger_entries WHERE patient = $1")
            .bind(patient.to_vec())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM ledger_checkpoints WHERE patient = $1")
            .bind(patient.to_vec())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO ledger_checkpoints (patient, size, note) VALUES ($1, $2, $3)")
            .bind(patient.to_vec())
            .bind(to_i64(size))
            .bind(note.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        trees.remove(patient);
        Ok(note)
    }

    /// Whether the patient's ledger was erased (its newest checkpoint is a
    /// tombstone).
    pub async fn is_erased(&self, patient: &PatientRef) -> Result<bool> {
        Ok(match self.latest_checkpoint(patient).await? {
            Some(note) => self
                .checkpoint_of(patient, &note)?
                .extensions
                .iter()
                .any(|l| l.starts_with("erased ")),
            None => false,
        })
    }

    fn checkpoint_of(&self, patient: &PatientRef, note: &str) -> Result<Checkpoint> {
        let size = note
            .lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let cp = self
            .history
            .verify_checkpoint(note)
            .map_err(|source| LedgerError::Checkpoint { size, source })?;
        if cp.origin != Ledger::origin(patient) {
            return Err(LedgerError::Checkpoint {
                size,
                source: CheckpointError::Malformed(format!(
                    "origin {:?} is another log's",
                    cp.origin
                )),
            });
        }
        Ok(cp)
    }

    /// The patient's tree with every entry stored, also those other
    /// servers appended since it was built (on a shared database).
    async fn synced<'a>(
        &self,
        trees: &'a mut HashMap<PatientRef, Tree>,
        patient: &PatientRef,
    ) -> Result<&'a mut Tree> {
        let cached = trees.contains_key(patient);
        let tree = self.tree_in(trees, patient).await?;
        if cached && self.writer.is_some() {
            self.extend(tree, patient, None).await?;
        }
        Ok(tree)
    }

    /// The patient's tree, which must hold `size` entries: those another
    /// writer appended since it was built are read.
    async fn tree_of_size(
        &self,
        trees: &mut HashMap<PatientRef, Tree>,
        patient: &PatientRef,
        size: u64,
    ) -> Result<()> {
        let tree = self.tree_in(trees, patient).await?;
        if tree.size() < size {
            self.extend(tree, patient, Some(size)).await?;
        }
        let held = tree.size();
        if held != size {
            // Rebuilt at the next use.
            trees.remove(patient);
            return Err(LedgerError::Missing(format!(
                "patient {}'s lease counts {size} entries, {held} are stored",
                hex::encode(patient)
            )));
        }
        Ok(())
    }

    /// Appends to `tree` the stored entries after it (up to `until`).
    async fn extend(
        &self,
        tree: &mut Tree,
        patient: &PatientRef,
        until: Option<u64>,
    ) -> Result<()> {
        let rows = sqlx::query(
            "SELECT entry FROM ledger_entries WHERE patient = $1 AND idx >= $2 AND idx < $3 \
             ORDER BY idx",
        )
        .bind(patient.to_vec())
        .bind(to_i64(tree.size()))
        .bind(to_i64(until.unwrap_or(u64::MAX)))
        .fetch_all(self.db.pool())
        .await?;
        for row in rows {
            tree.push(leaf_hash(&row.try_get::<Vec<u8>, _>("entry")?));
        }
        Ok(())
    }

    async fn tree_in<'a>(
        &self,
        trees: &'a mut HashMap<PatientRef, Tree>,
        patient: &PatientRef,
    ) -> Result<&'a mut Tree> {
        if !trees.contains_key(patient) {
            // Checked once per load: `erase` drops the tree.
            if self.is_erased(patient).await? {
                return Err(LedgerError::Erased(hex::encode(patient)));
            }
            let stored = self.entries(patient).await?;
            trees.insert(
                *patient,
                Tree::from_leaf_hashes(stored.iter().map(|e| leaf_hash(e))),
            );
        }
        Ok(trees.get_mut(patient).expect("inserted above"))
    }
}

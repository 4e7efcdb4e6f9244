//! Committing a forwarded batch. The collector is not trusted: every
//! reading is verified again as if it came straight from the device, and
//! every patient's readings must carry that patient's card signature.
//!
//! Per reading, in order: already stored (a retry: `duplicate`); the
//! device certificate (chain, validity, CRL, role); the COSE signature and
//! `dev`; the Registry binding (registered, active, this certificate, the
//! patient the collector named); a valid card signature of that patient
//! covering it; the rules; the sequence number. Then, for what passed:
//! one sealed blob per patient, `DataRecorded` entries, the reading index,
//! the sequence marks and the batch root, in one SQL transaction.
//!
//! A reading is verified once per trust boundary: where the collector runs
//! in the server's own process ([`Source::SameProcess`]), it has verified
//! certificates, signatures, cards and rules, and the server only parses,
//! binds, sequences and stores.

use crate::State;
use crate::alerts::NewAlert;
use alloy::primitives::B256;
use medledger_contracts::rule_inputs;
use medledger_patient_ledger::{Field, NewEntry, Tree, leaf_hash};
use medledger_pki::{ClientAuth, Identity};
use medledger_protocol::cbor::{self, Value};
use medledger_protocol::{
    CommitReply, CommitResult, CommitStatus, ForwardBatch, ProblemType, Reading, SignedReading,
    card_digest, now_ms, reading_hash,
};
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Cid, SqlValue, insert_many, placeholders};
use rustls::pki_types::UnixTime;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Rule inputs per `RuleManager.check` call.
const RULE_CHUNK: usize = 512;

/// Why a whole batch could not be committed now (the collector retries).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub(crate) String);

/// Where a batch comes from, and so what the server verifies again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A collector over mutual TLS: not trusted (a sinkhole could forge
    /// or alter readings), so every check is made again.
    Peer,
    /// The collector in this very process, which verified every device
    /// certificate, signature, card and rule before its durable commit:
    /// no trust boundary lies between, so nothing is verified twice.
    SameProcess,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn rejected(hash: &[u8; 32], kind: ProblemType, detail: impl Into<String>) -> CommitResult {
    CommitResult {
        hash: hex::encode(hash),
        status: CommitStatus::Rejected,
        index: None,
        problem: Some(kind.name().to_owned()),
        detail: Some(detail.into()),
    }
}

/// The alerts of the readings the collector refused: each only if the
/// device really signed it and is bound to the patient named.
async fn refused_alerts(
    state: &State,
    batch: &ForwardBatch,
    source: Source,
) -> Result<Vec<NewAlert>, Unavailable> {
    let at = UnixTime::now();
    let mut checked = Vec::new();
    for r in &batch.refused {
        let Ok(identity) = device_identity(&state.device_auth, batch, r.cert, at, source) else {
            continue;
        };
        let Ok(reading) = reading_of(&r.cose, &identity, source) else {
            continue;
        };
        if identity.epc().map(|e| e.as_bytes()) == Some(&reading.dev.0) {
            checked.push((r, reading.dev.0, identity.fingerprint, reading.ts_ms));
        }
    }
    if checked.is_empty() {
        return Ok(Vec::new());
    }
    let epcs: Vec<[u8; 12]> = checked.iter().map(|(_, dev, _, _)| *dev).collect();
    let bindings = state
        .view
        .bindings(&epcs)
        .await
        .map_err(|e| Unavailable(format!("the chain cannot be asked: {e}")))?;
    Ok(checked
        .into_iter()
        .filter(|(r, dev, fingerprint, ts_ms)| {
            bindings.get(dev).is_some_and(|b| {
                b.signed_by_registered(fingerprint, *ts_ms)
                    && b.patient == Some(B256::from(r.patient))
            })
        })
        .map(|(r, _, _, _)| {
            let hash = reading_hash(&r.cose);
            NewAlert {
                actor: String::new(),
                patient: r.patient,
                kind: "reading-rejected",
                source: format!("reading:{}", hex::encode(hash)),
                flagged: true,
                why: format!(
                    "a reading from one of your devices was refused by the collector: {}",
                    r.detail
                ),
                body: serde_json::json!({
                    "reading": hex::encode(hash),
                    "problem": r.problem,
                    "detail": r.detail,
                }),
            }
        })
        .collect())
}

/// The alert of a refused reading whose device and patient are known.
fn reading_alert(batch: &ForwardBatch, hashes: &[[u8; 32]], i: usize, detail: &str) -> NewAlert {
    NewAlert {
        actor: String::new(),
        patient: batch.readings[i].patient,
        kind: "reading-rejected",
        source: format!("reading:{}", hex::encode(hashes[i])),
        flagged: true,
        why: format!("a reading from one of your devices was refused: {detail}"),
        body: serde_json::json!({ "reading": hex::encode(hashes[i]), "detail": detail }),
    }
}

/// A reading that passed so far.
struct Verified {
    reading: Reading,
    identity: Arc<Identity>,
}

/// Times the stages of a commit into `medledger_server_stage_seconds`.
struct Stages<'a> {
    state: &'a State,
    at: std::time::Instant,
}

impl<'a> Stages<'a> {
    fn new(state: &'a State) -> Stages<'a> {
        Stages {
            state,
            at: std::time::Instant::now(),
        }
    }

    fn lap(&mut self, stage: &str) {
        let now = std::time::Instant::now();
        self.state.metrics.observe(
            "medledger_server_stage_seconds",
            "Time per stage of committing a forwarded batch.",
            &[("stage", stage)],
            now - self.at,
        );
        self.at = now;
    }
}

/// A reading's device check: verified, refused, or not checked (`None`).
type Checked = Option<Result<Verified, (ProblemType, String)>>;

/// Batches at least this large are verified on all cores.
const PARALLEL_CHECKS: usize = 32;

/// The identity of a batch's certificate `cert`: verified (chain,
/// validity, CRL, role) from a peer, parsed only from the same process.
fn device_identity(
    auth: &ClientAuth,
    batch: &ForwardBatch,
    cert: u32,
    at: UnixTime,
    source: Source,
) -> Result<Identity, (ProblemType, String)> {
    let der = batch.certs.get(cert as usize).ok_or_else(|| {
        (
            ProblemType::Malformed,
            format!("no certificate {cert} in the batch"),
        )
    })?;
    match source {
        Source::Peer => auth
            .verify_certificate(der, &batch.cas, at)
            .map_err(|e| (e.problem_type(), format!("device certificate: {e}"))),
        Source::SameProcess => Identity::from_peer_certificate(der).map_err(|e| {
            (
                ProblemType::UntrustedCertificate,
                format!("device certificate: {e}"),
            )
        }),
    }
}

/// A signed reading's payload: its signature checked from a peer, only
/// parsed from the same process.
fn reading_of(
    cose: &[u8],
    identity: &Identity,
    source: Source,
) -> Result<Reading, medledger_protocol::ReadingError> {
    let signed = SignedReading::decode(cose)?;
    match source {
        Source::Peer => signed.verify(&identity.key),
        Source::SameProcess => signed.reading_unverified(),
    }
}

/// Checks each reading not in `skip` against its device certificate:
/// chain and CRL (once per certificate), COSE signature and `dev`.
fn check_devices(
    auth: &ClientAuth,
    batch: &ForwardBatch,
    skip: &[bool],
    source: Source,
) -> Vec<Checked> {
    let at = UnixTime::now();
    let mut identities: HashMap<u32, Result<Arc<Identity>, (ProblemType, String)>> = HashMap::new();
    for (f, skipped) in batch.readings.iter().zip(skip) {
        if !skipped {
            identities
                .entry(f.cert)
                .or_insert_with(|| device_identity(auth, batch, f.cert, at, source).map(Arc::new));
        }
    }
    let check = |i: usize| -> Checked {
        if skip[i] {
            return None;
        }
        let f = &batch.readings[i];
        let identity = match &identities[&f.cert] {
            Ok(id) => id.clone(),
            Err(e) => return Some(Err(e.clone())),
        };
        let reading = match reading_of(&f.cose, &identity, source) {
            Ok(r) => r,
            Err(e) => return Some(Err((e.problem_type(), e.to_string()))),
        };
        if identity.epc().map(|e| e.as_bytes()) != Some(&reading.dev.0) {
            return Some(Err((
                ProblemType::UnknownDevice,
                "the reading names another device than its certificate".into(),
            )));
        }
        Some(Ok(Verified { reading, identity }))
    };
    let n = batch.readings.len();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    if n < PARALLEL_CHECKS || threads < 2 {
        return (0..n).map(check).collect();
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let check = &check;
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                scope.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(check)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("checking does not panic"))
            .collect()
    })
}

/// Commits a batch from `source`; one result per reading, in order.
pub(crate) async fn commit(
    state: &State,
    batch: ForwardBatch,
    source: Source,
) -> Result<CommitReply, Unavailable> {
    let _one_at_a_time = state.ingest_lock.lock().await;
    let n = batch.readings.len();
    let hashes: Vec<[u8; 32]> = batch
        .readings
        .iter()
        .map(|r| reading_hash(&r.cose))
        .collect();
    let mut results: Vec<Option<CommitResult>> = vec![None; n];

    // Retries: stored before.
    for (i, index) in known(state, &hashes).await? {
        results[i] = Some(CommitResult {
            hash: hex::encode(hashes[i]),
            status: CommitStatus::Duplicate,
            index: Some(index),
            problem: None,
            detail: None,
        });
    }

    let mut clock = Stages::new(state);
    let mut alerts: Vec<NewAlert> = Vec::new();
    // Certificates and signatures, on every core.
    let skip: Vec<bool> = results.iter().map(Option::is_some).collect();
    let auth = state.device_auth.clone();
    let (batch, checked) = tokio::task::spawn_blocking(move || {
        let checked = check_devices(&auth, &batch, &skip, source);
        (batch, checked)
    })
    .await
    .map_err(|e| Unavailable(format!("verifying the readings: {e}")))?;
    let mut verified: Vec<Option<Verified>> = Vec::with_capacity(n);
    for (i, checked) in checked.into_iter().enumerate() {
        verified.push(match checked {
            Some(Ok(v)) => Some(v),
            Some(Err((kind, detail))) => {
                results[i] = Some(rejected(&hashes[i], kind, detail));
                None
            }
            None => None,
        });
    }

    clock.lap("verify");
    // Registry bindings.
    let epcs: Vec<[u8; 12]> = verified.iter().flatten().map(|v| v.reading.dev.0).collect();
    let bindings = state
        .view
        .bindings(&epcs)
        .await
        .map_err(|e| Unavailable(format!("the chain cannot be asked: {e}")))?;
    for i in 0..n {
        let Some(v) = &verified[i] else { continue };
        let b = bindings.get(&v.reading.dev.0);
        let problem = match b {
            None => Some((
                ProblemType::UnknownDevice,
                "the device is not registered".to_owned(),
            )),
            Some(b) if !b.registered => Some((
                ProblemType::UnknownDevice,
                "the device is not registered".to_owned(),
            )),
            Some(b) if !b.active => Some((
                ProblemType::UnknownDevice,
                "the device is deactivated".to_owned(),
            )),
            Some(b) if !b.signed_by_registered(&v.identity.fingerprint, v.reading.ts_ms) => Some((
                ProblemType::UnknownDevice,
                "the certificate is not the one registered for the device (or was retired before the reading)".to_owned(),
            )),
            Some(b) if b.patient != Some(B256::from(batch.readings[i].patient)) => Some((
                ProblemType::NotAdmitted,
                "the device does not report for the patient the collector named".to_owned(),
            )),
            Some(_) => None,
        };
        if let Some((kind, detail)) = problem {
            results[i] = Some(rejected(&hashes[i], kind, detail));
            verified[i] = None;
        }
    }

    // An erased (forgotten) patient takes no new readings.
    let mut erased: HashMap<[u8; 32], bool> = HashMap::new();
    for i in 0..n {
        if verified[i].is_none() {
            continue;
        }
        let patient = batch.readings[i].patient;
        let gone = match erased.get(&patient) {
            Some(gone) => *gone,
            None => {
                let gone = state
                    .vault
                    .is_erased(&patient)
                    .await
                    .map_err(|e| Unavailable(format!("the key store: {e}")))?;
                erased.insert(patient, gone);
                gone
            }
        };
        if gone {
            results[i] = Some(rejected(
                &hashes[i],
                ProblemType::NotAdmitted,
                "the patient was erased (forgotten)".to_owned(),
            ));
            verified[i] = None;
        }
    }
    clock.lap("bindings");
    // Card signatures: each reading covered by one valid signature of its
    // patient's card (made by the collector itself when in this process).
    let mut covered = vec![source == Source::SameProcess; n];
    let at = UnixTime::now();
    for card in batch.cards.iter().filter(|_| source == Source::Peer) {
        let account = card.readings.iter().find_map(|&r| {
            verified[r as usize]
                .as_ref()
                .and_then(|v| bindings.get(&v.reading.dev.0))
                .and_then(|b| b.account)
        });
        let valid = account.is_some_and(|account| {
            card.readings
                .iter()
                .all(|&r| batch.readings[r as usize].patient == card.patient)
                && state
                    .card_auth
                    .verify_certificate(&batch.certs[card.cert as usize], &batch.cas, at)
                    .ok()
                    .filter(|id| id.address() == Some(account))
                    .is_some_and(|id| {
                        let digest = card_digest(
                            &card.patient,
                            card.readings.iter().map(|&r| &hashes[r as usize]),
                        );
                        SignedReading::decode(&card.sig)
                            .ok()
                            .and_then(|s| s.verify_payload(&id.key).ok().map(|p| p == digest))
                            .unwrap_or(false)
                    })
        });
        if valid {
            for &r in &card.readings {
                covered[r as usize] = true;
            }
        }
    }
    for i in 0..n {
        if verified[i].is_some() && !covered[i] {
            results[i] = Some(rejected(
                &hashes[i],
                ProblemType::Forbidden,
                "no valid signature of the patient's card covers the reading",
            ));
            verified[i] = None;
        }
    }

    clock.lap("cards");
    // Rules (checked by the collector when in this process).
    let mut inputs = Vec::new();
    let mut owners = Vec::new();
    for (i, v) in verified
        .iter()
        .enumerate()
        .filter(|_| source == Source::Peer)
    {
        if let Some(v) = v {
            for input in rule_inputs(&v.reading) {
                inputs.push(input);
                owners.push(i);
            }
        }
    }
    let mut reasons = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(RULE_CHUNK) {
        let (r, _version) = state
            .view
            .contracts()
            .check_readings(chunk.to_vec())
            .await
            .map_err(|e| Unavailable(format!("the rule contracts cannot be asked: {e}")))?;
        reasons.extend(r);
    }
    for (i, reason) in owners.into_iter().zip(reasons) {
        if verified[i].is_some() && !reason.is_allow() {
            let (kind, detail) = reason.refusal();
            alerts.push(reading_alert(&batch, &hashes, i, &detail));
            results[i] = Some(rejected(&hashes[i], kind, detail));
            verified[i] = None;
        }
    }

    clock.lap("rules");
    // Sequence numbers against the server's own marks.
    let mut marks: HashMap<[u8; 12], Option<u64>> = HashMap::new();
    for i in 0..n {
        let Some(v) = &verified[i] else { continue };
        let dev = v.reading.dev.0;
        let mark = match marks.get(&dev) {
            Some(m) => *m,
            None => {
                let m = load_mark(state, &dev).await?;
                marks.insert(dev, m);
                m
            }
        };
        match mark {
            Some(m) if v.reading.seq <= m => {
                let detail = format!(
                    "sequence {} is not above {m}, the device's last stored",
                    v.reading.seq
                );
                alerts.push(reading_alert(&batch, &hashes, i, &detail));
                results[i] = Some(rejected(&hashes[i], ProblemType::Replay, detail));
                verified[i] = None;
                continue;
            }
            Some(m) if v.reading.seq > m + 1 => {
                state.metrics.add(
                    "medledger_server_sequence_gaps_total",
                    "Readings that arrived after a gap in their device's sequence.",
                    &[],
                    1,
                );
                eprintln!(
                    "medledger server: device {} skipped from sequence {m} to {}",
                    hex::encode(dev),
                    v.reading.seq
                );
                alerts.push(NewAlert {
                    actor: String::new(),
                    patient: batch.readings[i].patient,
                    kind: "sequence-gap",
                    source: format!("gap:{}:{}", hex::encode(dev), v.reading.seq),
                    flagged: true,
                    why: format!(
                        "readings {}..{} of device {} never arrived",
                        m + 1,
                        v.reading.seq - 1,
                        hex::encode(dev)
                    ),
                    body: serde_json::json!({
                        "device": hex::encode(dev),
                        "from": m + 1,
                        "to": v.reading.seq - 1,
                    }),
                });
            }
            _ => {}
        }
        marks.insert(dev, Some(v.reading.seq));
    }

    let stored = store(state, &batch, &hashes, &verified, &marks, &mut clock).await?;
    for (i, index) in stored {
        results[i] = Some(CommitResult {
            hash: hex::encode(hashes[i]),
            status: CommitStatus::Stored,
            index: Some(index),
            problem: None,
            detail: None,
        });
    }
    for r in results.iter().flatten() {
        let (status, cause) = match r.status {
            CommitStatus::Stored => ("stored", ""),
            CommitStatus::Duplicate => ("duplicate", ""),
            CommitStatus::Rejected => ("rejected", r.problem.as_deref().unwrap_or("")),
        };
        state.metrics.add(
            "medledger_server_readings_total",
            "Forwarded readings by outcome and cause.",
            &[("outcome", status), ("cause", cause)],
            1,
        );
    }
    alerts.extend(refused_alerts(state, &batch, source).await?);
    // Alerts only for readings whose device is bound to the patient named
    // (checked above), so a forged batch cannot alert arbitrary patients.
    if let Err(e) = state.alerts.raise(alerts, None).await {
        eprintln!("medledger server: raising ingest alerts: {e}");
    }
    state.committed.notify_one();
    Ok(CommitReply {
        results: results
            .into_iter()
            .map(|r| r.expect("every reading has a result"))
            .collect(),
    })
}

/// The readings of `hashes` stored before: (position, ledger index).
async fn known(state: &State, hashes: &[[u8; 32]]) -> Result<Vec<(usize, u64)>, Unavailable> {
    let mut found = Vec::new();
    let position: HashMap<&[u8; 32], usize> =
        hashes.iter().enumerate().map(|(i, h)| (h, i)).collect();
    for chunk in hashes.chunks(256) {
        let sql = format!(
            "SELECT hash, idx FROM ingest_readings WHERE hash IN ({})",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for h in chunk {
            query = query.bind(h.to_vec());
        }
        let rows = query.fetch_all(state.db.pool()).await.map_err(db_down)?;
        for row in rows {
            let hash: Vec<u8> = row.try_get("hash").map_err(db_down)?;
            let idx: i64 = row.try_get("idx").map_err(db_down)?;
            if let Some(&i) = hash
                .as_slice()
                .try_into()
                .ok()
                .and_then(|h: [u8; 32]| position.get(&h))
            {
                found.push((i, u64::try_from(idx).unwrap_or(0)));
            }
        }
    }
    Ok(found)
}

fn db_down(e: sqlx::Error) -> Unavailable {
    Unavailable(format!("the database failed: {e}"))
}

async fn load_mark(state: &State, dev: &[u8; 12]) -> Result<Option<u64>, Unavailable> {
    let row = sqlx::query("SELECT seq FROM ingest_device_seq WHERE epc = $1")
        .bind(dev.to_vec())
        .fetch_optional(state.db.pool())
        .await
        .map_err(db_down)?;
    Ok(match row {
        Some(r) => Some(u64::try_from(r.try_get::<i64, _>("seq").map_err(db_down)?).unwrap_or(0)),
        None => None,
    })
}

/// Seals one blob per patient, then writes the ledger entries, reading
/// index, marks and batch root in one transaction. Returns (position,
/// ledger index) of every stored reading.
async fn store(
    state: &State,
    batch: &ForwardBatch,
    hashes: &[[u8; 32]],
    verified: &[Option<Verified>],
    marks: &HashMap<[u8; 12], Option<u64>>,
    clock: &mut Stages<'_>,
) -> Result<Vec<(usize, u64)>, Unavailable> {
    clock.lap("sequence");
    // Readings per patient, in batch order.
    let mut by_patient: BTreeMap<[u8; 32], Vec<usize>> = BTreeMap::new();
    for (i, v) in verified.iter().enumerate() {
        if v.is_some() {
            by_patient
                .entry(batch.readings[i].patient)
                .or_default()
                .push(i);
        }
    }
    if by_patient.is_empty() {
        return Ok(Vec::new());
    }
    let mut sealed = Vec::with_capacity(by_patient.len());
    let mut digests = Vec::with_capacity(by_patient.len());
    for (patient, members) in &by_patient {
        let plaintext = cbor::encode_with(|e| {
            e.array(members.len());
            for &i in members {
                e.bytes(&batch.readings[i].cose);
            }
        });
        digests.push(reading_hash(&plaintext));
        match state.vault.seal(patient, &plaintext).await {
            Ok(s) => sealed.push(s),
            Err(e) => {
                return Err(storage_failure(state, &by_patient, format!("sealing: {e}")).await);
            }
        }
    }
    let cids = match state.blobs.put_many(&sealed).await {
        Ok(cids) => cids,
        Err(e) => {
            return Err(storage_failure(state, &by_patient, format!("storing blobs: {e}")).await);
        }
    };

    // The batch root over the stored readings, in batch order.
    let order: Vec<usize> = (0..verified.len())
        .filter(|&i| verified[i].is_some())
        .collect();
    let mut tree = Tree::new();
    for &i in &order {
        tree.push(leaf_hash(&hashes[i]));
    }
    let root = tree.root(tree.size()).expect("the tree holds its own size");
    let batch_pos: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();

    let now = now_ms();
    let groups: Vec<([u8; 32], Vec<NewEntry>)> = by_patient
        .iter()
        .zip(&cids)
        .map(|((patient, members), cid)| {
            let entries = members
                .iter()
                .enumerate()
                .map(|(pos, &i)| {
                    let r = &verified[i]
                        .as_ref()
                        .expect("stored readings verified")
                        .reading;
                    NewEntry {
                        kind: "DataRecorded",
                        ts_ms: now,
                        body: BTreeMap::from([
                            ("reading".to_owned(), Field::Bytes(hashes[i].to_vec())),
                            ("blob".to_owned(), Field::Text(cid.to_string())),
                            ("pos".to_owned(), Field::Uint(pos as u64)),
                            ("device".to_owned(), Field::Bytes(r.dev.0.to_vec())),
                            ("seq".to_owned(), Field::Uint(r.seq)),
                            ("measured".to_owned(), Field::Uint(r.ts_ms)),
                            ("batch".to_owned(), Field::Bytes(root.to_vec())),
                        ]),
                    }
                })
                .collect();
            (*patient, entries)
        })
        .collect();

    clock.lap("blobs");
    let mut tx = state.db.pool().begin().await.map_err(db_down)?;
    let staged = match state.ledger.stage(&mut tx, groups).await {
        Ok(staged) => staged,
        Err(e) => {
            return Err(storage_failure(state, &by_patient, format!("the ledger: {e}")).await);
        }
    };
    let mut stored = Vec::new();
    let mut rows = Vec::new();
    for ((((patient, members), cid), digest), indexes) in by_patient
        .iter()
        .zip(&cids)
        .zip(&digests)
        .zip(staged.indexes())
    {
        for ((pos, &i), &index) in members.iter().enumerate().zip(indexes) {
            let r = &verified[i]
                .as_ref()
                .expect("stored readings verified")
                .reading;
            rows.push(vec![
                SqlValue::Bytes(hashes[i].to_vec()),
                SqlValue::Bytes(patient.to_vec()),
                SqlValue::Int(to_i64(index)),
                SqlValue::Text(cid.to_string()),
                SqlValue::Bytes(digest.to_vec()),
                SqlValue::Int(to_i64(pos as u64)),
                SqlValue::Bytes(r.dev.0.to_vec()),
                SqlValue::Int(to_i64(r.seq)),
                SqlValue::Int(to_i64(r.ts_ms)),
                SqlValue::Bytes(root.to_vec()),
                SqlValue::Int(to_i64(batch_pos[&i] as u64)),
            ]);
            stored.push((i, index));
        }
    }
    insert_many(
        &mut tx,
        "ingest_readings",
        &[
            "hash",
            "patient",
            "idx",
            "blob",
            "blob_sha256",
            "pos",
            "epc",
            "seq",
            "ts_ms",
            "batch",
            "batch_pos",
        ],
        "",
        &rows,
    )
    .await
    .map_err(db_down)?;
    let marks: Vec<Vec<SqlValue>> = marks
        .iter()
        .filter_map(|(dev, seq)| {
            seq.map(|seq| vec![SqlValue::Bytes(dev.to_vec()), SqlValue::Int(to_i64(seq))])
        })
        .collect();
    insert_many(
        &mut tx,
        "ingest_device_seq",
        &["epc", "seq"],
        "ON CONFLICT (epc) DO UPDATE SET seq = excluded.seq",
        &marks,
    )
    .await
    .map_err(db_down)?;
    sqlx::query(
        "INSERT INTO ingest_batches (root, count, first, last, created_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(root.to_vec())
    .bind(to_i64(order.len() as u64))
    .bind(hashes[order[0]].to_vec())
    .bind(hashes[order[order.len() - 1]].to_vec())
    .bind(to_i64(now))
    .execute(&mut *tx)
    .await
    .map_err(db_down)?;
    tx.commit().await.map_err(db_down)?;
    clock.lap("ledger");
    drop(staged.committed());
    for r in verified.iter().flatten() {
        state.portal.saw(
            format!("device:{}", hex::encode(r.reading.dev.0)),
            r.reading.ts_ms,
        );
    }
    Ok(stored)
}

/// Counts and logs a storage failure and alerts the patients whose
/// readings it holds up (at most once an hour each while it lasts); the
/// collector keeps the readings and sends them again.
async fn storage_failure(
    state: &State,
    patients: &BTreeMap<[u8; 32], Vec<usize>>,
    detail: String,
) -> Unavailable {
    state.metrics.add(
        "medledger_server_storage_failures_total",
        "Batches that could not be stored (the collector retries them).",
        &[],
        1,
    );
    eprintln!("medledger server: storage failure: {detail}");
    let hour = now_ms() / 3_600_000;
    let alerts = patients
        .keys()
        .map(|patient| NewAlert {
            actor: String::new(),
            patient: *patient,
            kind: "storage-failure",
            source: format!("storage:{}:{hour}", hex::encode(patient)),
            flagged: true,
            why: "new readings could not be stored yet; they are kept and sent again".into(),
            body: serde_json::json!({ "detail": detail }),
        })
        .collect();
    if let Err(e) = state.alerts.raise(alerts, None).await {
        eprintln!("medledger server: raising storage-failure alerts: {e}");
    }
    Unavailable(format!("storage failure: {detail}"))
}

/// A stored reading's COSE bytes, from its sealed blob.
pub(crate) async fn load_reading(
    state: &State,
    hash: &[u8; 32],
) -> Result<Option<Vec<u8>>, String> {
    let row =
        sqlx::query("SELECT patient, blob, blob_sha256, pos FROM ingest_readings WHERE hash = $1")
            .bind(hash.to_vec())
            .fetch_optional(state.db.pool())
            .await
            .map_err(|e| e.to_string())?;
    let Some(row) = row else { return Ok(None) };
    let get = |e: sqlx::Error| e.to_string();
    let patient: Vec<u8> = row.try_get("patient").map_err(get)?;
    let blob: String = row.try_get("blob").map_err(get)?;
    let digest: Vec<u8> = row.try_get("blob_sha256").map_err(get)?;
    let pos: i64 = row.try_get("pos").map_err(get)?;
    let patient: [u8; 32] = patient
        .as_slice()
        .try_into()
        .map_err(|_| "bad patientRef")?;
    let digest: [u8; 32] = digest
        .as_slice()
        .try_into()
        .map_err(|_| "bad blob digest")?;
    let items = open_blob(state, &patient, &blob, &digest).await?;
    reading_at(&items, &blob, pos, hash).map(Some)
}

/// The readings (COSE bytes) in a patient's sealed blob, decrypted.
pub(crate) async fn open_blob(
    state: &State,
    patient: &[u8; 32],
    blob: &str,
    digest: &[u8; 32],
) -> Result<Vec<Value>, String> {
    let cid: Cid = blob.parse().map_err(|e| format!("{e}"))?;
    let sealed = state.blobs.get(&cid).await.map_err(|e| e.to_string())?;
    let plaintext = state
        .vault
        .open(patient, digest, &sealed)
        .await
        .map_err(|e| e.to_string())?;
    match cbor::decode(&plaintext) {
        Ok(Value::Array(items)) => Ok(items),
        _ => Err(format!("blob {cid} is not an array of readings")),
    }
}

/// The reading at `pos` of an opened blob, which must hash to `hash`.
pub(crate) fn reading_at(
    items: &[Value],
    blob: &str,
    pos: i64,
    hash: &[u8; 32],
) -> Result<Vec<u8>, String> {
    let Some(Value::Bytes(cose)) = usize::try_from(pos).ok().and_then(|p| items.get(p)) else {
        return Err(format!("blob {blob} has no reading at {pos}"));
    };
    if reading_hash(cose) != *hash {
        return Err(format!("blob {blob} position {pos} holds another reading"));
    }
    Ok(cose.clone())
}

/// How many of `hashes` are stored in an anchored batch.
pub(crate) async fn anchored_count(state: &State, hashes: &[[u8; 32]]) -> Result<usize, String> {
    let mut n = 0;
    for chunk in hashes.chunks(256) {
        let sql = format!(
            "SELECT COUNT(*) AS n FROM ingest_readings r JOIN ingest_batches b ON r.batch = b.root \
             WHERE b.anchor_id IS NOT NULL AND r.hash IN ({})",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for h in chunk {
            query = query.bind(h.to_vec());
        }
        let row = query
            .fetch_one(state.db.pool())
            .await
            .map_err(|e| e.to_string())?;
        n += usize::try_from(row.try_get::<i64, _>("n").map_err(|e| e.to_string())?).unwrap_or(0);
    }
    Ok(n)
}

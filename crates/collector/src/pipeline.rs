//! The batch stage: every reading that passed the per-request checks
//! (certificate, signature, timestamp) waits here for one batch decision
//! against the chain and one durable outbox commit.
//!
//! Requests that arrive while a batch is being decided form the next
//! batch, so the chain calls and the fsync are shared by all of them
//! (group commit). Order of checks per reading: Registry binding (device
//! registered and active, certificate as registered, admitted patient),
//! the patient's card here, the rule contracts, then the sequence number.

//! The batch stage: every reading that passed the per-request checks
//! (certificate, signature, timestamp) waits here for one batch decision
//! against the chain and one durable outbox commit.
//!
//! Requests that arrive while a batch is being decided form the next
//! batch, so the chain calls and the fsync are shared by all of them
//! (group commit). The checks are [`medledger_checks`]' stages, with the
//! patient's card in between: Registry binding (device registered and
//! active, certificate as registered, admitted patient), the patient's
//! card here, the rule contracts, then the sequence number.

use crate::{InProcessServer, State, outage};
use alloy::primitives::B256;
use medledger_checks::{Item, Marks, NewMarks, Refusal, Signed, Verdict, epc_name};
use medledger_contracts::RuleReason;
use medledger_protocol::{
    CardSignature, ForwardBatch, Forwarded, ProblemType, Refused, card_digest, now_ms,
};
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, SqlError, SqlValue, insert_many};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most readings decided in one batch.
pub(crate) const MAX_BATCH: usize = 2048;

/// The certificate a device presented (DER) and its SHA-256.
#[derive(Debug, Default)]
pub(crate) struct Presented {
    pub(crate) der: Vec<u8>,
    pub(crate) fingerprint: [u8; 32],
}

/// A reading of a device, on its way through the checks.
pub(crate) type Candidate = Item<Arc<Presented>>;

/// What the server said of an accepted reading: its ledger index, or why
/// it refused it.
pub(crate) type Committed = Result<u64, Refusal>;

/// One request's readings (those the per-request checks refused too, to
/// keep their order) and where to send them back decided.
pub(crate) struct Submission {
    pub(crate) items: Vec<Candidate>,
    pub(crate) reply: oneshot::Sender<Vec<Candidate>>,
}

/// The first batch number not used yet.
pub(crate) async fn next_batch(db: &Db) -> Result<i64, SqlError> {
    // Dead letters keep their numbers, for a retry to put them back.
    let row = sqlx::query(
        "SELECT COALESCE(MAX(b), 0) AS b FROM (SELECT MAX(batch) AS b FROM collector_outbox \
         UNION ALL SELECT MAX(batch) AS b FROM collector_dead_outbox) numbers",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(row.try_get::<i64, _>("b").map_err(SqlError::Database)? + 1)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A decided batch on its way to being committed.
struct Decided {
    subs: Vec<Submission>,
    /// Readings per submission, in order.
    sizes: Vec<usize>,
    items: Vec<Candidate>,
    marks: NewMarks,
    batch: i64,
    /// The pipeline's epoch when it was decided (see [`commit_in_order`]).
    epoch: u64,
    started: Instant,
}

/// Decides batches until the endpoint goes away; a committer commits them
/// in order meanwhile, so that the next batch is decided while one is
/// written (two in flight at most).
pub(crate) async fn run(
    state: Arc<State>,
    mut submissions: mpsc::Receiver<Submission>,
    mut batch: i64,
) {
    let (decided, to_commit) = mpsc::channel(1);
    let committer = tokio::spawn(commit_in_order(state.clone(), to_commit));
    // The highest accepted sequence per device, as far as loaded, with the
    // batches decided but not yet committed; only this collector writes
    // its table.
    let mut marks = Marks::new("collector_device_seq");
    let mut epoch = state.epoch.load(Ordering::SeqCst);
    while let Some(first) = submissions.recv().await {
        let mut queued = first.items.len();
        let mut subs = vec![first];
        while queued < MAX_BATCH {
            match submissions.try_recv() {
                Ok(sub) => {
                    queued += sub.items.len();
                    subs.push(sub);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let sizes: Vec<usize> = subs.iter().map(|s| s.items.len()).collect();
        let mut items: Vec<Candidate> = subs
            .iter_mut()
            .flat_map(|s| std::mem::take(&mut s.items))
            .collect();
        // A batch failed to commit: the marks of those after it are void.
        let now = state.epoch.load(Ordering::SeqCst);
        if now != epoch {
            marks.forget();
            epoch = now;
        }
        let new_marks = match decide(&state, &mut marks, &mut items).await {
            Ok(()) => marks.advance(),
            Err(detail) => {
                refuse_open(&mut items, &detail);
                NewMarks::default()
            }
        };
        let next = Decided {
            subs,
            sizes,
            items,
            marks: new_marks,
            batch,
            epoch,
            started,
        };
        batch += 1;
        if decided.send(next).await.is_err() {
            break;
        }
    }
    drop(decided);
    let _ = committer.await;
}

/// Refuses every reading still in: the outbox could not be read or
/// written (`detail`, for the log). The device is told to send again.
fn refuse_open(items: &mut [Candidate], detail: &str) {
    tracing::warn!("medledger collector: {detail}");
    for item in items.iter_mut().filter(|i| i.passing().is_some()) {
        item.refuse(Refusal::new(
            ProblemType::StorageUnavailable,
            "the collector cannot store readings now (its storage is full or failing); send them again later",
        ));
    }
}

/// Commits decided batches in order and answers their requests. A batch
/// that cannot be committed moves the pipeline to a new epoch: the
/// batches decided after it (against its marks) are refused too, and the
/// marks are read again, so that the devices' retries are not taken for
/// replays.
async fn commit_in_order(state: Arc<State>, mut to_commit: mpsc::Receiver<Decided>) {
    while let Some(Decided {
        subs,
        sizes,
        mut items,
        marks,
        batch,
        epoch,
        started,
    }) = to_commit.recv().await
    {
        let committed = if epoch != state.epoch.load(Ordering::SeqCst) {
            Err("an earlier batch could not be committed; send again".to_owned())
        } else {
            commit_decided(&state, &mut items, &marks, batch).await
        };
        if let Err(detail) = committed {
            state.epoch.fetch_add(1, Ordering::SeqCst);
            refuse_open(&mut items, &detail);
        }
        state.metrics.observe(
            "medledger_collector_batch_seconds",
            "Time to decide and durably commit one batch of readings.",
            &[],
            started.elapsed(),
        );
        for item in &items {
            let (outcome, cause) = match &item.verdict {
                Verdict::Refused(r) => ("rejected", r.kind.name()),
                _ => ("accepted", ""),
            };
            state.metrics.add(
                "medledger_collector_readings_total",
                "Readings by outcome and cause.",
                &[("outcome", outcome), ("cause", cause)],
                1,
            );
        }
        if items.iter().any(|i| i.passing().is_some()) {
            state.outbox_changed.notify_one();
        }
        let mut items = items.into_iter();
        for (sub, n) in subs.into_iter().zip(sizes) {
            let _ = sub.reply.send(items.by_ref().take(n).collect());
        }
    }
}

/// Decides one batch: the Registry binding, the patient's card here, the
/// rules, the sequence numbers. On an error (the chain or the outbox
/// cannot be asked), nothing is decided.
async fn decide(state: &State, marks: &mut Marks, items: &mut [Candidate]) -> Result<(), String> {
    bind(state, items).await;
    for item in items.iter_mut() {
        let Some(bound) = item.passing_for() else {
            continue;
        };
        if state.cards.get(&bound.account).is_none() {
            let epc = item.passing().map(|p| epc_name(&p.reading.dev.0));
            item.refuse(Refusal::new(
                ProblemType::Unavailable,
                format!(
                    "this collector holds no card for the patient of device {}",
                    epc.unwrap_or_default()
                ),
            ));
        }
    }
    rules(state, items).await;
    marks
        .sequence(&state.db, items)
        .await
        .map_err(|e| format!("the outbox cannot be read: {e}"))?;
    Ok(())
}

/// Binds the readings to their patients through the Registry, or, while
/// the chain cannot be asked, from what it last said; a reading of a
/// device it has not answered for lately is refused `unavailable`.
async fn bind(state: &State, items: &mut [Candidate]) {
    let epcs = medledger_checks::devices(items);
    if epcs.is_empty() {
        return;
    }
    let bindings = match state.view.bindings(&epcs).await {
        Ok(bindings) => {
            state.last_known.saw_bindings(&bindings);
            state
                .chain_outage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .worked();
            bindings
        }
        Err(e) => {
            let known = state.last_known.bindings(&epcs);
            chain_down(state, items, &e, |dev| known.contains_key(dev));
            known
        }
    };
    medledger_checks::bind_from(&bindings, items, Signed::Now, |_| None);
}

/// Asks the rule contracts about the readings still in, or, while the
/// chain cannot be asked, decides from their last answers.
async fn rules(state: &State, items: &mut [Candidate]) {
    let questions = medledger_checks::RuleQuestions::of(items);
    if questions.inputs.is_empty() {
        return;
    }
    let reasons = match medledger_checks::ask_rules(&state.view, &questions.inputs).await {
        Ok((reasons, version)) => {
            state
                .last_known
                .saw_verdicts(&questions.inputs, &reasons, version);
            reasons
        }
        Err(e) => {
            let judged = state.last_known.verdicts(&questions.inputs);
            let decided: HashSet<[u8; 12]> = questions
                .inputs
                .iter()
                .zip(&judged)
                .filter(|(_, j)| j.is_some())
                .map(|(input, _)| input.epc.0)
                .collect();
            chain_down(state, items, &e, |dev| decided.contains(dev));
            for (_, basis) in judged.iter().flatten() {
                let basis = match basis {
                    outage::Basis::Known => "known",
                    outage::Basis::Provisional => "provisional",
                };
                state.metrics.add(
                    "medledger_collector_outage_verdicts_total",
                    "Rule verdicts taken while the chain could not be asked: from its last answers (known), or left to the server (provisional).",
                    &[("basis", basis)],
                    1,
                );
            }
            judged
                .into_iter()
                .map(|j| j.map_or(RuleReason::Allow, |(reason, _)| reason))
                .collect()
        }
    };
    questions.answer(items, &reasons);
}

/// The chain cannot be asked: logs it (rate-limited) and refuses
/// `unavailable` each reading of a device `known` says nothing of.
fn chain_down(
    state: &State,
    items: &mut [Candidate],
    error: &dyn std::fmt::Display,
    known: impl Fn(&[u8; 12]) -> bool,
) {
    state
        .chain_outage
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .failed(&format_args!("{error}; deciding from its last answers"));
    for item in items.iter_mut() {
        let Some(dev) = item.passing().map(|p| p.reading.dev.0) else {
            continue;
        };
        if !known(&dev) {
            item.refuse(Refusal::new(
                ProblemType::Unavailable,
                format!(
                    "the chain cannot be asked, and it has not answered for device {} lately",
                    epc_name(&dev)
                ),
            ));
        }
    }
}

/// Commits a decided batch: to the server in this process where it runs
/// here and nothing waits in the outbox, to the outbox otherwise.
async fn commit_decided(
    state: &State,
    items: &mut [Candidate],
    marks: &NewMarks,
    batch: i64,
) -> Result<(), String> {
    let cards = sign_cards(state, items);
    let refused = {
        let outgoing = Outgoing::of(items, cards);
        if outgoing.is_empty() {
            return Ok(());
        }
        let handed = match &state.in_process {
            Some(server) => hand_over(state, server.as_ref(), &outgoing, marks)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!("medledger collector: {e}; the batch goes to the outbox");
                    None
                }),
            None => None,
        };
        match handed {
            Some(refused) => refused,
            None => {
                commit(state, &outgoing, marks, batch)
                    .await
                    .map_err(|e| format!("the outbox write failed: {e}"))?;
                HashMap::new()
            }
        }
    };
    // The readings the server in this process refused are refused to
    // their devices.
    for item in items.iter_mut() {
        if let Some(refusal) = refused.get(&item.hash) {
            item.refuse(refusal.clone());
        }
    }
    Ok(())
}

/// Per patient with accepted readings: the card's certificate and its
/// signature over their hashes, in batch order. A card that cannot sign
/// now (a token removed or failing) has its patient's readings refused
/// `unavailable`, so that their devices send them again.
fn sign_cards(state: &State, items: &mut [Candidate]) -> Vec<(B256, Vec<u8>, Vec<u8>)> {
    let mut by_patient: BTreeMap<B256, (alloy::primitives::Address, Vec<[u8; 32]>)> =
        BTreeMap::new();
    for item in items.iter() {
        if let Some(bound) = item.passing_for() {
            by_patient
                .entry(bound.patient)
                .or_insert_with(|| (bound.account, Vec::new()))
                .1
                .push(item.hash);
        }
    }
    let mut cards = Vec::new();
    for (patient, (account, hashes)) in by_patient {
        let card = state
            .cards
            .get(&account)
            .expect("readings without a card were refused");
        match card.sign(&card_digest(&patient.0, &hashes)) {
            Ok(sig) => cards.push((patient, card.certificate().to_vec(), sig)),
            Err(e) => {
                tracing::warn!(
                    "medledger collector: the card of patient account {account} cannot sign: {e}"
                );
                for item in items
                    .iter_mut()
                    .filter(|i| i.passing_for().is_some_and(|b| b.patient == patient))
                {
                    item.refuse(Refusal::new(
                        ProblemType::Unavailable,
                        "the patient's card cannot sign now; send the reading again later",
                    ));
                }
            }
        }
    }
    cards
}

/// Readings of a bound device refused for what they say (rules) or when
/// (replay): reported to the server, which alerts the patient.
fn reported(item: &Candidate) -> Option<(&Refusal, B256)> {
    match (&item.verdict, item.bound) {
        (Verdict::Refused(r), Some(bound))
            if matches!(r.kind, ProblemType::RuleViolation | ProblemType::Replay) =>
        {
            Some((r, bound.patient))
        }
        _ => None,
    }
}

/// What a decided batch sends on.
struct Outgoing<'a> {
    /// The accepted readings, in batch order, with their patients.
    accepted: Vec<(&'a Candidate, B256)>,
    /// The refusals reported for the patients' alerts.
    reported: Vec<(&'a Candidate, &'a Refusal, B256)>,
    /// Per patient: the card's certificate and its signature over the
    /// patient's accepted readings, in batch order.
    cards: Vec<(B256, Vec<u8>, Vec<u8>)>,
}

impl<'a> Outgoing<'a> {
    /// The accepted and reported readings of `items`, with the cards'
    /// signatures over them.
    fn of(items: &'a [Candidate], cards: Vec<(B256, Vec<u8>, Vec<u8>)>) -> Outgoing<'a> {
        let accepted = items
            .iter()
            .filter_map(|i| Some((i, i.passing_for()?.patient)))
            .collect();
        let reported = items
            .iter()
            .filter_map(|i| reported(i).map(|(r, patient)| (i, r, patient)))
            .collect();
        Outgoing {
            accepted,
            reported,
            cards,
        }
    }

    fn is_empty(&self) -> bool {
        self.accepted.is_empty() && self.reported.is_empty()
    }

    /// As a forward batch, for the server in this process.
    fn to_batch(&self, state: &State) -> ForwardBatch {
        let mut batch = ForwardBatch {
            cas: state.cas.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            ..ForwardBatch::default()
        };
        let mut certs: HashMap<[u8; 32], u32> = HashMap::new();
        let mut cert = |fingerprint: [u8; 32], der: &[u8], batch: &mut ForwardBatch| -> u32 {
            *certs.entry(fingerprint).or_insert_with(|| {
                batch.certs.push(der.to_vec());
                (batch.certs.len() - 1) as u32
            })
        };
        let received = now_ms();
        let mut positions: HashMap<B256, Vec<u32>> = HashMap::new();
        for (i, (item, patient)) in self.accepted.iter().enumerate() {
            let c = cert(item.data.fingerprint, &item.data.der, &mut batch);
            positions.entry(*patient).or_default().push(i as u32);
            batch.readings.push(Forwarded {
                cose: item.cose.clone(),
                cert: c,
                patient: patient.0,
                received_ms: received,
            });
        }
        for (patient, der, sig) in &self.cards {
            let c = cert(medledger_protocol::kid_of(der), der, &mut batch);
            batch.cards.push(CardSignature {
                patient: patient.0,
                cert: c,
                readings: positions.remove(patient).unwrap_or_default(),
                sig: sig.clone(),
            });
        }
        for (item, refusal, patient) in &self.reported {
            let c = cert(item.data.fingerprint, &item.data.der, &mut batch);
            batch.refused.push(Refused {
                cose: item.cose.clone(),
                cert: c,
                patient: patient.0,
                problem: refusal.kind,
                detail: refusal.detail.clone(),
            });
        }
        batch
    }
}

/// Hands a decided batch to the server in this process, where nothing
/// waits in the outbox (which keeps each device's readings in order):
/// stored there durably, so that the outbox is skipped. Returns the
/// readings the server refused, or `None` when the outbox holds readings
/// (the batch goes after them). An error leaves the batch to the outbox.
async fn hand_over(
    state: &State,
    server: &dyn InProcessServer,
    outgoing: &Outgoing<'_>,
    marks: &NewMarks,
) -> Result<Option<HashMap<[u8; 32], Refusal>>, String> {
    let waiting: i64 = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM collector_outbox LIMIT 1) o) \
         + (SELECT COUNT(*) FROM (SELECT 1 FROM collector_refused LIMIT 1) r) AS n",
    )
    .fetch_one(state.db.pool())
    .await
    .and_then(|row| row.try_get("n"))
    .map_err(|e| format!("the outbox cannot be read: {e}"))?;
    if waiting > 0 {
        return Ok(None);
    }
    let hashes: Vec<[u8; 32]> = outgoing.accepted.iter().map(|(i, _)| i.hash).collect();
    let reply = match server.commit(outgoing.to_batch(state)).await {
        Ok(reply) if reply.results.len() == hashes.len() => reply,
        Ok(reply) => {
            return Err(format!(
                "the server in this process answered for {} of {} readings",
                reply.results.len(),
                hashes.len()
            ));
        }
        Err(e) => return Err(format!("the server in this process: {e}")),
    };
    // The marks: a replay after a restart is refused here too.
    let mut tx = state.db.pool().begin().await.map_err(|e| e.to_string())?;
    marks.write(&mut tx).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(Some(crate::forward::answered(state, &hashes, &reply)))
}

/// Writes the accepted readings, their certificates, the card signatures,
/// the reported refusals and the new sequence marks to the outbox in one
/// transaction.
async fn commit(
    state: &State,
    outgoing: &Outgoing<'_>,
    marks: &NewMarks,
    batch: i64,
) -> Result<(), sqlx::Error> {
    let Outgoing {
        accepted,
        reported,
        cards,
    } = outgoing;
    let received = to_i64(now_ms());
    let mut tx = state.db.pool().begin().await?;
    let mut certs: Vec<(&[u8; 32], &[u8])> = accepted
        .iter()
        .map(|(i, _)| *i)
        .chain(reported.iter().map(|(i, ..)| *i))
        .map(|i| (&i.data.fingerprint, i.data.der.as_slice()))
        .collect();
    certs.sort_unstable();
    certs.dedup_by_key(|(fp, _)| **fp);
    let card_fps: Vec<[u8; 32]> = cards
        .iter()
        .map(|(_, cert, _)| medledger_protocol::kid_of(cert))
        .collect();
    for (fp, der) in certs.into_iter().chain(
        card_fps
            .iter()
            .zip(cards.iter().map(|(_, c, _)| c.as_slice())),
    ) {
        sqlx::query(
            "INSERT INTO collector_certs (fingerprint, der) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(fp.to_vec())
        .bind(der)
        .execute(&mut *tx)
        .await?;
    }
    let rows: Vec<Vec<SqlValue>> = accepted
        .iter()
        .enumerate()
        .map(|(pos, (item, patient))| {
            vec![
                SqlValue::Bytes(item.hash.to_vec()),
                SqlValue::Int(batch),
                SqlValue::Int(to_i64(pos as u64)),
                SqlValue::Bytes(patient.to_vec()),
                SqlValue::Bytes(item.data.fingerprint.to_vec()),
                SqlValue::Bytes(item.cose.clone()),
                SqlValue::Int(received),
            ]
        })
        .collect();
    insert_many(
        &mut tx,
        "collector_outbox",
        &[
            "hash",
            "batch",
            "pos",
            "patient",
            "device_cert",
            "cose",
            "received_ms",
        ],
        "",
        &rows,
    )
    .await?;
    for ((patient, _, sig), fp) in cards.iter().zip(&card_fps) {
        sqlx::query(
            "INSERT INTO collector_outbox_cards (batch, patient, card_cert, sig) VALUES ($1, $2, $3, $4)",
        )
        .bind(batch)
        .bind(patient.to_vec())
        .bind(fp.to_vec())
        .bind(sig.as_slice())
        .execute(&mut *tx)
        .await?;
    }
    let reported_rows: Vec<Vec<SqlValue>> = reported
        .iter()
        .map(|(item, refusal, patient)| {
            vec![
                SqlValue::Bytes(item.hash.to_vec()),
                SqlValue::Bytes(patient.to_vec()),
                SqlValue::Bytes(item.data.fingerprint.to_vec()),
                SqlValue::Bytes(item.cose.clone()),
                SqlValue::Text(refusal.kind.name().to_owned()),
                SqlValue::Text(refusal.detail.clone()),
                SqlValue::Int(received),
            ]
        })
        .collect();
    insert_many(
        &mut tx,
        "collector_refused",
        &[
            "hash",
            "patient",
            "device_cert",
            "cose",
            "problem",
            "detail",
            "at_ms",
        ],
        "ON CONFLICT DO NOTHING",
        &reported_rows,
    )
    .await?;
    marks.write(&mut tx).await?;
    tx.commit().await
}

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

use crate::State;
use alloy::primitives::B256;
use medledger_checks::{Item, Marks, Refusal, Signed, Verdict, epc_name};
use medledger_protocol::{ProblemType, card_digest, now_ms};
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, SqlError, SqlValue, insert_many};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most readings decided in one batch.
pub(crate) const MAX_BATCH: usize = 2048;

/// The certificate a device presented (DER) and its SHA-256.
#[derive(Debug)]
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
    let row = sqlx::query("SELECT COALESCE(MAX(batch), 0) AS b FROM collector_outbox")
        .fetch_one(db.pool())
        .await?;
    Ok(row.try_get::<i64, _>("b").map_err(SqlError::Database)? + 1)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Decides batches until the endpoint goes away.
pub(crate) async fn run(
    state: Arc<State>,
    mut submissions: mpsc::Receiver<Submission>,
    mut batch: i64,
) {
    // The highest accepted sequence per device, as far as loaded; only
    // this collector writes its table.
    let mut marks = Marks::new("collector_device_seq");
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
        if let Err(detail) = decide(&state, &mut marks, &mut items, batch).await {
            eprintln!("medledger collector: {detail}");
            for item in items.iter_mut().filter(|i| i.passing().is_some()) {
                item.refuse(Refusal::new(ProblemType::Unavailable, detail.clone()));
            }
        }
        batch += 1;
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

/// Decides one batch and commits the accepted readings; on an error
/// (the chain or the outbox failed), nothing is committed.
async fn decide(
    state: &State,
    marks: &mut Marks,
    items: &mut [Candidate],
    batch: i64,
) -> Result<(), String> {
    medledger_checks::bind(&state.view, items, Signed::Now, |_| None)
        .await
        .map_err(|e| format!("the chain cannot be asked: {e}"))?;
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
    medledger_checks::rules(&state.view, items)
        .await
        .map_err(|e| format!("the rule contracts cannot be asked: {e}"))?;
    marks
        .sequence(&state.db, items)
        .await
        .map_err(|e| format!("the outbox cannot be read: {e}"))?;
    commit(state, items, marks, batch)
        .await
        .map_err(|e| format!("the outbox write failed: {e}"))?;
    marks.settle();
    Ok(())
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

/// Signs per patient and writes the accepted readings, their certificates,
/// the card signatures, the reported refusals and the new sequence marks in
/// one transaction.
async fn commit(
    state: &State,
    items: &[Candidate],
    marks: &Marks,
    batch: i64,
) -> Result<(), sqlx::Error> {
    let accepted: Vec<(&Candidate, B256)> = items
        .iter()
        .filter_map(|i| Some((i, i.passing_for()?.patient)))
        .collect();
    let reported: Vec<(&Candidate, &Refusal, B256)> = items
        .iter()
        .filter_map(|i| reported(i).map(|(r, patient)| (i, r, patient)))
        .collect();
    if accepted.is_empty() && reported.is_empty() {
        return Ok(());
    }
    let received = to_i64(now_ms());
    // Card signatures: per patient, over their readings in batch order.
    let mut by_patient: BTreeMap<B256, (alloy::primitives::Address, Vec<[u8; 32]>)> =
        BTreeMap::new();
    for (item, _) in &accepted {
        let bound = item.passing_for().expect("accepted readings are bound");
        by_patient
            .entry(bound.patient)
            .or_insert_with(|| (bound.account, Vec::new()))
            .1
            .push(item.hash);
    }
    let mut cards = Vec::with_capacity(by_patient.len());
    for (patient, (account, hashes)) in &by_patient {
        let card = state
            .cards
            .get(account)
            .expect("readings without a card were refused");
        let sig = card.sign(&card_digest(&patient.0, hashes));
        cards.push((patient, card.certificate().to_vec(), sig));
    }

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

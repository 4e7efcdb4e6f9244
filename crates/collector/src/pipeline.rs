//! The batch stage: every reading that passed the per-request checks
//! (certificate, signature, timestamp) waits here for one batch decision
//! against the chain and one durable outbox commit.
//!
//! Requests that arrive while a batch is being decided form the next
//! batch, so the chain calls and the fsync are shared by all of them
//! (group commit). Order of checks per reading: Registry binding (device
//! registered and active, certificate as registered, admitted patient),
//! the patient's card here, the rule contracts, then the sequence number.

use crate::State;
use alloy::primitives::B256;
use medledger_contracts::{Binding, RuleReason, rule_inputs};
use medledger_protocol::{ProblemType, Reading, card_digest, now_ms};
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, SqlError, SqlValue, insert_many};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most readings decided in one batch.
pub(crate) const MAX_BATCH: usize = 2048;

/// Rule inputs per `RuleManager.check` call (gas per call is bounded).
const RULE_CHUNK: usize = 512;

/// A reading that passed the per-request checks.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// `reading_hash` of `cose`.
    pub(crate) hash: [u8; 32],
    /// As the device sent it.
    pub(crate) cose: Vec<u8>,
    /// What it says.
    pub(crate) reading: Reading,
    /// The device certificate (DER) and its SHA-256.
    pub(crate) cert: Arc<Vec<u8>>,
    pub(crate) fingerprint: [u8; 32],
}

/// Why a reading was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) kind: ProblemType,
    pub(crate) detail: String,
    /// A rule's reason name, for `rule-violation`.
    pub(crate) reason: Option<String>,
}

impl Refusal {
    pub(crate) fn new(kind: ProblemType, detail: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            detail: detail.into(),
            reason: None,
        }
    }
}

/// What the server said of an accepted reading: its ledger index, or why
/// it refused it.
pub(crate) type Committed = Result<u64, Refusal>;

/// One request's readings and where to send their outcomes.
pub(crate) struct Submission {
    pub(crate) items: Vec<Candidate>,
    pub(crate) reply: oneshot::Sender<Vec<Result<(), Refusal>>>,
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
    // The highest accepted sequence per device, as far as loaded.
    let mut marks: HashMap<[u8; 12], u64> = HashMap::new();
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
        let items: Vec<&Candidate> = subs.iter().flat_map(|s| &s.items).collect();
        let mut outcomes = decide(&state, &mut marks, &items, batch).await;
        batch += 1;
        state.metrics.observe(
            "medledger_collector_batch_seconds",
            "Time to decide and durably commit one batch of readings.",
            &[],
            started.elapsed(),
        );
        for outcome in &outcomes {
            match outcome {
                Ok(()) => state.metrics.add(
                    "medledger_collector_readings_total",
                    "Readings by outcome and cause.",
                    &[("outcome", "accepted"), ("cause", "")],
                    1,
                ),
                Err(r) => state.metrics.add(
                    "medledger_collector_readings_total",
                    "Readings by outcome and cause.",
                    &[("outcome", "rejected"), ("cause", r.kind.name())],
                    1,
                ),
            }
        }
        if outcomes.iter().any(Result::is_ok) {
            state.outbox_changed.notify_one();
        }
        for sub in subs {
            let rest = outcomes.split_off(sub.items.len());
            let _ = sub.reply.send(std::mem::replace(&mut outcomes, rest));
        }
    }
}

/// Decides one batch and commits the accepted readings; one outcome per
/// item, in order.
async fn decide(
    state: &State,
    marks: &mut HashMap<[u8; 12], u64>,
    items: &[&Candidate],
    batch: i64,
) -> Vec<Result<(), Refusal>> {
    let epcs: Vec<[u8; 12]> = items.iter().map(|c| c.reading.dev.0).collect();
    let bindings = match state.view.bindings(&epcs).await {
        Ok(b) => b,
        Err(e) => return unavailable(items.len(), &format!("the chain cannot be asked: {e}")),
    };
    let mut outcomes: Vec<Result<(), Refusal>> = items
        .iter()
        .map(|c| check_binding(c, bindings.get(&c.reading.dev.0), state))
        .collect();

    // Rules: one call (per chunk) for every observation still in.
    let mut inputs = Vec::new();
    let mut owners = Vec::new();
    for (i, c) in items.iter().enumerate() {
        if outcomes[i].is_ok() {
            for input in rule_inputs(&c.reading) {
                inputs.push(input);
                owners.push(i);
            }
        }
    }
    let mut reasons = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(RULE_CHUNK) {
        match state.view.contracts().check_readings(chunk.to_vec()).await {
            Ok((r, _version)) => reasons.extend(r),
            Err(e) => {
                return unavailable(
                    items.len(),
                    &format!("the rule contracts cannot be asked: {e}"),
                );
            }
        }
    }
    for (owner, reason) in owners.into_iter().zip(reasons) {
        if outcomes[owner].is_ok() && !reason.is_allow() {
            outcomes[owner] = Err(rule_refusal(&reason));
        }
    }

    // Sequence numbers, in arrival order, against the persisted marks.
    let mut new_marks: HashMap<[u8; 12], u64> = HashMap::new();
    for (i, c) in items.iter().enumerate() {
        if outcomes[i].is_err() {
            continue;
        }
        let dev = c.reading.dev.0;
        let mark = match new_marks.get(&dev).or_else(|| marks.get(&dev)) {
            Some(m) => Some(*m),
            None => match load_mark(&state.db, &dev).await {
                Ok(m) => {
                    if let Some(m) = m {
                        marks.insert(dev, m);
                    }
                    m
                }
                Err(e) => {
                    return unavailable(items.len(), &format!("the outbox cannot be read: {e}"));
                }
            },
        };
        if mark.is_some_and(|m| c.reading.seq <= m) {
            outcomes[i] = Err(Refusal::new(
                ProblemType::Replay,
                format!(
                    "sequence {} is not above {}, the device's last accepted",
                    c.reading.seq,
                    mark.unwrap_or_default()
                ),
            ));
        } else {
            new_marks.insert(dev, c.reading.seq);
        }
    }

    let accepted: Vec<(usize, B256)> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| outcomes[*i].is_ok())
        .map(|(i, c)| {
            let patient = bindings[&c.reading.dev.0]
                .patient
                .expect("checked in check_binding");
            (i, patient)
        })
        .collect();
    // Readings of a bound device refused for what they say (rules) or
    // when (replay) are reported to the server, which alerts the patient.
    let refused: Vec<(usize, B256, &Refusal)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let refusal = outcomes[i].as_ref().err()?;
            let patient = bindings.get(&c.reading.dev.0)?.patient?;
            matches!(
                refusal.kind,
                ProblemType::RuleViolation | ProblemType::Replay
            )
            .then_some((i, patient, refusal))
        })
        .collect();
    if accepted.is_empty() && refused.is_empty() {
        return outcomes;
    }
    let written = commit(
        state, items, &accepted, &refused, &bindings, &new_marks, batch,
    )
    .await;
    if let Err(e) = written {
        return unavailable(items.len(), &format!("the outbox write failed: {e}"));
    }
    marks.extend(new_marks);
    outcomes
}

fn unavailable(n: usize, detail: &str) -> Vec<Result<(), Refusal>> {
    eprintln!("medledger collector: {detail}");
    vec![Err(Refusal::new(ProblemType::Unavailable, detail)); n]
}

fn check_binding(c: &Candidate, binding: Option<&Binding>, state: &State) -> Result<(), Refusal> {
    let epc = medledger_pki::Epc::from_bytes(c.reading.dev.0)
        .map_or_else(|_| hex::encode(c.reading.dev.0), |e| e.to_tag_uri());
    let unknown = |detail: String| Err(Refusal::new(ProblemType::UnknownDevice, detail));
    let Some(b) = binding.filter(|b| b.registered) else {
        return unknown(format!("device {epc} is not registered"));
    };
    if !b.active {
        return unknown(format!("device {epc} is deactivated in the Registry"));
    }
    if b.cert_fingerprint != c.fingerprint {
        return unknown(format!(
            "the certificate presented is not the one registered for device {epc}"
        ));
    }
    let (Some(_), Some(account)) = (b.patient, b.account) else {
        return Err(Refusal::new(
            ProblemType::NotAdmitted,
            format!("device {epc} is not assigned to an admitted patient"),
        ));
    };
    if state.cards.get(&account).is_none() {
        return Err(Refusal::new(
            ProblemType::Unavailable,
            format!("this collector holds no card for the patient of device {epc}"),
        ));
    }
    Ok(())
}

fn rule_refusal(reason: &RuleReason) -> Refusal {
    let (kind, detail) = reason.refusal();
    Refusal {
        kind,
        detail,
        reason: (kind == ProblemType::RuleViolation).then(|| reason.name()),
    }
}

async fn load_mark(db: &Db, dev: &[u8; 12]) -> Result<Option<u64>, sqlx::Error> {
    let row = sqlx::query("SELECT seq FROM collector_device_seq WHERE epc = $1")
        .bind(dev.to_vec())
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(r) => Some(u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0)),
        None => None,
    })
}

/// Signs per patient and writes the accepted readings, their certificates,
/// the card signatures and the new sequence marks in one transaction.
#[allow(clippy::too_many_arguments)]
async fn commit(
    state: &State,
    items: &[&Candidate],
    accepted: &[(usize, B256)],
    refused: &[(usize, B256, &Refusal)],
    bindings: &HashMap<[u8; 12], Binding>,
    new_marks: &HashMap<[u8; 12], u64>,
    batch: i64,
) -> Result<(), sqlx::Error> {
    let received = to_i64(now_ms());
    // Card signatures: per patient, over their readings in batch order.
    let mut by_patient: BTreeMap<B256, Vec<[u8; 32]>> = BTreeMap::new();
    for (i, patient) in accepted {
        by_patient.entry(*patient).or_default().push(items[*i].hash);
    }
    let mut cards = Vec::with_capacity(by_patient.len());
    for (patient, hashes) in &by_patient {
        let account = accepted
            .iter()
            .find(|(_, p)| p == patient)
            .and_then(|(i, _)| bindings[&items[*i].reading.dev.0].account)
            .expect("bound readings have an account");
        let card = state.cards.get(&account).expect("checked in check_binding");
        let sig = card.sign(&card_digest(&patient.0, hashes));
        cards.push((patient, card.certificate().to_vec(), sig));
    }

    let mut tx = state.db.pool().begin().await?;
    let mut certs: Vec<(&[u8; 32], &[u8])> = accepted
        .iter()
        .map(|(i, _)| *i)
        .chain(refused.iter().map(|(i, ..)| *i))
        .map(|i| (&items[i].fingerprint, items[i].cert.as_slice()))
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
        .map(|(pos, (i, patient))| {
            let c = items[*i];
            vec![
                SqlValue::Bytes(c.hash.to_vec()),
                SqlValue::Int(batch),
                SqlValue::Int(to_i64(pos as u64)),
                SqlValue::Bytes(patient.to_vec()),
                SqlValue::Bytes(c.fingerprint.to_vec()),
                SqlValue::Bytes(c.cose.clone()),
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
    let refused_rows: Vec<Vec<SqlValue>> = refused
        .iter()
        .map(|(i, patient, refusal)| {
            let c = items[*i];
            vec![
                SqlValue::Bytes(c.hash.to_vec()),
                SqlValue::Bytes(patient.to_vec()),
                SqlValue::Bytes(c.fingerprint.to_vec()),
                SqlValue::Bytes(c.cose.clone()),
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
        &refused_rows,
    )
    .await?;
    let marks: Vec<Vec<SqlValue>> = new_marks
        .iter()
        .map(|(dev, seq)| vec![SqlValue::Bytes(dev.to_vec()), SqlValue::Int(to_i64(*seq))])
        .collect();
    insert_many(
        &mut tx,
        "collector_device_seq",
        &["epc", "seq"],
        "ON CONFLICT (epc) DO UPDATE SET seq = excluded.seq",
        &marks,
    )
    .await?;
    tx.commit().await
}

//! Committing a forwarded batch. The collector is not trusted: every
//! reading is verified again as if it came straight from the device, and
//! every patient's readings must carry that patient's card signature.
//!
//! The commit reads as its stages, the shared checks of
//! [`medledger_checks`] with the server's own around them:
//!
//! ```text
//!  verify       device certificate (chain, validity, CRL, role), COSE
//!               signature, `dev`, before the batch takes its turn
//!               (checks::verify)
//!  duplicates   stored before (a retry): `duplicate`, whatever verify said
//!  bind         Registry binding to the patient the collector named
//!               (checks::bind); not erased
//!  cards        a valid card signature of that patient covers it
//!  rules        the rule contracts                         (checks::rules)
//!  holders      readings of patients whose ledger another server holds
//!               go to it, its answers are theirs (crate::leases)
//!  sequence     above the device's last stored     (checks::Marks, gaps)
//!  store        one sealed blob per patient; `DataRecorded` entries, the
//!               reading index, the marks and the batch root in one SQL
//!               transaction
//!  alert        refused readings, gaps, and what the collector refused
//! ```
//!
//! A reading is verified once per trust boundary: where the collector runs
//! in the server's own process ([`Source::SameProcess`]), it has verified
//! certificates, signatures, cards and rules, and the server only parses,
//! binds, sequences and stores.

use crate::State;
use crate::alerts::NewAlert;
use crate::failure::{Cause, Failure};
use crate::leases::{Holder, Peer};
use alloy::primitives::B256;
use medledger_checks::{Item, Marks, NewMarks, Refusal, Signed, Trust, Verdict};
use medledger_patient_ledger::{Field, LedgerError, NewEntry, Tree, leaf_hash};
use medledger_pki::{ClientAuth, Identity};
use medledger_protocol::cbor;
use medledger_protocol::{
    CardSignature, CommitReply, CommitResult, CommitStatus, ForwardBatch, ProblemType,
    SignedReading, card_digest, now_ms, reading_hash,
};
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{SqlValue, insert_many, placeholders};
use rustls::pki_types::UnixTime;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Why a whole batch could not be committed now (the collector retries);
/// what failed is for the server's log, not for the collector.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The chain, a peer server or an earlier batch of the stream.
    #[error("{0}")]
    Now(Failure),
    /// The database or the blob store failed (full, I/O errors, down).
    #[error("storage: {0}")]
    Storage(Failure),
}

impl Unavailable {
    /// Not now: `doing` failed because of `cause`.
    pub(crate) fn now(doing: impl Into<Cow<'static, str>>, cause: impl Into<Cause>) -> Self {
        Unavailable::Now(Failure::new(doing, cause))
    }
}

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
    /// Another server on the same database, which verified everything as
    /// from a [`Source::Peer`] and sends on the readings of patients whose
    /// ledger this server holds (crate::relay).
    Server,
}

impl Source {
    fn trust(self) -> Trust {
        match self {
            Source::Peer => Trust::Verify,
            Source::SameProcess | Source::Server => Trust::VerifiedHere,
        }
    }
}

/// What the collector said of a reading: its device certificate (an index
/// into the batch's `certs`) and the patient it bound it to.
#[derive(Debug, Clone, Copy)]
struct Named {
    cert: u32,
    patient: [u8; 32],
    received_ms: u64,
}

/// A forwarded reading on its way through the stages.
type Forwarded = Item<Named>;

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn db_down(e: sqlx::Error) -> Unavailable {
    Unavailable::Storage(Failure::new("the database", e))
}

fn chain_down(e: medledger_contracts::Error) -> Unavailable {
    Unavailable::now("asking the chain", e)
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

/// The certificates and intermediates a batch carries.
struct Certificates {
    certs: Vec<Vec<u8>>,
    cas: Vec<Vec<u8>>,
}

impl Certificates {
    /// The device identities of the certificates `wanted` names, each
    /// checked once: from a peer verified (chain, validity, CRL, role),
    /// from this process parsed.
    fn devices(
        &self,
        auth: &ClientAuth,
        wanted: impl Iterator<Item = u32>,
        source: Source,
    ) -> HashMap<u32, Result<Arc<Identity>, Refusal>> {
        let at = UnixTime::now();
        let mut found = HashMap::new();
        for cert in wanted {
            found.entry(cert).or_insert_with(|| {
                let der = self.certs.get(cert as usize).ok_or_else(|| {
                    Refusal::new(
                        ProblemType::Malformed,
                        format!("no certificate {cert} in the batch"),
                    )
                })?;
                match source {
                    Source::Peer => auth.verify_certificate(der, &self.cas, at).map_err(|e| {
                        Refusal::new(e.problem_type(), format!("device certificate: {e}"))
                    }),
                    Source::SameProcess | Source::Server => Identity::from_peer_certificate(der)
                        .map_err(|e| {
                            Refusal::new(
                                ProblemType::UntrustedCertificate,
                                format!("device certificate: {e}"),
                            )
                        }),
                }
                .map(Arc::new)
            });
        }
        found
    }
}

/// Runs [`medledger_checks::verify`] on every core, off the async
/// runtime, with the batch's device certificates.
async fn verify<T: Send + Sync + 'static>(
    state: &State,
    certificates: Arc<Certificates>,
    mut items: Vec<Item<T>>,
    cert_of: fn(&T) -> u32,
    source: Source,
) -> Result<Vec<Item<T>>, Unavailable> {
    let auth = state.device_auth.clone();
    tokio::task::spawn_blocking(move || {
        let unchecked = items
            .iter()
            .filter(|i| matches!(i.verdict, Verdict::Unchecked))
            .map(|i| cert_of(&i.data));
        let identities = certificates.devices(&auth, unchecked, source);
        medledger_checks::verify(
            &mut items,
            |data| identities[&cert_of(data)].clone(),
            source.trust(),
        );
        items
    })
    .await
    .map_err(|e| Unavailable::now("verifying the readings", e))
}

/// Commits a batch from `source` once verified and once `turn` (its
/// collector's earlier batches committed) is ready; one result per reading,
/// in order.
pub(crate) async fn commit(
    state: &State,
    batch: ForwardBatch,
    source: Source,
    turn: impl Future<Output = Result<(), Unavailable>>,
) -> Result<CommitReply, Unavailable> {
    let committed = commit_batch(state, batch, source, turn).await;
    if let Err(Unavailable::Storage(detail)) = &committed {
        state.metrics.add(
            "medledger_server_storage_failures_total",
            "Batches that could not be stored (the collector retries them).",
            &[],
            1,
        );
        tracing::error!("medledger server: storage failure: {detail}");
    }
    committed
}

async fn commit_batch(
    state: &State,
    batch: ForwardBatch,
    source: Source,
    turn: impl Future<Output = Result<(), Unavailable>>,
) -> Result<CommitReply, Unavailable> {
    let ForwardBatch {
        order: _,
        certs,
        cas,
        readings,
        cards,
        refused,
        // Told at the HTTP edge, which knows the collector.
        held: _,
    } = batch;
    let certificates = Arc::new(Certificates { certs, cas });
    let items: Vec<Forwarded> = readings
        .into_iter()
        .map(|f| {
            Item::new(
                f.cose,
                Named {
                    cert: f.cert,
                    patient: f.patient,
                    received_ms: f.received_ms,
                },
            )
        })
        .collect();
    let mut clock = Stages::new(state);
    let mut alerts: Vec<NewAlert> = Vec::new();

    // Verified before the batch takes its turn: the next batch's
    // signatures are checked while this one commits.
    let mut items = verify(state, certificates.clone(), items, |n| n.cert, source).await?;
    clock.lap("verify");
    turn.await?;
    duplicates(state, &mut items).await?;

    medledger_checks::bind(&state.view, &mut items, Signed::Measured, |n| {
        Some(B256::from(n.patient))
    })
    .await
    .map_err(chain_down)?;
    not_erased(state, &mut items).await?;
    clock.lap("bindings");

    if source == Source::Peer {
        covered_by_cards(state, &certificates, &cards, &mut items);
        clock.lap("cards");
        let refused = medledger_checks::rules(&state.view, &mut items)
            .await
            .map_err(chain_down)?;
        alerts.extend(refused.into_iter().map(|i| reading_alert(&items[i])));
        clock.lap("rules");
    }
    to_holders(state, &certificates, &mut items, source).await?;
    clock.lap("holders");

    let _one_at_a_time = state.ingest_lock.lock().await;
    // A retry of this very batch may have committed meanwhile.
    duplicates(state, &mut items).await?;

    let mut marks = Marks::with_holes("ingest_device_seq", "ingest_device_holes");
    let sequenced = marks
        .sequence(&state.db, &mut items)
        .await
        .map_err(db_down)?;
    alerts.extend(sequenced.replays.iter().map(|&i| reading_alert(&items[i])));
    for gap in &sequenced.gaps {
        alerts.push(gap_alert(state, &items[gap.item], gap));
    }
    clock.lap("sequence");

    store(state, &mut items, &marks.advance(), &mut clock).await?;
    let results = items
        .iter()
        .map(result_of)
        .collect::<Option<Vec<CommitResult>>>()
        .ok_or_else(|| Unavailable::now("deciding the batch", "a reading was left undecided"))?;
    for r in &results {
        let (status, cause) = match r.status {
            CommitStatus::Stored => ("stored", ""),
            CommitStatus::Duplicate => ("duplicate", ""),
            CommitStatus::Rejected => ("rejected", r.problem.map_or("", ProblemType::name)),
        };
        state.metrics.add(
            "medledger_server_readings_total",
            "Forwarded readings by outcome and cause.",
            &[("outcome", status), ("cause", cause)],
            1,
        );
    }

    alerts.extend(refused_by_collector(state, certificates, refused, source).await?);
    // Alerts only for readings whose device is bound to the patient named
    // (checked above), so a forged batch cannot alert arbitrary patients.
    if let Err(e) = state.alerts.raise(alerts, None).await {
        tracing::warn!("medledger server: raising ingest alerts: {e}");
    }
    state.committed.notify_one();
    Ok(CommitReply { results })
}

/// Sends the readings of patients whose ledger another live server holds
/// to that server, and takes its answers for theirs; takes the leases of
/// the others' patients that are free or lapsed.
async fn to_holders(
    state: &State,
    certificates: &Certificates,
    items: &mut [Forwarded],
    source: Source,
) -> Result<(), Unavailable> {
    let patients: Vec<[u8; 32]> = items
        .iter()
        .filter(|i| i.passing().is_some())
        .map(|i| i.data.patient)
        .collect();
    if patients.is_empty() {
        return Ok(());
    }
    let holders = state.leases.take(patients, false).await.map_err(db_down)?;
    let mut by_peer: HashMap<Peer, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if item.passing().is_some()
            && let Some(Holder::Other(peer)) = holders.get(&item.data.patient)
        {
            by_peer.entry(peer.clone()).or_default().push(i);
        }
    }
    if by_peer.is_empty() {
        return Ok(());
    }
    let tls = match (&state.peer_tls, source) {
        // Sent on once only: the lease moved again meanwhile.
        (_, Source::Server) | (None, _) => {
            return Err(Unavailable::now(
                "sending readings on",
                "another server holds the lease of a patient's ledger",
            ));
        }
        (Some(tls), _) => tls.clone(),
    };
    for (peer, members) in by_peer {
        let batch = ForwardBatch {
            order: None,
            certs: certificates.certs.clone(),
            cas: certificates.cas.clone(),
            readings: members
                .iter()
                .map(|&i| medledger_protocol::Forwarded {
                    cose: items[i].cose.clone(),
                    cert: items[i].data.cert,
                    patient: items[i].data.patient,
                    received_ms: items[i].data.received_ms,
                })
                .collect(),
            cards: Vec::new(),
            refused: Vec::new(),
            held: Vec::new(),
        };
        let reply = match state.relay.send(tls.clone(), &peer, &batch).await {
            Ok(reply) => reply,
            Err(e) => {
                if took_from_silent(state, &batch).await? {
                    // Written here, with the rest.
                    continue;
                }
                return Err(e);
            }
        };
        for (&i, result) in members.iter().zip(reply.results) {
            items[i].verdict = match result.status {
                CommitStatus::Stored | CommitStatus::Duplicate => Verdict::Stored {
                    index: result.index.unwrap_or(0),
                    before: result.status == CommitStatus::Duplicate,
                },
                CommitStatus::Rejected => Verdict::Refused(Refusal {
                    kind: result.problem.unwrap_or(ProblemType::Unavailable),
                    detail: result.detail.unwrap_or_default(),
                    reason: result.reason,
                }),
            };
        }
    }
    Ok(())
}

/// The holder of the patients of `batch` did not answer: if their leases
/// lapse within a term (it died, or lost the database), waits for that
/// and takes them, so that its patients move in one lease term rather
/// than after the collector's retries. Whether this server holds them now.
async fn took_from_silent(state: &State, batch: &ForwardBatch) -> Result<bool, Unavailable> {
    let mut patients: Vec<[u8; 32]> = batch.readings.iter().map(|r| r.patient).collect();
    patients.sort_unstable();
    patients.dedup();
    let Some(wait) = state.leases.lapse_wait(&patients).await.map_err(db_down)? else {
        return Ok(false);
    };
    // A little past the lapse, on this server's clock.
    tokio::time::sleep(wait + std::time::Duration::from_millis(20)).await;
    let holders = state
        .leases
        .take(patients.iter().copied(), false)
        .await
        .map_err(db_down)?;
    Ok(holders.values().all(|h| *h == Holder::Me))
}

/// A reading's answer to the collector, once decided.
fn result_of(item: &Forwarded) -> Option<CommitResult> {
    let hash = hex::encode(item.hash);
    Some(match &item.verdict {
        Verdict::Stored { index, before } => CommitResult {
            hash,
            status: if *before {
                CommitStatus::Duplicate
            } else {
                CommitStatus::Stored
            },
            index: Some(*index),
            problem: None,
            detail: None,
            reason: None,
        },
        Verdict::Refused(r) => CommitResult {
            hash,
            status: CommitStatus::Rejected,
            index: None,
            problem: Some(r.kind),
            detail: Some(r.detail.clone()),
            reason: r.reason.clone(),
        },
        Verdict::Unchecked | Verdict::Passing(_) => return None,
    })
}

/// Retries: readings stored before are answered with their index.
async fn duplicates(state: &State, items: &mut [Forwarded]) -> Result<(), Unavailable> {
    let position: HashMap<[u8; 32], usize> =
        items.iter().enumerate().map(|(i, r)| (r.hash, i)).collect();
    let hashes: Vec<[u8; 32]> = items.iter().map(|i| i.hash).collect();
    for chunk in hashes.chunks(256) {
        let sql = format!(
            "SELECT hash, idx FROM ingest_readings WHERE hash IN ({})",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for hash in chunk {
            query = query.bind(hash.to_vec());
        }
        let rows = query.fetch_all(state.db.pool()).await.map_err(db_down)?;
        for row in rows {
            let hash: Vec<u8> = row.try_get("hash").map_err(db_down)?;
            let idx: i64 = row.try_get("idx").map_err(db_down)?;
            let found = <[u8; 32]>::try_from(hash.as_slice())
                .ok()
                .and_then(|h| position.get(&h));
            // Not those another server just stored for this batch.
            if let Some(&i) = found
                && !matches!(items[i].verdict, Verdict::Stored { .. })
            {
                items[i].verdict = Verdict::Stored {
                    index: u64::try_from(idx).unwrap_or(0),
                    before: true,
                };
            }
        }
    }
    Ok(())
}

/// An erased (forgotten) patient takes no new readings.
async fn not_erased(state: &State, items: &mut [Forwarded]) -> Result<(), Unavailable> {
    let mut erased: HashMap<[u8; 32], bool> = HashMap::new();
    for item in items.iter_mut().filter(|i| i.passing_for().is_some()) {
        let patient = item.data.patient;
        let gone = match erased.get(&patient) {
            Some(gone) => *gone,
            None => {
                let gone = state
                    .vault
                    .is_erased(&patient)
                    .await
                    .map_err(|e| Unavailable::now("asking the key store", e))?;
                erased.insert(patient, gone);
                gone
            }
        };
        if gone {
            item.refuse(Refusal::new(
                ProblemType::NotAdmitted,
                "the patient was erased (forgotten)",
            ));
        }
    }
    Ok(())
}

/// Refuses (`forbidden`) each reading no valid signature of its patient's
/// card covers: the card certificate verified with role `patient` and the
/// Registry account of the readings' patient, its signature over the card
/// digest of exactly the readings it lists.
fn covered_by_cards(
    state: &State,
    certificates: &Certificates,
    cards: &[CardSignature],
    items: &mut [Forwarded],
) {
    let at = UnixTime::now();
    let mut covered = vec![false; items.len()];
    for card in cards {
        let member = |r: &u32| items.get(*r as usize);
        let account = card
            .readings
            .iter()
            .find_map(|r| Some(member(r)?.passing_for()?.account));
        let valid = account.is_some_and(|account| {
            card.readings
                .iter()
                .all(|r| member(r).is_some_and(|i| i.data.patient == card.patient))
                && certificates
                    .certs
                    .get(card.cert as usize)
                    .and_then(|der| {
                        state
                            .card_auth
                            .verify_certificate(der, &certificates.cas, at)
                            .ok()
                    })
                    .filter(|id| id.address() == Some(account))
                    .is_some_and(|id| {
                        let digest = card_digest(
                            &card.patient,
                            card.readings.iter().filter_map(|r| Some(&member(r)?.hash)),
                        );
                        SignedReading::decode(&card.sig)
                            .ok()
                            .and_then(|s| s.verify_payload(&id.key).ok().map(|p| p == digest))
                            .unwrap_or(false)
                    })
        });
        if valid {
            for &r in &card.readings {
                if let Some(c) = covered.get_mut(r as usize) {
                    *c = true;
                }
            }
        }
    }
    for (item, covered) in items.iter_mut().zip(covered) {
        if item.passing().is_some() && !covered {
            item.refuse(Refusal::new(
                ProblemType::Forbidden,
                "no valid signature of the patient's card covers the reading",
            ));
        }
    }
}

/// The alert of a refused reading whose device and patient are known.
fn reading_alert(item: &Forwarded) -> NewAlert {
    let detail = match &item.verdict {
        Verdict::Refused(r) => r.detail.as_str(),
        _ => "",
    };
    NewAlert {
        actor: String::new(),
        patient: item.data.patient,
        kind: "reading-rejected",
        source: format!("reading:{}", hex::encode(item.hash)),
        flagged: true,
        why: format!("a reading from one of your devices was refused: {detail}"),
        body: serde_json::json!({ "reading": hex::encode(item.hash), "detail": detail }),
    }
}

/// Counts, logs and alerts a gap in a device's sequence.
fn gap_alert(state: &State, item: &Forwarded, gap: &medledger_checks::Gap) -> NewAlert {
    state.metrics.add(
        "medledger_server_sequence_gaps_total",
        "Readings that arrived after a gap in their device's sequence.",
        &[],
        1,
    );
    let device = hex::encode(gap.device);
    tracing::warn!(
        "medledger server: device {device} skipped from sequence {} to {}",
        gap.from - 1,
        gap.to + 1
    );
    NewAlert {
        actor: String::new(),
        patient: item.data.patient,
        kind: "sequence-gap",
        source: format!("gap:{device}:{}", gap.to + 1),
        flagged: true,
        why: format!(
            "readings {}..{} of device {device} never arrived",
            gap.from, gap.to
        ),
        body: serde_json::json!({ "device": device, "from": gap.from, "to": gap.to }),
    }
}

/// What the collector reported it refused (for a rule or a replay), as
/// the collector said it.
#[derive(Debug)]
struct Reported {
    cert: u32,
    patient: [u8; 32],
    problem: ProblemType,
    detail: String,
}

/// The alerts of the readings the collector refused: each only if the
/// device really signed it and is bound to the patient named.
async fn refused_by_collector(
    state: &State,
    certificates: Arc<Certificates>,
    refused: Vec<medledger_protocol::Refused>,
    source: Source,
) -> Result<Vec<NewAlert>, Unavailable> {
    if refused.is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<Item<Reported>> = refused
        .into_iter()
        .map(|r| {
            Item::new(
                r.cose,
                Reported {
                    cert: r.cert,
                    patient: r.patient,
                    problem: r.problem,
                    detail: r.detail,
                },
            )
        })
        .collect();
    let mut items = verify(state, certificates, items, |r| r.cert, source).await?;
    medledger_checks::bind(&state.view, &mut items, Signed::Measured, |r| {
        Some(B256::from(r.patient))
    })
    .await
    .map_err(chain_down)?;
    Ok(items
        .iter()
        .filter(|i| i.passing_for().is_some())
        .map(|i| NewAlert {
            actor: String::new(),
            patient: i.data.patient,
            kind: "reading-rejected",
            source: format!("reading:{}", hex::encode(i.hash)),
            flagged: true,
            why: format!(
                "a reading from one of your devices was refused by the collector: {}",
                i.data.detail
            ),
            body: serde_json::json!({
                "reading": hex::encode(i.hash),
                "problem": i.data.problem,
                "detail": i.data.detail,
            }),
        })
        .collect())
}

/// Seals one blob per patient, then writes the ledger entries, reading
/// index, marks and batch root in one transaction; each reading stored
/// becomes [`Verdict::Stored`].
async fn store(
    state: &State,
    items: &mut [Forwarded],
    marks: &NewMarks,
    clock: &mut Stages<'_>,
) -> Result<(), Unavailable> {
    // Readings per patient, in batch order.
    let mut by_patient: BTreeMap<[u8; 32], Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if item.passing().is_some() {
            by_patient.entry(item.data.patient).or_default().push(i);
        }
    }
    if by_patient.is_empty() {
        return Ok(());
    }
    let patients: Vec<[u8; 32]> = by_patient.keys().copied().collect();
    let mut sealed = Vec::with_capacity(by_patient.len());
    let mut digests = Vec::with_capacity(by_patient.len());
    for (patient, members) in &by_patient {
        let plaintext = cbor::encode_with(|e| {
            e.array(members.len());
            for &i in members {
                e.bytes(&items[i].cose);
            }
        });
        digests.push(reading_hash(&plaintext));
        match state.vault.seal(patient, &plaintext).await {
            Ok(s) => sealed.push(s),
            Err(e) => {
                return Err(storage_failure(state, &patients, Failure::new("sealing", e)).await);
            }
        }
    }
    let cids = match state.blobs.put_many(&sealed).await {
        Ok(cids) => cids,
        Err(e) => {
            return Err(storage_failure(state, &patients, Failure::new("storing blobs", e)).await);
        }
    };

    // The batch root over the stored readings, in batch order.
    let order: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].passing().is_some())
        .collect();
    let mut tree = Tree::new();
    for &i in &order {
        tree.push(leaf_hash(&items[i].hash));
    }
    let root = tree.root(tree.size()).expect("the tree holds its own size");
    let batch_pos: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let reading = |i: usize| {
        &items[i]
            .passing()
            .expect("only passing readings are stored")
            .reading
    };

    let now = now_ms();
    let groups: Vec<([u8; 32], Vec<NewEntry>)> = by_patient
        .iter()
        .zip(&cids)
        .map(|((patient, members), cid)| {
            let entries = members
                .iter()
                .enumerate()
                .map(|(pos, &i)| {
                    let r = reading(i);
                    NewEntry {
                        kind: "DataRecorded",
                        ts_ms: now,
                        body: BTreeMap::from([
                            ("reading".to_owned(), Field::Bytes(items[i].hash.to_vec())),
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
        Err(LedgerError::NotHeld(patient)) => {
            state.leases.lost();
            return Err(Unavailable::now(
                "appending to the ledgers",
                format!("another server took over the lease of patient {patient}'s ledger"),
            ));
        }
        Err(e) => {
            return Err(storage_failure(state, &patients, Failure::new("the ledger", e)).await);
        }
    };
    let mut stored = Vec::with_capacity(order.len());
    let mut rows = Vec::with_capacity(order.len());
    for ((((patient, members), cid), digest), indexes) in by_patient
        .iter()
        .zip(&cids)
        .zip(&digests)
        .zip(staged.indexes())
    {
        for ((pos, &i), &index) in members.iter().enumerate().zip(indexes) {
            let r = reading(i);
            rows.push(vec![
                SqlValue::Bytes(items[i].hash.to_vec()),
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
    marks.write(&mut tx).await.map_err(db_down)?;
    sqlx::query(
        "INSERT INTO ingest_batches (root, count, first, last, created_ms, writer) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(root.to_vec())
    .bind(to_i64(order.len() as u64))
    .bind(items[order[0]].hash.to_vec())
    .bind(items[order[order.len() - 1]].hash.to_vec())
    .bind(to_i64(now))
    .bind(state.leases.me())
    .execute(&mut *tx)
    .await
    .map_err(db_down)?;
    tx.commit().await.map_err(db_down)?;
    clock.lap("ledger");
    drop(staged.committed());
    for (i, index) in stored {
        if let Some(p) = items[i].passing() {
            state.heard.device(&p.reading.dev.0, p.reading.ts_ms);
        }
        items[i].verdict = Verdict::Stored {
            index,
            before: false,
        };
    }
    Ok(())
}

/// Alerts the patients whose readings a storage failure holds up (at
/// most once an hour each while it lasts; [`commit`] counts and logs it);
/// the collector keeps the readings and sends them again.
async fn storage_failure(state: &State, patients: &[[u8; 32]], failure: Failure) -> Unavailable {
    let hour = now_ms() / 3_600_000;
    let alerts = patients
        .iter()
        .map(|patient| NewAlert {
            actor: String::new(),
            patient: *patient,
            kind: "storage-failure",
            source: format!("storage:{}:{hour}", hex::encode(patient)),
            flagged: true,
            why: "new readings could not be stored yet; they are kept and sent again".into(),
            body: serde_json::json!({}),
        })
        .collect();
    if let Err(e) = state.alerts.raise(alerts, None).await {
        tracing::warn!("medledger server: raising storage-failure alerts: {e}");
    }
    Unavailable::Storage(failure)
}

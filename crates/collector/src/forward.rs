//! Forwarding: the outbox, oldest batch first, to the server over mutual
//! TLS (or to the server's ingest in this process); rows leave the outbox
//! only after the server has answered for them.
//! While the server is down, retries back off up to [`MAX_BACKOFF`]; with
//! several servers, each failed batch moves the collector on to the next.
//! The server is idempotent by reading hash, so a batch resent after a
//! lost answer is stored once. A batch the server refuses outright (a 4xx)
//! becomes a dead letter ([`crate::dead_letters`]) and the outbox moves on.

use crate::dead_letters::{self, Poison};
use crate::{ForwardError, ServerTarget, State, Upstream};
use medledger_checks::Refusal;
use medledger_pki::health::Outage;
use medledger_pki::https::Connection;
use medledger_protocol::{
    CardSignature, CommitReply, CommitStatus, ForwardBatch, Forwarded, Held, Order, ProblemType,
    Refused,
};
use medledger_storage::sqlx::{self, Row};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Most refused readings reported per forwarded batch.
const MAX_REFUSED: i64 = 1000;

/// Most readings per forwarded batch (whole collector batches only).
const MAX_FORWARD: i64 = 4096;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a server may take to answer for a batch before it is sent
/// again (on a new connection): longer than the server's own waits (a
/// predecessor 10 s, a database connection 10 s, a locked SQLite 30 s),
/// so that a server that hangs cannot stop forwarding for good.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Most batches in flight to a server over mutual TLS at once, each on a
/// connection of its own: the server verifies one while it commits another.
const IN_FLIGHT: usize = 3;

/// Forwards until the collector stops.
pub(crate) async fn run(state: Arc<State>, tls: Arc<rustls::ClientConfig>, upstream: Upstream) {
    let capacity = match upstream {
        Upstream::Servers(_) => IN_FLIGHT,
        // One ingest, in this process: nothing to overlap.
        Upstream::InProcess(_) => 1,
    };
    // The server batches go to, in `Upstream::Servers`.
    let mut at = 0;
    let mut idle: Vec<Connection> = Vec::new();
    let mut flight: VecDeque<Flight> = VecDeque::new();
    let mut stream = Stream::new();
    let mut backoff = MIN_BACKOFF;
    let mut outage = Outage::new(match &upstream {
        Upstream::Servers(servers) => format!(
            "medledger collector: forwarding to {}",
            servers
                .iter()
                .map(|s| s.addr.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        Upstream::InProcess(_) => {
            "medledger collector: forwarding to the server in this process".to_owned()
        }
    });
    loop {
        while flight.len() < capacity {
            let after = flight.back().map(|f| f.outgoing.range.1);
            let pending = match load(&state, after).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("medledger collector: reading the outbox: {e}");
                    break;
                }
            };
            state.metrics.set(
                "medledger_collector_outbox_depth",
                "Readings in the outbox, not yet answered for by the server.",
                &[],
                pending.depth as f64,
            );
            let Some(mut outgoing) = pending.batch else {
                break;
            };
            if let Upstream::Servers(_) = upstream {
                outgoing.batch.order = Some(stream.next(!flight.is_empty()));
            }
            let task = tokio::spawn(send(
                Hop::of(&upstream, at),
                tls.clone(),
                idle.pop(),
                outgoing.batch.clone(),
            ));
            flight.push_back(Flight { outgoing, task });
        }
        let room = flight.len() < capacity;
        let Some(oldest) = flight.front_mut() else {
            // Nothing to send: wait for the pipeline, or look again soon.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), state.outbox_changed.notified()).await;
            continue;
        };
        // Wait for the oldest answer, or for more to send beside it.
        let answer = if room {
            tokio::select! {
                answer = &mut oldest.task => answer,
                _ = tokio::time::timeout(Duration::from_secs(1), state.outbox_changed.notified()) => continue,
            }
        } else {
            (&mut oldest.task).await
        };
        let Some(Flight { outgoing, .. }) = flight.pop_front() else {
            continue;
        };
        let count = outgoing.hashes.len();
        let (sent, connection) = answer.unwrap_or_else(|e| {
            let e = ForwardError(format!("the sending task: {e}"));
            (Err(Failed::Retry(e)), None)
        });
        let reply = match sent.and_then(|reply| answers_each(reply, count).map_err(Failed::Retry)) {
            Ok(reply) => reply,
            Err(Failed::Refused(why))
                if !(outgoing.hashes.is_empty() && outgoing.refused.is_empty()) =>
            {
                // Held aside: what follows it goes on, in a new stream.
                for later in flight.drain(..) {
                    later.task.abort();
                }
                idle.clear();
                stream = Stream::new();
                if let Err(e) = dead_letter(&state, &outgoing, &why).await {
                    tracing::warn!("medledger collector: holding a refused batch: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                continue;
            }
            Err(failed) => {
                let e = match failed {
                    Failed::Retry(e) => e,
                    // Only notices for the patients: told again later.
                    Failed::Refused(why) => ForwardError(format!(
                        "the server refused the notices of held readings ({}): {}",
                        why.status, why.detail
                    )),
                };
                outage.failed(&format_args!("{count} readings: {e}"));
                state.metrics.add(
                    "medledger_collector_forward_failures_total",
                    "Forwarding attempts that failed (and will be retried).",
                    &[],
                    1,
                );
                // Everything after it is sent again, oldest first, in a
                // new stream: the server refuses to commit a batch whose
                // predecessor failed, and is idempotent for any it did.
                for later in flight.drain(..) {
                    later.task.abort();
                }
                idle.clear();
                stream = Stream::new();
                if let Upstream::Servers(servers) = &upstream
                    && servers.len() > 1
                {
                    at = (at + 1) % servers.len();
                    tracing::info!(
                        "medledger collector: forwarding to {} from now on",
                        servers[at].addr
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        idle.extend(connection);
        outage.worked();
        backoff = MIN_BACKOFF;
        if let Err(e) = settle(&state, &outgoing, &reply).await {
            tracing::warn!("medledger collector: clearing the outbox: {e}");
            for later in flight.drain(..) {
                later.task.abort();
            }
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Where one batch goes.
enum Hop {
    Server(ServerTarget),
    InProcess(Arc<dyn crate::InProcessServer>),
    Nowhere,
}

impl Hop {
    /// The `at`th server of `upstream` (in turn), or its in-process one.
    fn of(upstream: &Upstream, at: usize) -> Hop {
        match upstream {
            Upstream::Servers(servers) => servers
                .get(at % servers.len().max(1))
                .cloned()
                .map_or(Hop::Nowhere, Hop::Server),
            Upstream::InProcess(server) => Hop::InProcess(server.clone()),
        }
    }
}

/// A batch sent and not yet answered.
struct Flight {
    outgoing: Outgoing,
    task: JoinHandle<(Result<CommitReply, Failed>, Option<Connection>)>,
}

/// Why a batch was not answered for.
enum Failed {
    /// Sent again later.
    Retry(ForwardError),
    /// Refused by the server as it is: a dead letter.
    Refused(Poison),
}

/// Holds `outgoing` as a dead letter: counted, logged for the operators,
/// and the devices waiting on its readings told they are held.
async fn dead_letter(state: &State, outgoing: &Outgoing, why: &Poison) -> Result<(), sqlx::Error> {
    let letter = dead_letters::hold(&state.db, outgoing.range, &outgoing.refused, why).await?;
    state.metrics.add(
        "medledger_collector_dead_letters_total",
        "Batches the server refused with a 4xx, held as dead letters.",
        &[("status", &why.status.to_string())],
        1,
    );
    held_gauge(state).await;
    tracing::error!(
        "medledger collector: the server refused a batch of {} readings ({} {}: {}); held as dead letter {}, see `medledger collector dead-letters list`",
        letter.readings,
        why.status,
        why.problem,
        why.detail,
        letter.id
    );
    let mut waiters = state.waiters.lock().unwrap_or_else(|e| e.into_inner());
    let held = Refusal {
        kind: ProblemType::Unavailable,
        detail: format!(
            "the reading is held at the collector: the server refused its batch ({})",
            why.status
        ),
        reason: None,
    };
    for hash in &outgoing.hashes {
        for tx in waiters.remove(hash).into_iter().flatten() {
            let _ = tx.send(Err(held.clone()));
        }
    }
    Ok(())
}

/// Sets the gauge of the readings held in dead letters.
async fn held_gauge(state: &State) {
    match dead_letters::held_readings(&state.db).await {
        Ok(n) => state.metrics.set(
            "medledger_collector_held_readings",
            "Readings held in dead letters, until an operator retries them.",
            &[],
            n as f64,
        ),
        Err(e) => tracing::warn!("medledger collector: counting held readings: {e}"),
    }
}

/// The numbering of the batches sent to a server (protocol [`Order`]).
struct Stream {
    id: u64,
    sent: u64,
}

impl Stream {
    /// A stream this collector has not used before: the time in
    /// nanoseconds, which a restarted collector has moved past.
    fn new() -> Stream {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let previous = LAST.fetch_max(now, Ordering::Relaxed);
        let id = if now > previous {
            now
        } else {
            LAST.fetch_add(1, Ordering::Relaxed) + 1
        };
        Stream { id, sent: 0 }
    }

    /// The next batch's order; `unanswered` when the one before it is.
    fn next(&mut self, unanswered: bool) -> Order {
        self.sent += 1;
        Order {
            stream: self.id,
            n: self.sent,
            after: unanswered.then(|| self.sent - 1),
        }
    }
}

struct Pending {
    depth: i64,
    batch: Option<Outgoing>,
}

/// A forward batch and what it holds.
struct Outgoing {
    batch: ForwardBatch,
    /// The hash of each reading, in order.
    hashes: Vec<[u8; 32]>,
    /// The collector batches it holds (first, last).
    range: (i64, i64),
    /// The hashes of the refused readings it reports.
    refused: Vec<Vec<u8>>,
}

impl Outgoing {
    /// The dead letters whose notices it carries.
    fn letters(&self) -> impl Iterator<Item = u64> + '_ {
        let mut seen = std::collections::BTreeSet::new();
        self.batch
            .held
            .iter()
            .map(|h| h.letter)
            .filter(move |l| seen.insert(*l))
    }
}

/// The oldest whole collector batches in the outbox after collector batch
/// `after` (those up to it are in flight), as one forward batch; the
/// refused readings ride only on a batch sent when nothing else is.
async fn load(state: &State, after: Option<i64>) -> Result<Pending, sqlx::Error> {
    let pool = state.db.pool();
    let depth: i64 = sqlx::query("SELECT COUNT(*) AS n FROM collector_outbox")
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    let refused = sqlx::query(
        "SELECT hash, patient, device_cert, cose, problem, detail FROM collector_refused \
         ORDER BY at_ms LIMIT $1",
    )
    .bind(if after.is_some() { 0 } else { MAX_REFUSED })
    .fetch_all(pool)
    .await?;
    let held: Vec<Held> = match after {
        Some(_) => Vec::new(),
        None => {
            held_gauge(state).await;
            dead_letters::untold(&state.db).await?
        }
    };
    if depth == 0 && refused.is_empty() && held.is_empty() {
        return Ok(Pending { depth, batch: None });
    }
    let rows = sqlx::query(
        "SELECT hash, batch, patient, device_cert, cose, received_ms FROM collector_outbox \
         WHERE batch > $1 ORDER BY batch, pos LIMIT $2",
    )
    .bind(after.unwrap_or(i64::MIN))
    .bind(MAX_FORWARD)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() && refused.is_empty() && held.is_empty() {
        return Ok(Pending { depth, batch: None });
    }
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|r| {
            Ok((
                r.try_get::<Vec<u8>, _>("hash")?,
                r.try_get::<i64, _>("batch")?,
                r.try_get::<Vec<u8>, _>("patient")?,
                r.try_get::<Vec<u8>, _>("device_cert")?,
                r.try_get::<Vec<u8>, _>("cose")?,
                r.try_get::<i64, _>("received_ms")?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    // Whole collector batches only: drop a cut-off last one (a collector
    // batch is at most MAX_BATCH < MAX_FORWARD, so one always fits).
    // No readings: the range is empty.
    let first = rows.first().map_or(0, |r| r.1);
    let last = rows.last().map_or(-1, |r| r.1);
    if rows.len() as i64 == MAX_FORWARD && first != last {
        rows.retain(|r| r.1 != last);
    }
    let last = rows.last().map_or(-1, |r| r.1);
    let cards = sqlx::query(
        "SELECT batch, patient, card_cert, sig FROM collector_outbox_cards \
         WHERE batch >= $1 AND batch <= $2",
    )
    .bind(first)
    .bind(last)
    .fetch_all(pool)
    .await?;

    let mut batch = ForwardBatch {
        cas: state.cas.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        held,
        ..ForwardBatch::default()
    };
    let mut cert_index: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut index_of = |fp: Vec<u8>, certs: &mut Vec<Vec<u8>>| -> u32 {
        *cert_index.entry(fp).or_insert_with(|| {
            certs.push(Vec::new());
            (certs.len() - 1) as u32
        })
    };
    // Readings per (collector batch, patient), in order, for the cards.
    let mut groups: HashMap<(i64, Vec<u8>), Vec<u32>> = HashMap::new();
    let mut hashes = Vec::with_capacity(rows.len());
    for (i, (hash, b, patient, fp, cose, received)) in rows.into_iter().enumerate() {
        let cert = index_of(fp, &mut batch.certs);
        groups
            .entry((b, patient.clone()))
            .or_default()
            .push(i as u32);
        hashes.push(hash.as_slice().try_into().unwrap_or([0; 32]));
        batch.readings.push(Forwarded {
            cose,
            cert,
            patient: patient.as_slice().try_into().unwrap_or([0; 32]),
            received_ms: u64::try_from(received).unwrap_or(0),
        });
    }
    for row in cards {
        let b: i64 = row.try_get("batch")?;
        let patient: Vec<u8> = row.try_get("patient")?;
        let Some(readings) = groups.remove(&(b, patient.clone())) else {
            continue;
        };
        let cert = index_of(row.try_get("card_cert")?, &mut batch.certs);
        batch.cards.push(CardSignature {
            patient: patient.as_slice().try_into().unwrap_or([0; 32]),
            cert,
            readings,
            sig: row.try_get("sig")?,
        });
    }
    let mut refused_hashes = Vec::with_capacity(refused.len());
    for row in refused {
        refused_hashes.push(row.try_get::<Vec<u8>, _>("hash")?);
        let cert = index_of(row.try_get("device_cert")?, &mut batch.certs);
        let patient: Vec<u8> = row.try_get("patient")?;
        let problem: String = row.try_get("problem")?;
        batch.refused.push(Refused {
            cose: row.try_get("cose")?,
            cert,
            patient: patient.as_slice().try_into().unwrap_or([0; 32]),
            problem: ProblemType::parse(&problem).ok_or_else(|| {
                sqlx::Error::Decode(format!("{problem:?} is not a problem type").into())
            })?,
            detail: row.try_get("detail")?,
        });
    }
    // Fill in the certificates by fingerprint.
    for (fp, i) in cert_index {
        let der: Vec<u8> = sqlx::query("SELECT der FROM collector_certs WHERE fingerprint = $1")
            .bind(fp)
            .fetch_one(pool)
            .await?
            .try_get("der")?;
        batch.certs[i as usize] = der;
    }
    Ok(Pending {
        depth,
        batch: Some(Outgoing {
            batch,
            hashes,
            range: (first, last),
            refused: refused_hashes,
        }),
    })
}

/// Sends a batch upstream, over `connection` if one is open; returns the
/// answer, and the connection while it is good.
async fn send(
    hop: Hop,
    tls: Arc<rustls::ClientConfig>,
    connection: Option<Connection>,
    batch: ForwardBatch,
) -> (Result<CommitReply, Failed>, Option<Connection>) {
    let server = match hop {
        Hop::Server(server) => server,
        Hop::InProcess(server) => return (server.commit(batch).await.map_err(Failed::Retry), None),
        Hop::Nowhere => {
            let e = ForwardError("no server is configured".into());
            return (Err(Failed::Retry(e)), None);
        }
    };
    let failed = |e: &dyn std::fmt::Display| Failed::Retry(ForwardError(e.to_string()));
    let mut connection = match connection {
        Some(c) => c,
        None => match Connection::open(tls, &server.addr, &server.name).await {
            Ok(c) => c,
            Err(e) => return (Err(failed(&e)), None),
        },
    };
    let request = connection.request(
        "POST",
        "/v1/batches",
        &[("content-type", "application/cbor")],
        batch.to_cbor(),
    );
    let reply = match tokio::time::timeout(ANSWER_WITHIN, request).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return (Err(failed(&e)), None),
        Err(_) => {
            let e = format!("no answer within {} s: sent again", ANSWER_WITHIN.as_secs());
            return (Err(failed(&e)), None);
        }
    };
    if dead_letters::is_poison(reply.status) {
        let problem: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let text = |name: &str| problem[name].as_str().unwrap_or_default().to_owned();
        let why = Poison {
            status: reply.status,
            problem: text("type"),
            detail: text("detail"),
        };
        return (Err(Failed::Refused(why)), None);
    }
    if reply.status != 200 {
        let e = ForwardError(format!(
            "the server answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
        return (Err(Failed::Retry(e)), None);
    }
    let answer = serde_json::from_slice(&reply.body)
        .map_err(|e| Failed::Retry(ForwardError(format!("the server's answer: {e}"))));
    (answer, Some(connection))
}

/// The reply, if it answers for each of the `count` readings sent.
fn answers_each(reply: CommitReply, count: usize) -> Result<CommitReply, ForwardError> {
    if reply.results.len() != count {
        return Err(ForwardError(format!(
            "the server answered for {} of {count} readings",
            reply.results.len()
        )));
    }
    Ok(reply)
}

/// Removes the answered readings from the outbox and tells waiting
/// devices their ledger index.
async fn settle(state: &State, sent: &Outgoing, reply: &CommitReply) -> Result<(), sqlx::Error> {
    let (first, last) = sent.range;
    // What was sent is whole collector batches `first..=last`.
    let mut tx = state.db.pool().begin().await?;
    crate::outbox::take_out(&mut tx, (first, last), &sent.refused).await?;
    dead_letters::told(&mut tx, sent.letters()).await?;
    tx.commit().await?;
    answered(state, &sent.hashes, reply);
    Ok(())
}

/// Counts and logs the server's answer for each reading of `hashes`, and
/// tells the devices waiting for it; returns the refusals, by hash.
pub(crate) fn answered(
    state: &State,
    hashes: &[[u8; 32]],
    reply: &CommitReply,
) -> HashMap<[u8; 32], Refusal> {
    let mut refused = HashMap::new();
    let mut waiters = state.waiters.lock().unwrap_or_else(|e| e.into_inner());
    for (hash, result) in hashes.iter().zip(&reply.results) {
        let status = match result.status {
            CommitStatus::Stored => "stored",
            CommitStatus::Duplicate => "duplicate",
            CommitStatus::Rejected => {
                tracing::warn!(
                    "medledger collector: the server rejected reading {}: {} ({})",
                    result.hash,
                    result.problem.map_or("?", ProblemType::name),
                    result.detail.as_deref().unwrap_or("")
                );
                "rejected"
            }
        };
        state.metrics.add(
            "medledger_collector_forwarded_total",
            "Forwarded readings by the server's answer.",
            &[("status", status)],
            1,
        );
        let answer = match (result.status, result.index) {
            (CommitStatus::Rejected, _) | (_, None) => Err(Refusal {
                kind: result.problem.unwrap_or(ProblemType::Forbidden),
                detail: format!(
                    "the server refused the reading: {}",
                    result.detail.as_deref().unwrap_or("no reason given")
                ),
                reason: result.reason.clone(),
            }),
            (_, Some(index)) => Ok(index),
        };
        if let Err(refusal) = &answer {
            refused.insert(*hash, refusal.clone());
        }
        for tx in waiters.remove(hash).into_iter().flatten() {
            let _ = tx.send(answer.clone());
        }
    }
    refused
}

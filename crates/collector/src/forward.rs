//! Forwarding: the outbox, oldest batch first, to the server over mutual
//! TLS (or to the server's ingest in this process); rows leave the outbox
//! only after the server has answered for them.
//! While the server is down, retries back off up to [`MAX_BACKOFF`].
//! The server is idempotent by reading hash, so a batch resent after a
//! lost answer is stored once.

use crate::{ForwardError, ServerTarget, State, Upstream};
use medledger_checks::Refusal;
use medledger_pki::https::Connection;
use medledger_protocol::{
    CardSignature, CommitReply, CommitStatus, ForwardBatch, Forwarded, ProblemType, Refused,
};
use medledger_storage::sqlx::{self, Row};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Most refused readings reported per forwarded batch.
const MAX_REFUSED: i64 = 1000;

/// Most readings per forwarded batch (whole collector batches only).
const MAX_FORWARD: i64 = 4096;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Forwards until the collector stops.
pub(crate) async fn run(state: Arc<State>, tls: Arc<rustls::ClientConfig>, upstream: Upstream) {
    let mut connection: Option<Connection> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        let pending = match load(&state).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("medledger collector: reading the outbox: {e}");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        state.metrics.set(
            "medledger_collector_outbox_depth",
            "Readings in the outbox, not yet answered for by the server.",
            &[],
            pending.depth as f64,
        );
        let Some(Outgoing {
            batch,
            hashes,
            range,
            refused,
        }) = pending.batch
        else {
            // Nothing to send: wait for the pipeline, or look again soon.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), state.outbox_changed.notified()).await;
            continue;
        };
        let count = batch.readings.len();
        let sent = match &upstream {
            Upstream::Server(server) => send(&mut connection, &tls, server, batch).await,
            Upstream::InProcess(server) => server.commit(batch).await,
        }
        .and_then(|reply| answers_each(reply, count));
        let reply = match sent {
            Ok(reply) => reply,
            Err(e) => {
                let to = match &upstream {
                    Upstream::Server(server) => server.addr.as_str(),
                    Upstream::InProcess(_) => "the server in this process",
                };
                eprintln!(
                    "medledger collector: forwarding {count} readings to {to}: {e}; retrying in {backoff:?}"
                );
                connection = None;
                state.metrics.add(
                    "medledger_collector_forward_failures_total",
                    "Forwarding attempts that failed (and will be retried).",
                    &[],
                    1,
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        if let Err(e) = settle(&state, range, &refused, &hashes, &reply).await {
            eprintln!("medledger collector: clearing the outbox: {e}");
            tokio::time::sleep(backoff).await;
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

/// The oldest whole collector batches in the outbox, as one forward batch.
async fn load(state: &State) -> Result<Pending, sqlx::Error> {
    let pool = state.db.pool();
    let depth: i64 = sqlx::query("SELECT COUNT(*) AS n FROM collector_outbox")
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    let refused = sqlx::query(
        "SELECT hash, patient, device_cert, cose, problem, detail FROM collector_refused \
         ORDER BY at_ms LIMIT $1",
    )
    .bind(MAX_REFUSED)
    .fetch_all(pool)
    .await?;
    if depth == 0 && refused.is_empty() {
        return Ok(Pending { depth, batch: None });
    }
    let rows = sqlx::query(
        "SELECT hash, batch, patient, device_cert, cose, received_ms FROM collector_outbox \
         ORDER BY batch, pos LIMIT $1",
    )
    .bind(MAX_FORWARD)
    .fetch_all(pool)
    .await?;
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

async fn send(
    connection: &mut Option<Connection>,
    tls: &Arc<rustls::ClientConfig>,
    server: &ServerTarget,
    batch: ForwardBatch,
) -> Result<CommitReply, ForwardError> {
    let failed = |e: &dyn std::fmt::Display| ForwardError(e.to_string());
    if connection.is_none() {
        *connection = Some(
            Connection::open(tls.clone(), &server.addr, &server.name)
                .await
                .map_err(|e| failed(&e))?,
        );
    }
    let conn = connection.as_mut().expect("opened above");
    let reply = conn
        .request(
            "POST",
            "/v1/batches",
            &[("content-type", "application/cbor")],
            batch.to_cbor(),
        )
        .await
        .map_err(|e| failed(&e))?;
    if reply.status != 200 {
        return Err(ForwardError(format!(
            "the server answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| ForwardError(format!("the server's answer: {e}")))
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
async fn settle(
    state: &State,
    (first, last): (i64, i64),
    refused: &[Vec<u8>],
    hashes: &[[u8; 32]],
    reply: &CommitReply,
) -> Result<(), sqlx::Error> {
    // What was sent is whole collector batches `first..=last`.
    let mut tx = state.db.pool().begin().await?;
    for table in ["collector_outbox", "collector_outbox_cards"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE batch >= $1 AND batch <= $2"
        ))
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?;
    }
    for hash in refused {
        sqlx::query("DELETE FROM collector_refused WHERE hash = $1")
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    answered(state, hashes, reply);
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
                eprintln!(
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

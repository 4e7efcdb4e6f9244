//! `POST /v1/readings`: the per-request checks, then the pipeline.
//!
//! Before the body is read: the declared length against the limit (413).
//! Then: the media type, the number of readings, the device's rate (429
//! with `Retry-After`), and for each reading its envelope, `kid` and
//! signature against the presented certificate, `dev` against the
//! certificate's EPC, and the timestamp window. What passes goes to the
//! pipeline as one submission.

use crate::State;
use crate::pipeline::{Candidate, Refusal, Submission};
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State as AxState};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medledger_pki::Identity;
use medledger_pki::https::{self, Peer};
use medledger_protocol::cbor::{self, Value};
use medledger_protocol::problem::PROBLEM_JSON;
use medledger_protocol::{
    Problem, ProblemType, Receipt, ReceiptStatus, SignedReading, now_ms, reading_hash,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long `?wait=committed` waits for the server.
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// The device endpoint.
pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/readings", post(readings))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(https::not_found)
        .layer(axum::middleware::from_fn(https::problems_only))
        .with_state(state)
}

/// A device's token bucket: `device_rate_per_s` readings per second,
/// `device_burst` at most at once.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

fn problem(refusal: &Refusal) -> Problem {
    let p = Problem::new(refusal.kind, refusal.detail.clone());
    match &refusal.reason {
        Some(reason) => p.with("reason", reason.as_str()),
        None => p,
    }
}

fn problem_response(p: &Problem, extra_headers: &[(header::HeaderName, String)]) -> Response {
    let mut response = (
        StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, PROBLEM_JSON)],
        p.to_json(),
    )
        .into_response();
    for (name, value) in extra_headers {
        if let Ok(v) = value.parse() {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

fn refuse(kind: ProblemType, detail: impl Into<String>) -> Response {
    https::problem_response(kind, detail)
}

async fn readings(
    AxState(state): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limits = &state.limits;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        count(&state, ProblemType::TooLarge, 1);
        return refuse(
            ProblemType::TooLarge,
            format!("the body is larger than {} bytes", limits.max_body_bytes),
        );
    }
    let Some(epc) = peer.identity.epc().map(|e| *e.as_bytes()) else {
        return refuse(ProblemType::WrongRole, "only devices send readings");
    };
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Ok(bytes) = axum::body::to_bytes(body, limits.max_body_bytes).await else {
        count(&state, ProblemType::TooLarge, 1);
        return refuse(
            ProblemType::TooLarge,
            format!("the body is larger than {} bytes", limits.max_body_bytes),
        );
    };
    let envelopes: Vec<Vec<u8>> = match media.as_str() {
        "application/cose" => vec![bytes.to_vec()],
        "application/cbor" => match cbor::decode(&bytes) {
            Ok(Value::Array(items)) if !items.is_empty() => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let Value::Bytes(b) = item else {
                        count(&state, ProblemType::Malformed, 1);
                        return refuse(
                            ProblemType::Malformed,
                            "a batch is a CBOR array of byte strings, each a COSE_Sign1",
                        );
                    };
                    out.push(b);
                }
                out
            }
            _ => {
                count(&state, ProblemType::Malformed, 1);
                return refuse(
                    ProblemType::Malformed,
                    "a batch is a non-empty CBOR array of byte strings, each a COSE_Sign1",
                );
            }
        },
        other => {
            count(&state, ProblemType::Malformed, 1);
            return refuse(
                ProblemType::Malformed,
                format!(
                    "content type {other:?}: send application/cose (one reading) or application/cbor (an array)"
                ),
            );
        }
    };
    if envelopes.len() > limits.max_readings_per_request {
        count(&state, ProblemType::TooLarge, envelopes.len());
        return refuse(
            ProblemType::TooLarge,
            format!(
                "{} readings in one request; the limit is {}",
                envelopes.len(),
                limits.max_readings_per_request
            ),
        );
    }
    if let Err(retry_after) = take_tokens(&state, epc, envelopes.len()) {
        count(&state, ProblemType::RateLimited, envelopes.len());
        let p = Problem::new(
            ProblemType::RateLimited,
            format!(
                "this device may send {} readings per second",
                limits.device_rate_per_s
            ),
        );
        return problem_response(&p, &[(header::RETRY_AFTER, retry_after.to_string())]);
    }

    // Per-reading checks; what passes goes to the pipeline.
    let cert = Arc::new(peer.chain.first().cloned().unwrap_or_default());
    remember_cas(&state, &peer.chain);
    let now = now_ms();
    let mut outcomes: Vec<Option<Result<Receipt, Refusal>>> = Vec::with_capacity(envelopes.len());
    let mut candidates = Vec::new();
    for cose in envelopes {
        match check(&peer.identity, &cose, now, limits) {
            Ok(reading) => {
                outcomes.push(None);
                candidates.push(Candidate {
                    hash: reading_hash(&cose),
                    cose,
                    reading,
                    cert: cert.clone(),
                    fingerprint: peer.identity.fingerprint,
                });
            }
            Err(refusal) => outcomes.push(Some(Err(refusal))),
        }
    }
    for refusal in outcomes.iter().flatten().filter_map(|o| o.as_ref().err()) {
        count(&state, refusal.kind, 1);
    }
    let wait_commit = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "wait=committed"));
    if !candidates.is_empty() {
        let mut commits = Vec::new();
        if wait_commit {
            let mut waiters = state.waiters.lock().unwrap_or_else(|e| e.into_inner());
            for c in &candidates {
                let (tx, rx) = oneshot::channel();
                waiters.entry(c.hash).or_default().push(tx);
                commits.push(rx);
            }
        }
        let (reply, decided) = oneshot::channel();
        let seqs: Vec<(String, u64)> = candidates
            .iter()
            .map(|c| (hex::encode(c.hash), c.reading.seq))
            .collect();
        let hashes: Vec<[u8; 32]> = candidates.iter().map(|c| c.hash).collect();
        let submitted = state
            .submit
            .send(Submission {
                items: candidates,
                reply,
            })
            .await;
        let decisions = match submitted {
            Ok(()) => decided.await.ok(),
            Err(_) => None,
        };
        let Some(decisions) = decisions else {
            return refuse(ProblemType::Unavailable, "the collector is shutting down");
        };
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        let mut receipts = Vec::with_capacity(decisions.len());
        for (((hash, seq), decision), commit) in seqs.into_iter().zip(decisions).zip(
            commits
                .into_iter()
                .map(Some)
                .chain(std::iter::repeat_with(|| None)),
        ) {
            receipts.push(match decision {
                Ok(()) => {
                    // Waiting: the server's answer, or (timed out) none.
                    let answer = match commit {
                        Some(rx) => tokio::time::timeout_at(deadline, rx)
                            .await
                            .ok()
                            .and_then(Result::ok),
                        None => None,
                    };
                    match answer {
                        Some(Err(refusal)) => Err(refusal),
                        Some(Ok(index)) => Ok(Receipt {
                            hash,
                            seq,
                            status: ReceiptStatus::Committed,
                            ledger_index: Some(index),
                        }),
                        None => Ok(Receipt {
                            hash,
                            seq,
                            status: ReceiptStatus::Accepted,
                            ledger_index: None,
                        }),
                    }
                }
                Err(refusal) => Err(refusal),
            });
        }
        if wait_commit {
            // Rejected readings leave no waiter behind.
            let mut waiters = state.waiters.lock().unwrap_or_else(|e| e.into_inner());
            for (hash, r) in hashes.iter().zip(&receipts) {
                if r.is_err() {
                    waiters.remove(hash);
                }
            }
        }
        let mut receipts = receipts.into_iter();
        for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = receipts.next();
        }
    }
    respond(
        media == "application/cose",
        outcomes
            .into_iter()
            .map(|o| o.expect("every slot filled"))
            .collect(),
    )
}

/// One reading's own checks: envelope, signature, device, timestamp.
fn check(
    identity: &Identity,
    cose: &[u8],
    now: u64,
    limits: &crate::Limits,
) -> Result<medledger_protocol::Reading, Refusal> {
    let signed =
        SignedReading::decode(cose).map_err(|e| Refusal::new(e.problem_type(), e.to_string()))?;
    let reading = signed
        .verify(&identity.key)
        .map_err(|e| Refusal::new(e.problem_type(), e.to_string()))?;
    if identity.epc().map(|e| e.as_bytes()) != Some(&reading.dev.0) {
        return Err(Refusal::new(
            ProblemType::UnknownDevice,
            "the reading names another device than the certificate",
        ));
    }
    if reading.ts_ms + limits.timestamp_past_ms < now {
        return Err(Refusal::new(
            ProblemType::StaleTimestamp,
            format!(
                "the reading is {} ms old; at most {} ms is accepted",
                now - reading.ts_ms,
                limits.timestamp_past_ms
            ),
        ));
    }
    if reading.ts_ms > now + limits.timestamp_future_ms {
        return Err(Refusal::new(
            ProblemType::StaleTimestamp,
            format!(
                "the reading is {} ms in the future; at most {} ms of clock skew is accepted",
                reading.ts_ms - now,
                limits.timestamp_future_ms
            ),
        ));
    }
    Ok(reading)
}

/// Takes `n` tokens from the device's bucket, or says in how many seconds
/// they will be there.
fn take_tokens(state: &State, epc: [u8; 12], n: usize) -> Result<(), u64> {
    let (rate, burst) = (state.limits.device_rate_per_s, state.limits.device_burst);
    let mut rates = state.rates.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let bucket = rates.entry(epc).or_insert(Bucket {
        tokens: burst,
        at: now,
    });
    bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
    bucket.at = now;
    // A request larger than the burst is admitted when the bucket is
    // full, and leaves a debt the device waits out.
    let want = n as f64;
    if bucket.tokens >= want.min(burst) {
        bucket.tokens -= want;
        Ok(())
    } else {
        let secs = ((want.min(burst) - bucket.tokens) / rate).ceil();
        Err(if secs.is_finite() {
            secs.max(1.0) as u64
        } else {
            60
        })
    }
}

/// Keeps the CA certificates of a device's chain for the server.
fn remember_cas(state: &State, chain: &[Vec<u8>]) {
    if chain.len() < 2 {
        return;
    }
    let mut cas = state.cas.lock().unwrap_or_else(|e| e.into_inner());
    for ca in &chain[1..] {
        if !cas.contains(ca) {
            cas.push(ca.clone());
        }
    }
}

fn count(state: &State, kind: ProblemType, n: usize) {
    state.metrics.add(
        "medledger_collector_readings_total",
        "Readings by outcome and cause.",
        &[("outcome", "rejected"), ("cause", kind.name())],
        n as u64,
    );
}

/// One reading: its receipt (202) or its problem. A batch: 202 with every
/// receipt and every rejection by index, unless all were rejected: then the
/// first rejection's status, with the list.
fn respond(single: bool, outcomes: Vec<Result<Receipt, Refusal>>) -> Response {
    if single {
        return match outcomes.into_iter().next() {
            Some(Ok(receipt)) => json(StatusCode::ACCEPTED, &receipt),
            Some(Err(refusal)) => problem_response(&problem(&refusal), &[]),
            None => refuse(ProblemType::Malformed, "no reading"),
        };
    }
    let mut receipts = Vec::new();
    let mut rejected = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(r) => receipts.push(r),
            Err(refusal) => {
                let mut p = serde_json::to_value(problem(&refusal)).unwrap_or_default();
                p["index"] = index.into();
                rejected.push(p);
            }
        }
    }
    if receipts.is_empty() {
        let first = &rejected[0];
        let kind = first["type"]
            .as_str()
            .and_then(ProblemType::parse)
            .unwrap_or(ProblemType::Malformed);
        let p = Problem::new(
            kind,
            format!(
                "all {} readings were rejected; the first: {}",
                rejected.len(),
                first["detail"].as_str().unwrap_or("")
            ),
        )
        .with("rejected", rejected);
        return problem_response(&p, &[]);
    }
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "receipts": receipts, "rejected": rejected }),
    )
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

//! `POST /v1/readings`: the per-request checks, then the pipeline.
//!
//! Before the body is read: the declared length against the limit (413).
//! Then: the media type, the number of readings, the device's rate (429
//! with `Retry-After`), and for each reading its envelope, `kid` and
//! signature against the presented certificate, `dev` against the
//! certificate's EPC, and the timestamp window. What passes goes to the
//! pipeline as one submission.

use crate::State;
use crate::pipeline::{Candidate, Presented, Submission};
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State as AxState};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medledger_checks::{Item, Refusal, Trust, Verdict};
use medledger_pki::https::{self, Peer};
use medledger_protocol::cbor::{self, Value};
use medledger_protocol::problem::PROBLEM_JSON;
use medledger_protocol::{Problem, ProblemType, Receipt, ReceiptStatus, now_ms};
use std::collections::HashMap;
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
        let detail = format!(
            "{} readings in one request; the limit is {}",
            envelopes.len(),
            limits.max_readings_per_request
        );
        count(&state, ProblemType::TooLarge, envelopes.len());
        log_rejected(
            &state,
            &peer,
            ProblemType::TooLarge,
            &detail,
            envelopes.len(),
        );
        return refuse(ProblemType::TooLarge, detail);
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
        log_rejected(
            &state,
            &peer,
            ProblemType::RateLimited,
            &p.detail,
            envelopes.len(),
        );
        return problem_response(&p, &[(header::RETRY_AFTER, retry_after.to_string())]);
    }

    // Per-reading checks; then the pipeline, in request order.
    remember_cas(&state, &peer.chain);
    let presented = Arc::new(Presented {
        der: peer.chain.first().cloned().unwrap_or_default(),
        fingerprint: peer.identity.fingerprint,
    });
    let identity = peer.identity.clone();
    let mut items: Vec<Candidate> = envelopes
        .into_iter()
        .map(|cose| Item::new(cose, presented.clone()))
        .collect();
    medledger_checks::verify(&mut items, |_| Ok(identity.clone()), Trust::Verify);
    medledger_checks::window(&mut items, limits.window(), now_ms());
    for item in &items {
        if let Verdict::Refused(r) = &item.verdict {
            count(&state, r.kind, 1);
        }
    }
    let wait_commit = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "wait=committed"));
    let mut commits = HashMap::new();
    if wait_commit {
        let mut waiters = state.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for item in items.iter().filter(|i| i.passing().is_some()) {
            let (tx, rx) = oneshot::channel();
            waiters.entry(item.hash).or_default().push(tx);
            commits.insert(item.hash, rx);
        }
    }
    let items = if items.iter().any(|i| i.passing().is_some()) {
        let (reply, decided) = oneshot::channel();
        let submitted = state.submit.send(Submission { items, reply }).await;
        let decided = match submitted {
            Ok(()) => decided.await.ok(),
            Err(_) => None,
        };
        let Some(decided) = decided else {
            return refuse(ProblemType::Unavailable, "the collector is shutting down");
        };
        decided
    } else {
        items
    };
    let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut unwaited = Vec::new();
    for item in items {
        let commit = commits.remove(&item.hash);
        outcomes.push(match item.verdict {
            Verdict::Passing(p) => {
                // Waiting: the server's answer, or (timed out) none.
                let answer = match commit {
                    Some(rx) => tokio::time::timeout_at(deadline, rx)
                        .await
                        .ok()
                        .and_then(Result::ok),
                    None => None,
                };
                let receipt = |status, ledger_index| Receipt {
                    hash: hex::encode(item.hash),
                    seq: p.reading.seq,
                    status,
                    ledger_index,
                };
                match answer {
                    Some(Err(refusal)) => Err(refusal),
                    Some(Ok(index)) => Ok(receipt(ReceiptStatus::Committed, Some(index))),
                    None => Ok(receipt(ReceiptStatus::Accepted, None)),
                }
            }
            Verdict::Refused(refusal) => {
                if commit.is_some() {
                    unwaited.push(item.hash);
                }
                log_rejected(&state, &peer, refusal.kind, &refusal.detail, 1);
                Err(refusal)
            }
            Verdict::Unchecked | Verdict::Stored { .. } => Err(Refusal::new(
                ProblemType::Unavailable,
                "the reading was left undecided",
            )),
        });
    }
    if !unwaited.is_empty() {
        // Rejected readings leave no waiter behind.
        let mut waiters = state.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for hash in &unwaited {
            waiters.remove(hash);
        }
    }
    respond(media == "application/cose", outcomes)
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

/// Logs `n` readings of `peer` rejected as `kind`, rate-limited (each is
/// counted in `/metrics` whatever the log leaves out).
fn log_rejected(state: &State, peer: &Peer, kind: ProblemType, detail: &str, n: usize) {
    if state.rejections.admit() {
        tracing::warn!(
            peer = %peer.addr,
            device = %peer.identity.subject,
            fingerprint = %peer.identity.fingerprint_hex(),
            problem = kind.name(),
            "medledger collector: rejected {n} reading(s): {detail}"
        );
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
            Some(Err(refusal)) => problem_response(&refusal.problem(), &[]),
            None => refuse(ProblemType::Malformed, "no reading"),
        };
    }
    let mut receipts = Vec::new();
    let mut rejected = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(r) => receipts.push(r),
            Err(refusal) => {
                let mut p = serde_json::to_value(refusal.problem()).unwrap_or_default();
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
